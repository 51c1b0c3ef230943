"""`clipkd eval`: benchmarks (and distillation diagnostics) for an open_clip model, checkpoint or clipkd run."""

from __future__ import annotations

import argparse
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Optional

import torch
import yaml
from pydantic import ValidationError

from clipkd.commands.eval.args import DEFAULTS
from clipkd.config import BenchmarkSpec, DataConfig, TrainConfig, error_lines
from clipkd.config_paths import resolve_paths
from clipkd.errors import ConfigError, HubUnreachable


def _one_line(text: object) -> str:
    """A possibly multi-line message as one line (``head: a; b``)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {'; '.join(lines[1:])}"
    return "; ".join(lines)


def _split(item: str, flag: str = "") -> tuple[str, str]:
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


def _check_flags(args: argparse.Namespace) -> list[str]:
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
                fmt, path = _split(item, flag)
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
        raise ConfigError(f"--benchmarks: not valid YAML: {path} ({_one_line(getattr(exc, 'problem', exc))})") \
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
    from clipkd.eval.datasets import load_classnames, load_templates

    problems = []
    for key, load in (("classnames", lambda f: load_classnames(f, [])), ("templates", load_templates)):
        value = getattr(spec, key)
        if spec.task != "zeroshot" or value is None or not Path(value).is_file():
            continue  # a keyword, or a missing file (check_benchmark says so)
        try:
            if not load(value):
                problems.append(f"{names[key]}: {value}: empty (one per line)")
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(f"{names[key]}: {_one_line(exc)}")
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
    defaults. A bad --batch-size / --workers is said by its flag (:func:`_check_flags`): a valid stand-in here."""
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


def _collect(args: argparse.Namespace) -> list[tuple[BenchmarkSpec, str]]:
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
    return [spec for spec, _ in _collect(args)]


def prepared_benchmarks(args: argparse.Namespace) -> list:
    """The benchmarks of the --zeroshot / --retrieval / --benchmarks flags in ``args``, validated, their data
    checked and their indexes read (:class:`~clipkd.eval.runner.Benchmark`); one error for every problem."""
    return _read_benchmarks(_collect(args))


def _one_teacher(cfg, run: str, flag: str) -> None:
    """Refuse a run whose teacher is an ensemble: ``flag`` compares with one teacher."""
    if isinstance(cfg.teacher, list):
        raise ConfigError(f"{flag}: run {run} distils an ensemble of {len(cfg.teacher)} teachers; evaluate each "
                          "with --model NAME --pretrained WEIGHTS")


def _run_config(run: str) -> TrainConfig:
    """The saved config of a run folder, or a one-line error saying why it cannot be used."""
    from clipkd.config import load_config

    folder = Path(run)
    if not folder.is_dir():
        raise ConfigError(f"--run: folder not found: {run}")
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"--run {run}: not a clipkd run folder (no config.yaml)")
    try:
        return load_config(folder / "config.yaml")
    except ConfigError as exc:
        raise ConfigError(f"--run {run}: config.yaml: {_one_line(exc)}") from None


def _checkpoint(run: str, explicit: Optional[str]) -> Path:
    from clipkd.engine.checkpoint import resolve_resume

    try:
        path = resolve_resume(explicit or "latest", run)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"--checkpoint: {_one_line(exc)}") from None
    if path is None:
        raise ConfigError(f"--run {run}: no checkpoint in {Path(run) / 'checkpoints'} (train first, or "
                          "evaluate its teacher with --side teacher)")
    return path


@dataclass
class Target:
    """The model to evaluate: its name, weights (pretrained tag or checkpoint file) and, for a run, its side."""

    model: str
    pretrained: Optional[str]
    side: Optional[str]
    source: str  # how messages name it: ``--model X --pretrained Y``, ``--run R --side teacher``
    weights_option: str  # where the user sets the weights: ``--pretrained``, ``teacher.pretrained``


def _looks_like_file(value: str) -> bool:
    from clipkd.config_paths import WEIGHT_SUFFIXES

    return "/" in value or os.sep in value or value.lower().endswith(WEIGHT_SUFFIXES)


