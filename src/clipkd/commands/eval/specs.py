"""`clipkd eval` flags -> benchmark specs: ``--zeroshot``/``--retrieval FORMAT:PATH`` shorthands with their data
flags, and ``--benchmarks FILE``; every problem with them found before anything is read or built."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path, PurePosixPath

import torch
import yaml
from pydantic import ValidationError

from clipkd.commands.eval.args import DEFAULTS
from clipkd.config import BenchmarkSpec, error_lines
from clipkd.config_paths import resolve_paths
from clipkd.errors import ConfigError


def one_line(text: object) -> str:
    """A possibly multi-line message as one line (``head: a; b``)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:])}"
    return "; ".join(lines)


def split_item(item: str, flag: str = "") -> tuple[str, str]:
    """``FORMAT:PATH`` -> (format, path); ``flag`` names the option in the error."""
    fmt, sep, path = item.partition(":")
    if not sep or not fmt or not path:
        where = f"{flag} '{item}'" if flag else f"'{item}'"
        raise ConfigError(f"{where}: expected FORMAT:PATH (e.g. folder:imagenet/val, csv:pairs.csv)")
    return fmt, path


ZEROSHOT_FORMATS = ("folder", "csv", "webdataset")
LOCAL_WEIGHTS = "--pretrained /path/to/weights.safetensors (or .pt/.bin)"
RETRIEVAL_FORMATS = ("karpathy", "csv", "webdataset")

# data flags: (the benchmark-spec key, {task: the formats it applies to}, what it is, for messages)
DATA_FLAGS = {
    "--classnames": ("classnames", {"zeroshot": ZEROSHOT_FORMATS}, "the class names of --zeroshot data"),
    "--templates": ("templates", {"zeroshot": ZEROSHOT_FORMATS}, "the prompt templates of --zeroshot data"),
    "--label-key": ("label_key", {"zeroshot": ("csv", "webdataset")},
                    "the class-index column or member of --zeroshot csv or webdataset data"),
    "--image-key": ("image_key", {"zeroshot": ("csv", "webdataset"), "retrieval": ("csv", "webdataset")},
                    "the image column or member of csv or webdataset data"),
    "--caption-key": ("caption_key", {"retrieval": ("csv", "webdataset")},
                      "the caption column or member of --retrieval csv or webdataset data"),
    "--root": ("root", {"zeroshot": ("csv",), "retrieval": ("csv", "karpathy")},
               "the image root of csv or karpathy data"),
    "--split": ("split", {"retrieval": ("karpathy",)}, "the split of --retrieval karpathy data"),
    "--first-caption-only": ("first_caption_only", {"retrieval": RETRIEVAL_FORMATS}, "a --retrieval protocol"),
}


