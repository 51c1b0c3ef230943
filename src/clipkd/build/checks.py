"""Checks of a config's models and files that build nothing: model names and configs, checkpoints against the
architecture (on the meta device), data files and CSV columns, benchmark files. Each returns a list of problems,
named by the setting that holds them."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Union

from clipkd.config import BenchmarkSpec, DataConfig
from clipkd.config_paths import LIST_KEYWORDS, WEIGHT_SUFFIXES
from clipkd.data.sources import expand_shards
from clipkd.models.factory import COMPOSITE_MODELS, known_model
from clipkd.models.shapes import (
    ArchitectureError,
    Shapes,
    checkpoint_shapes,
    expected_shapes,
    fit_problem,
    model_config_problem,
    pretrained_tag_problem,
)


def _check_model_name(field: str, name: str) -> list[str]:
    if name.endswith(".json"):
        if not Path(name).is_file():
            return [f"{field}: model config file not found: {name}"]
        problem = model_config_problem(name)
        return [f"{field}: {problem}"] if problem else []
    if known_model(name):
        return []
    from clipkd.models.factory import list_models
    from clipkd.suggest import did_you_mean

    hint = did_you_mean(name, [*COMPOSITE_MODELS, *list_models()], n=3)
    return [f"{field}: unknown model '{name}' ({hint + ' ' if hint else ''}see `clipkd models`)"]


def _check_pretrained(field: str, model: str, pretrained: str, expected: Optional[Shapes]) -> list[str]:
    """A checkpoint file that loads into ``model`` (names and shapes), or a pretrained tag that can be fetched."""
    if model in COMPOSITE_MODELS:  # the LiT teacher: `pretrained` holds its trained heads only
        return [] if Path(pretrained).is_file() else [f"{field}: heads file not found: {pretrained}"]
    if model.startswith(("hf-hub:", "local-dir:")):
        return []  # open_clip takes these weights from the hub repository or the folder, not from `pretrained`
    if Path(pretrained).is_file():
        try:
            found = checkpoint_shapes(pretrained)
        except ValueError as exc:
            return [f"{field}: {exc}"]
        problem = fit_problem(expected, found) if expected is not None else None
        return [f"{field}: {pretrained} does not fit the {model} architecture ({problem})"] if problem else []
    if "/" in pretrained or pretrained.lower().endswith(WEIGHT_SUFFIXES):
        return [f"{field}: checkpoint file not found: {pretrained}"]
    problem = pretrained_tag_problem(model, pretrained, field)
    return [f"{field}: {problem}"] if problem else []


def check_model(field: str, model: str, pretrained: Optional[str], pretrained_field: str) -> list[str]:
    """Problems with a model name or config and its weights, found without building the model.

    ``field`` / ``pretrained_field`` name the settings in the messages (``teacher.model``, ``--pretrained``).
    """
    problems = _check_model_name(field, model)
    if problems or not (pretrained or model.endswith(".json")):
        return problems
    try:
        expected = expected_shapes(model)  # on the meta device: no memory, about a second at most
    except ArchitectureError as exc:
        return [f"{field}: {model}: {exc}"]
    return _check_pretrained(pretrained_field, model, pretrained, expected) if pretrained else []


def _check_csv(field: str, path: str, separator: str, columns: dict[str, str]) -> list[str]:
    """A CSV/TSV file whose header holds ``columns`` (``{setting: column}``)."""
    if not Path(path).is_file():
        return [f"{field}: CSV file not found: {path}"]
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f, delimiter=separator), [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [f"{field}: cannot read {path} as CSV: {exc}"]
    missing = {k: c for k, c in columns.items() if c not in header}
    if not missing:
        return []
    wanted = ", ".join(f"'{c}' ({k})" for k, c in missing.items())
    return [f"{field}: {path} has no column {wanted}; its columns (separator {separator!r}): {header}"]


def _check_shards(field: str, urls: Union[str, list[str]], unique: bool = False) -> list[str]:
    try:
        shards = expand_shards(urls)
    except ValueError as exc:
        return [f"{field}: {exc}"]
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    missing = [s for s in local if not Path(s).is_file()]
    if missing:
        return [f"{field}: {len(missing)} of {len(shards)} shards not found (first: {missing[0]})"]
    return _duplicate_shards(field, shards) if unique else []


def _duplicate_shards(field: str, shards: list[str]) -> list[str]:
    """A shard listed twice (also as two spellings of one local file): reinforced data, one sidecar per shard,
    cannot mirror it (online training may list a shard twice to read it twice per epoch)."""
    seen: dict[str, str] = {}
    for s in shards:
        where = s if "://" in s or s.startswith("pipe:") else os.path.realpath(s)
        if where in seen:
            twice = s if s == seen[where] else f"{seen[where]} and {s}"
            return [f"{field}: a shard is listed twice ({twice}); list each shard once"]
        seen[where] = s
    return []


def _check_dir(field: str, path: Optional[str]) -> list[str]:
    return [] if path is None or Path(path).is_dir() else [f"{field}: folder not found: {path}"]


def check_data(field: str, dc: DataConfig, train_name: Optional[str] = None, unique_shards: bool = False
               ) -> list[str]:
    """Problems with a data section's files (shards, CSV and its columns, image root).

    ``train_name`` names the data in messages instead of ``<field>.train`` (e.g. ``--pairs``).
    """
    train = train_name or f"{field}.train"
    if dc.format == "webdataset":
        return _check_shards(train, dc.train, unique_shards)
    if not isinstance(dc.train, str):
        return [f"{train}: a CSV source takes one file path, got a list"]
    columns = {f"{field}.csv_img_key": dc.csv_img_key, f"{field}.csv_caption_key": dc.csv_caption_key}
    return _check_csv(train, dc.train, dc.csv_separator, columns) + _check_dir(f"{field}.root", dc.root)


def _check_list_file(field: str, value: Optional[str]) -> list[str]:
    if value is None or value in LIST_KEYWORDS or Path(value).is_file():
        return []
    return [f"{field}: file not found: {value} (or use one of {', '.join(LIST_KEYWORDS)})"]


def check_benchmark(field: str, spec: BenchmarkSpec, names: Optional[dict[str, str]] = None) -> list[str]:
    """Problems with a benchmark's data paths, CSV columns, class-name and template files.

    Messages name ``<field>.<key>``, or ``names[key]`` where given (e.g. the command-line flag).
    """
    def name(key: str) -> str:
        return (names or {}).get(key, f"{field}.{key}")

    path = spec.path
    if spec.format == "webdataset":
        problems = _check_shards(name("path"), path)
    elif not isinstance(path, str):
        problems = [f"{name('path')}: format '{spec.format}' takes one path, got a list"]
    elif spec.format == "folder":
        problems = _check_dir(name("path"), path)
    elif spec.format == "csv":
        second = "label_key" if spec.task == "zeroshot" else "caption_key"
        columns = {name("image_key"): spec.image_key, name(second): getattr(spec, second)}
        problems = _check_csv(name("path"), path, spec.separator, columns)
    else:
        problems = [] if Path(path).is_file() else [f"{name('path')}: Karpathy split file not found: {path}"]
    problems += _check_dir(name("root"), spec.root)
    return problems + _check_list_file(name("classnames"), spec.classnames) + \
        _check_list_file(name("templates"), spec.templates)