def _check_model_args(args: argparse.Namespace) -> Target:
    """The model to evaluate exists and its weights fit it, checked without building it."""
    from clipkd.build.checks import check_model

    if args.model:
        problems = check_model("--model", args.model, args.pretrained, "--pretrained")
        if problems and args.pretrained and _looks_like_file(args.pretrained) and not Path(args.pretrained).is_file():
            problems.append(f"--pretrained: checkpoint file not found: {args.pretrained}")  # also for a bad --model
        problems = [p + " (e.g. /path/to/weights.safetensors, or a .pt/.bin file)"
                    if p.startswith("--pretrained:") and "unreachable" in p else p for p in problems]
        if problems:
            raise ConfigError("; ".join(dict.fromkeys(problems)))
        source = f"--model {args.model}" + (f" --pretrained {args.pretrained}" if args.pretrained else "")
        return Target(args.model, args.pretrained, None, source, "--pretrained")
    cfg = _run_config(args.run)
    side = args.side or DEFAULTS["side"]
    if side == "teacher":
        if cfg.teacher is None:
            raise ConfigError(f"--side teacher: run {args.run} has no teacher (distill.recipe baseline trains the "
                              "student alone)")
        _one_teacher(cfg, args.run, "--side teacher")
        problems = check_model("teacher.model", cfg.teacher.model, cfg.teacher.pretrained, "teacher.pretrained")
        target = Target(cfg.teacher.model, cfg.teacher.pretrained, side, f"--run {args.run} --side teacher",
                        f"teacher.pretrained in {Path(args.run) / 'config.yaml'}")
    else:
        weights = str(_checkpoint(args.run, args.checkpoint) / "student.safetensors")
        problems = check_model("student.model", cfg.student.model, weights, "checkpoint")
        target = Target(cfg.student.model, weights, side, f"--run {args.run}", "--checkpoint")
    if problems:
        raise ConfigError(f"--run {args.run}: " + "; ".join(problems))
    return target


def _check_diagnostics(args: argparse.Namespace) -> None:
    """A run with a checkpoint, models that can be built, and held-out pairs (``--pairs`` or the run's
    ``eval.val_data``) that exist."""
    from clipkd.build.checks import check_data, check_model
    from clipkd.build.models import teacher_in_use

    cfg = _run_config(args.run)
    if not teacher_in_use(cfg):
        raise ConfigError(f"--diagnostics compares the student with its teacher; run {args.run} was trained "
                          "without one (distill.recipe baseline)")
    if args.pairs:
        fmt, path = _split(args.pairs, "--pairs")
        try:
            data = DataConfig(format=fmt, train=path, batch_size=max(args.batch_size, 1),  # a bad number: its flag
                              workers=max(args.workers, 0))  # says so (_check_flags)
        except ValidationError as exc:
            raise ConfigError(f"--pairs {args.pairs}: " + "; ".join(f"{f}: {m}" for f, m in error_lines(exc))) \
                from None
        problems = check_data("--pairs", data, "--pairs")
    elif cfg.eval.val_data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH, or eval.val_data in the run's "
                          "config")
    else:
        problems = [f"--run {args.run}: {p}" for p in check_data("eval.val_data", cfg.eval.val_data)]
    _one_teacher(cfg, args.run, "--diagnostics")
    problems += [f"--run {args.run}: {p}" for side, mc in (("teacher", cfg.teacher), ("student", cfg.student))
                 for p in check_model(f"{side}.model", mc.model, mc.pretrained, f"{side}.pretrained")]
    if problems:
        raise ConfigError("; ".join(problems))
    _checkpoint(args.run, args.checkpoint)


def _check_outputs(args: argparse.Namespace) -> list[str]:
    """--out and --cache-dir are folders, or can become ones."""
    problems = []
    for flag, value in (("--out", args.out), ("--cache-dir", args.cache_dir)):
        if not value:
            continue
        path = Path(value)
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            problems.append(f"{flag}: {existing} is a file, not a folder" if existing == path
                            else f"{flag}: cannot create {value}: {existing} is a file")
    return problems


def _preflight(args: argparse.Namespace) -> tuple[list[tuple[BenchmarkSpec, str]], Optional[Target]]:
    """Every flag, path and model setting, checked before anything is built; all problems in one error."""
    problems = _check_flags(args)
    wanted = bool(args.zeroshot or args.retrieval or args.benchmarks)
    if not wanted and not args.diagnostics:
        problems.append("nothing to evaluate: give --zeroshot, --retrieval, --benchmarks or --diagnostics")

    def attempt(check, *a):
        try:
            return check(*a)
        except ConfigError as exc:
            problems.append(str(exc))
            return None

    specs = attempt(_collect, args) if wanted else []
    target = attempt(_check_model_args, args) if wanted else None
    if args.diagnostics and args.run:  # without --run: said by _check_flags
        attempt(_check_diagnostics, args)
    problems += _check_outputs(args)
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    return specs, target


def _read_benchmarks(specs: list[tuple[BenchmarkSpec, str]]) -> list:
    """Each benchmark's data index, class names and templates, read now: their errors before a model is built."""
    from clipkd.errors import USER_ERRORS
    from clipkd.eval.runner import Benchmark

    benches, problems = [], []
    for spec, label in specs:
        bench = Benchmark(spec)
        try:
            bench.prepare()
        except USER_ERRORS as exc:
            problems.append(f"{label}: {_one_line(exc)}")
        benches.append(bench)
    if problems:
        raise ConfigError("; ".join(problems))
    return benches


