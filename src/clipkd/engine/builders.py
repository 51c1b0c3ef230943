"""Config -> library objects. The only place that reads :class:`~clipkd.config.TrainConfig` sections."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import torch

from clipkd.config import (BenchmarkSpec, DataConfig, ModelConfig, TrainConfig, teacher_fields, teacher_list,
                           teacher_terms, teacher_weights)
from clipkd.config_paths import LIST_KEYWORDS, WEIGHT_SUFFIXES
from clipkd.data.sources import CsvSource, ShardSource, Source, expand_shards
from clipkd.data.stream import DistillStream
from clipkd.data.views import PairedViews
from clipkd.distill import Distiller, build_distiller
from clipkd.models.encoders import ClipEncoder
from clipkd.errors import ConfigError
from clipkd.models.factory import COMPOSITE_MODELS, create_encoder, known_model
from clipkd.models.shapes import (ArchitectureError, Shapes, checkpoint_shapes, expected_shapes, fit_problem,
                                  model_config_problem, pretrained_tag_problem)

if TYPE_CHECKING:
    from clipkd.reinforce.replay import ReinforcedViews

log = logging.getLogger(__name__)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. CUDA means GPU ``local_rank`` (one GPU per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


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


def preflight(cfg: TrainConfig) -> Optional[dict]:
    """Checks that need the filesystem, the model registry or checkpoint headers, before anything is built.

    Model configs are parsed, checkpoints are compared by tensor names and shapes with the architecture built
    on the meta device, pretrained tags are fetched (or found in the cache), data files and CSV columns exist,
    reinforced data fits the run. Returns the reinforced data's manifest when the run trains from it (checked).
    """
    manifest = None
    problems: list[str] = []
    teachers = teacher_fields(cfg.teacher) if teacher_in_use(cfg) else []  # one the run does not build: unchecked
    for side, mc in [*teachers, ("student", cfg.student)]:
        problems += check_model(f"{side}.model", mc.model, mc.pretrained, f"{side}.pretrained")
    problems += check_data("data", cfg.data, unique_shards=bool(teachers and cfg.distill.teacher_cache))
    if cfg.eval.val_data is not None:
        problems += check_data("eval.val_data", cfg.eval.val_data)
    for i, spec in enumerate(cfg.eval.benchmarks):
        problems += check_benchmark(f"eval.benchmarks.{i}", spec)
    if teachers and cfg.distill.teacher_cache:
        manifest, found = open_teacher_cache(cfg)
        problems += [f"distill.teacher_cache: {cfg.distill.teacher_cache}: {p}" for p in found]
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))
    return manifest


def open_teacher_cache(cfg: TrainConfig) -> tuple[Optional[dict], list[str]]:
    """(manifest, problems) of the run's reinforced data (``distill.teacher_cache``), compared with its teacher,
    data, ``data.crop_scale`` and ``distill.cache_views`` (:func:`clipkd.reinforce.check.cache_problems`)."""
    from clipkd.reinforce.check import cache_problems

    assert cfg.teacher is not None and cfg.distill.teacher_cache
    return cache_problems(cfg.distill.teacher_cache, teacher_list(cfg.teacher), cfg.data, cfg.distill.cache_views)


def stored_views(cfg: TrainConfig, checked: Optional[dict] = None) -> Optional["ReinforcedViews"]:
    """The stored views training reads instead of running the teacher, or None without a teacher cache (or when
    no loss term uses the teacher). Raises :class:`ConfigError` for a cache that does not fit the run.

    ``checked``: the manifest :func:`preflight` returned (already compared with the run: not compared again).
    """
    if not (teacher_in_use(cfg) and cfg.distill.teacher_cache):
        return None
    from clipkd.reinforce.replay import ReinforcedViews, ViewChoice

    manifest, problems = (checked, []) if checked is not None else open_teacher_cache(cfg)
    if problems or manifest is None:
        raise ConfigError("distill.teacher_cache: the cache does not fit this run:\n" +
                          "\n".join(f"  {p}" for p in problems))
    d = cfg.distill
    return ReinforcedViews(d.teacher_cache, manifest, ViewChoice(d.cache_views or manifest["views"], d.view_order,
                                                                 cfg.seed))


def build_encoder(mc: ModelConfig, role: str = "model") -> ClipEncoder:
    """The encoder of a model section; ``role`` (teacher, student, model) says how random weights are reported
    (:func:`clipkd.models.factory.report_untrained`)."""
    return create_encoder(mc.model, mc.pretrained, image_mean=mc.image_mean, image_std=mc.image_std, role=role)


def teacher_in_use(cfg: TrainConfig) -> bool:
    """Whether the run builds its teacher: it has a teacher section and an active loss term that uses it.

    Recipe ``baseline`` (task loss only) never does: a teacher section given with it, and a
    ``distill.teacher_cache``, are ignored.
    """
    return bool(teacher_list(cfg.teacher)) and bool(teacher_terms(cfg.distill))


def global_batch_size(cfg: TrainConfig, world_size: int = 1) -> int:
    """Pairs per optimizer step over all processes: data.batch_size x optim.accum_steps x ``world_size``."""
    return cfg.data.batch_size * cfg.optim.accum_steps * world_size


def build_distiller_from_config(cfg: TrainConfig, world_size: int = 1,
                                stored: Optional["ReinforcedViews"] = None) -> Distiller:
    """Teacher (frozen) and student (with the heads the configured terms need).

    Without a teacher term (recipe ``baseline``) no teacher is built: the distiller's ``teacher`` is None.
    With ``stored`` views (reinforced data, :func:`stored_views`) neither: the batches bring the teacher's
    embeddings, whose size the cache's manifest gives.
    The student is built first, so its initialisation depends on the seed alone, with or without a teacher.
    ``world_size``: the number of training processes; a recipe's GD weight follows the global batch
    (:func:`global_batch_size`) and the teacher's embedding dim.
    """
    torch.manual_seed(cfg.seed)  # identical initialisation for the same seed (and on every rank)
    student = build_encoder(cfg.student, role="student")
    teachers = teacher_list(cfg.teacher)
    shares = teacher_weights(teachers) if teachers else None
    if stored is not None:
        log.info("teacher embeddings from %s (%d stored views per sample, %s order): no teacher is built",
                 stored.folder, stored.choice.views, stored.choice.order)
        weights, mask_ratio = cfg.distill.resolved(global_batch_size(cfg, world_size), _gd_dim(stored.embed_dims,
                                                                                                 shares))
        return build_distiller(student, None, weights, mask_ratio, stored.embed_dims, shares)
    built = [build_encoder(t, role="teacher") for t in teachers] if teacher_in_use(cfg) else []
    if not built and teachers:
        d = cfg.distill
        source = "distill.weights" if d.weights is not None else f"distill.recipe '{d.recipe}'"
        ignored = " and distill.teacher_cache" if d.teacher_cache else ""
        log.info("%s has no loss term that uses a teacher: the student trains alone, the teacher section%s "
                 "(%s) is ignored and no teacher is built", source, ignored, ", ".join(t.model for t in teachers))
    dims = [t.embed_dim for t in built] or [student.embed_dim]  # no teacher: GD is not active
    weights, mask_ratio = cfg.distill.resolved(global_batch_size(cfg, world_size), _gd_dim(dims, shares))
    return build_distiller(student, built or None, weights, mask_ratio, teacher_weights=shares)


def _gd_dim(dims: list[int], shares: Optional[list[float]]) -> int:
    """The teacher embedding size a recipe's GD weight is calibrated for; an ensemble: the weighted mean size."""
    if len(dims) == 1 or not shares:
        return dims[0]
    return round(sum(d * w for d, w in zip(dims, shares)))


def build_source(dc: DataConfig) -> Source:
    if dc.format == "csv":
        if not isinstance(dc.train, str):
            raise ValueError("data.train: a CSV source takes one file path")
        return CsvSource(dc.train, dc.csv_img_key, dc.csv_caption_key, dc.csv_separator, dc.root)
    return ShardSource(dc.train, dc.shuffle_buffer, dc.num_samples)


def build_stream(dc: DataConfig, distiller: Distiller, seed: int, rank: int = 0,
                 world_size: int = 1, batches_per_split: Optional[int] = None,
                 stored: Optional["ReinforcedViews"] = None) -> DistillStream:
    """The training batch stream for one process, each side with its own views and tokenizer (held-out pairs:
    :meth:`clipkd.engine.hooks.ValLossHook.from_config`); with ``stored`` views, the student's view replays a
    stored crop and the batch carries the teacher's stored embeddings."""
    views = PairedViews(*distiller.view_encoders, dc.crop_scale)
    return DistillStream(build_source(dc), views, dc.batch_size, seed=seed, rank=rank, world_size=world_size,
                         workers=dc.workers, batches_per_split=batches_per_split,
                         max_skip_fraction=dc.max_skip_fraction, max_image_pixels=dc.max_image_pixels, stored=stored)