def check_flags(args: argparse.Namespace) -> list[str]:
    """Numbers and combinations of flags, before anything is read: every problem."""
    problems = []
    if args.batch_size < 1:
        problems.append(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        problems.append(f"--workers: must be >= 0, got {args.workers}")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            problems.append(f"--device: expected auto, cpu or cuda (or a torch device like cuda:1), "
                            f"got '{args.device}'")
    if not args.run:
        problems += [f"{flag} needs --run (a clipkd run folder)" for flag, given in (
            ("--diagnostics", args.diagnostics), ("--side", args.side is not None), ("--checkpoint", args.checkpoint))
            if given]
    if args.run and args.pretrained:
        problems.append("--pretrained goes with --model (a run's weights come from its checkpoint or config)")
    if args.pairs and not args.diagnostics:
        problems.append("--pairs needs --diagnostics")
    if args.run and args.side == "teacher" and args.checkpoint and not args.diagnostics:
        problems.append("--checkpoint picks the student's weights (or those --diagnostics uses); with --side "
                        "teacher the weights come from the run's config (teacher.pretrained)")
    return problems


def _shorthand(args: argparse.Namespace) -> tuple[list[tuple[str, str, str, str, str]], list[str]]:
    """``(flag, item, task, format, path)`` of each --zeroshot / --retrieval benchmark, and the problem of each
    item that is not ``FORMAT:PATH``."""
    out, problems = [], []
    for flag, task, items in (("--zeroshot", "zeroshot", args.zeroshot), ("--retrieval", "retrieval", args.retrieval)):
        for item in items:
            try:
                fmt, path = split_item(item, flag)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            out.append((flag, item, task, fmt, path))
    return out, problems


def _check_data_flags(args: argparse.Namespace, shorthand: list[tuple[str, str, str, str, str]]) -> list[str]:
    """Data flags that were given but apply to none of the --zeroshot / --retrieval benchmarks."""
    problems = []
    for flag, (key, applies, what) in DATA_FLAGS.items():
        if getattr(args, key) is None:
            continue
        if any(fmt in applies.get(task, ()) for _, _, task, fmt, _ in shorthand):
            continue
        also = f"; a --benchmarks file sets '{key}' in each benchmark" if args.benchmarks else ""
        problems.append(f"{flag} applies to none of the requested benchmarks (it sets {what}{also})")
    return problems


def _validate_spec(label: str, prefix: str, raw: dict) -> BenchmarkSpec:
    """One benchmark spec, or a one-line error naming where it came from (``label``) and the field."""
    try:
        return BenchmarkSpec.model_validate(raw)
    except ValidationError as exc:
        problems = [f"{prefix}{field}: {msg}" if field else f"{prefix.rstrip('.')}: {msg}".lstrip(": ")
                    for field, msg in error_lines(exc)]
        raise ConfigError(f"{label}: {'; '.join(problems)}") from None


def _benchmarks_file(path: str) -> list[dict]:
    """The benchmark specs of a YAML file (a list, or ``benchmarks: [...]``), paths relative to the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--benchmarks: file not found: {path}")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--benchmarks: not valid YAML: {path} ({one_line(getattr(exc, 'problem', exc))})") \
            from None
    items = loaded.get("benchmarks", []) if isinstance(loaded, dict) else loaded or []
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ConfigError(f"--benchmarks {path}: expected a list of benchmark mappings, or 'benchmarks: [...]'")
    resolve_paths({"eval": {"benchmarks": items}}, Path(os.path.abspath(file)).parent)
    return items


def _flag_names(flag: str, item: str) -> dict[str, str]:
    """How a shorthand benchmark's fields are named in messages: by their command-line flags."""
    return {"path": f"{flag} {item}", "root": "--root", "classnames": "--classnames", "templates": "--templates",
            "label_key": "--label-key", "image_key": "--image-key", "caption_key": "--caption-key"}


GENERIC_NAMES = frozenset({
    "data", "dataset", "datasets", "test", "testing", "train", "training", "val", "valid", "validation", "dev",
    "eval", "evaluation", "images", "imgs", "img", "index", "labels", "annotations", "captions", "pairs",
    "metadata", "meta", "shard", "shards", "split", "splits", "all", "files", "samples", "list"})
"""File and folder names that do not tell benchmarks apart (compared lower-case): a benchmark named by one of
them gets its parent folder's name before it."""


def _path_parts(path: str, fmt: str) -> list[str]:
    """The names along ``path`` (a local one made absolute, so the name does not depend on the working folder);
    the last without its suffix (not a folder's) and brace ranges (``shard-{000..009}.tar`` -> ``shard``)."""
    local = "://" not in path and not path.startswith("pipe:")
    parts = [p for p in PurePosixPath((os.path.abspath(path) if local else path).rstrip("/")).parts
             if p not in ("/", ".", "..")]
    if not parts:
        return []
    last = parts[-1] if fmt == "folder" else PurePosixPath(parts[-1]).stem or parts[-1]
    last = re.sub(r"\{[^}]*\}", "", last).strip("-_. ")
    return parts[:-1] + [last] if last else parts[:-1]


def benchmark_name(path: str, fmt: str, taken: set[str]) -> str:
    """A --zeroshot / --retrieval benchmark's name: its file or folder name (without suffix or brace range),
    with the parent folders' names before it while the name so far is generic (:data:`GENERIC_NAMES`):
    ``cifar10/data.csv`` -> ``cifar10-data``, ``imagenet/val`` -> ``imagenet-val``, ``flowers102.csv`` ->
    ``flowers102``. A name in ``taken`` gets more of the path before it, then a number (``-2``, ...)."""
    parts = _path_parts(path, fmt) or ["data"]
    n = 1
    while n < len(parts) and all(p.lower() in GENERIC_NAMES for p in parts[-n:]):
        n += 1
    for k in range(n, len(parts) + 1):
        name = "-".join(parts[-k:])
        if name not in taken:
            return name
    base, i = "-".join(parts[-n:]), 2
    while f"{base}-{i}" in taken:
        i += 1
    return f"{base}-{i}"


def _prompt_problems(spec: BenchmarkSpec, names: dict[str, str]) -> list[str]:
    """What is wrong inside a zero-shot benchmark's class-name and template files (that exist), named by
    ``names[key]``; read now, so that these problems come with the others."""
    from clipkd.eval.prompts import load_classnames, load_templates

    problems = []
    for key, load in (("classnames", lambda f: load_classnames(f, [])), ("templates", load_templates)):
        value = getattr(spec, key)
        if spec.task != "zeroshot" or value is None or not Path(value).is_file():
            continue  # a keyword, or a missing file (check_benchmark says so)
        try:
            if not load(value):
                problems.append(f"{names[key]}: {value}: empty (one per line)")
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{names[key]}: {one_line(exc)}")
    return problems


def _file_specs(path: str, problems: list[str]) -> list[tuple[BenchmarkSpec, str, list[str]]]:
    """The specs of a --benchmarks file, each with its label and problems; the file's own problems added to
    ``problems``."""
    from clipkd.build.checks import check_benchmark

    checked: list[tuple[BenchmarkSpec, str, list[str]]] = []
    names: dict[str, int] = {}
    try:
        items = _benchmarks_file(path)
    except ConfigError as exc:
        problems.append(str(exc))
        return []
    for i, raw in enumerate(items):
        label = f"--benchmarks {path}: benchmarks.{i}"
        try:
            spec = _validate_spec(f"--benchmarks {path}", f"benchmarks.{i}.", raw)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if spec.name in names:
            problems.append(f"{label}.name: '{spec.name}' is also the name of benchmarks.{names[spec.name]} "
                            "(names must differ: they name the results)")
        names.setdefault(spec.name, i)
        found = check_benchmark(label, spec)
        found += _prompt_problems(spec, {k: f"{label}.{k}" for k in ("classnames", "templates")})
        checked.append((spec, label, found))
    return checked


def _shorthand_raw(args: argparse.Namespace, task: str, fmt: str, path: str, name: str) -> dict:
    """The benchmark spec of one --zeroshot / --retrieval item: the data flags that apply to it, else the
    defaults. A bad --batch-size / --workers is said by its flag (:func:`check_flags`): a valid stand-in here."""
    raw = {"name": name, "task": task, "format": fmt, "path": path, "root": args.root,
           "batch_size": max(args.batch_size, 1), "workers": max(args.workers, 0)}
    for key in ("image_key", "label_key", "caption_key", "classnames", "templates", "split", "first_caption_only"):
        value = getattr(args, key)
        if value is not None and fmt in DATA_FLAGS[f"--{key.replace('_', '-')}"][1].get(task, ()):
            raw[key] = value
        elif key in DEFAULTS:
            raw[key] = DEFAULTS[key]  # the effective default --help states (a benchmark spec's own)
    if raw["root"] is None or fmt not in DATA_FLAGS["--root"][1].get(task, ()):
        del raw["root"]
    return raw


def collect(args: argparse.Namespace) -> list[tuple[BenchmarkSpec, str]]:
    """``(spec, label)`` of every benchmark, validated, data paths checked; ``label`` names it in messages.
    Every problem in one :class:`ConfigError`."""
    from clipkd.build.checks import check_benchmark

    shorthand, problems = _shorthand(args)
    problems += _check_data_flags(args, shorthand)
    checked = _file_specs(args.benchmarks, problems) if args.benchmarks else []
    taken = {spec.name for spec, _, _ in checked}
    for flag, item, task, fmt, path in shorthand:
        name = benchmark_name(path, fmt, taken)
        taken.add(name)
        try:
            spec = _validate_spec(f"{flag} {item}", "", _shorthand_raw(args, task, fmt, path, name))
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        names = _flag_names(flag, item)
        checked.append((spec, f"{flag} {item}", check_benchmark(flag, spec, names) + _prompt_problems(spec, names)))
    problems += [p for _, _, found in checked for p in found]
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))  # --root etc. once, even for several benchmarks
    return [(spec, label) for spec, label, _ in checked]


def collect_specs(args: argparse.Namespace) -> list[BenchmarkSpec]:
    """Benchmarks from the YAML file and the shorthand flags, validated, their data paths checked."""
    return [spec for spec, _ in collect(args)]


def prepared_benchmarks(args: argparse.Namespace) -> list:
    """The benchmarks of the --zeroshot / --retrieval / --benchmarks flags in ``args``, validated, their data
    checked and their indexes read (:class:`~clipkd.eval.runner.Benchmark`); one error for every problem."""
    return read_benchmarks(collect(args))


def read_benchmarks(specs: list[tuple[BenchmarkSpec, str]]) -> list:
    """Each benchmark's data index, class names and templates, read now: their errors before a model is built."""
    from clipkd.errors import USER_ERRORS
    from clipkd.eval.runner import Benchmark

    benches, problems = [], []
    for spec, label in specs:
        bench = Benchmark(spec)
        try:
            bench.prepare()
        except USER_ERRORS as exc:
            problems.append(f"{label}: {one_line(exc)}")
        benches.append(bench)
    if problems:
        raise ConfigError("; ".join(problems))
    return benches