def _download_message(target: Target, failure: HubUnreachable) -> str:
    from clipkd.models.shapes import hub_offline

    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the download failed"
    if target.model.startswith("hf-hub:"):
        instead = ("pass a local model config and checkpoint instead: --model /path/to/open_clip_config.json "
                   "--pretrained /path/to/weights.safetensors (or .pt/.bin)")
    elif target.weights_option == "--pretrained":
        instead = f"pass a local checkpoint file instead: {LOCAL_WEIGHTS}"
    else:
        instead = f"set {target.weights_option} to a local checkpoint file (.safetensors, .pt or .bin)"
    what = ("the model's config and weights" if target.model.startswith("hf-hub:") else
            f"the pretrained weights '{target.pretrained}'" if target.pretrained else "the model's weights")
    return (f"{target.source}: cannot download {what}: the model hub is unreachable ({why}) and they are not in "
            f"the local cache; download them once with network access, or {instead}")


@contextmanager
def model_download_errors(target: Target):
    """Model creation inside: :class:`~clipkd.errors.HubUnreachable` (raised by model creation when a download
    fails) becomes one clean line naming this command's flags and how to use a local checkpoint instead."""
    try:
        yield
    except HubUnreachable as exc:
        raise ConfigError(_download_message(target, exc)) from None


def load_encoder(args: argparse.Namespace, target: Optional[Target] = None):
    """The encoder to evaluate, and its (model, pretrained) labels."""
    from clipkd.build.models import build_encoder
    from clipkd.models.factory import create_encoder
    from clipkd.models.open_clip_adapter import create_open_clip_encoder

    target = target or _check_model_args(args)
    with model_download_errors(target):
        if args.model:
            return create_encoder(args.model, args.pretrained), args.model, args.pretrained
        cfg = _run_config(args.run)
        if target.side == "teacher":
            return build_encoder(cfg.teacher), cfg.teacher.model, cfg.teacher.pretrained
        return create_open_clip_encoder(cfg.student.model, target.pretrained), cfg.student.model, target.pretrained


def diagnostics(args: argparse.Namespace, device) -> dict:
    """Teacher-student diagnostics of a run's checkpoint on held-out pairs: every pair once, student in eval mode."""
    from clipkd.build.models import build_distiller_from_config
    from clipkd.engine.checkpoint import load_student
    from clipkd.eval.val_loss import ValLossHook

    cfg = _run_config(args.run)
    data = cfg.eval.val_data
    if args.pairs:
        fmt, path = _split(args.pairs)
        data = DataConfig(format=fmt, train=path, batch_size=args.batch_size, workers=args.workers)
    if data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH or eval.val_data in the run")
    target = Target(cfg.teacher.model, cfg.teacher.pretrained, "teacher", f"--run {args.run} --diagnostics",
                    f"teacher.pretrained in {Path(args.run) / 'config.yaml'}")
    with model_download_errors(target):
        distiller = build_distiller_from_config(cfg)
    load_student(_checkpoint(args.run, args.checkpoint), distiller.student)  # weights only: no training state
    distiller.teacher.to(device)
    distiller.student.to(device)
    return ValLossHook.from_config(data, distiller, device)(distiller, 0)


def run_eval(args: argparse.Namespace) -> int:
    """Check every argument and path (one clear error, before any model is built), read the benchmarks' data
    indexes, then build the model and evaluate."""
    from clipkd.build.device import resolve_device
    from clipkd.eval.report import markdown_table
    from clipkd.eval.runner import write_result

    specs, target = _preflight(args)
    benches = _read_benchmarks(specs)
    device = resolve_device(args.device)
    results = []
    if benches:
        encoder, model, pretrained = load_encoder(args, target)
        encoder.to(device)
        for bench in benches:
            metrics = bench.evaluate(encoder, device, args.cache_dir, f"{model}|{pretrained}")
            results.append(bench.result(metrics, model, pretrained, target.side))
            print(f"wrote {write_result(results[-1], args.out)}")
    if args.diagnostics:
        checkpoint = _checkpoint(args.run, args.checkpoint)
        diag = {"dataset": "diagnostics", "model": "student-vs-teacher", "pretrained": args.run,
                "checkpoint": str(checkpoint), "task": "distillation_diagnostics",
                "metrics": diagnostics(args, device)}
        print(f"wrote {write_result(diag, args.out, short=Path(os.path.abspath(args.run)).name)}")
        print("diagnostics (student vs teacher): " + ", ".join(f"{k} {v:.4g}" for k, v in diag["metrics"].items()))
    if results:
        print(markdown_table(results))
    return 0
