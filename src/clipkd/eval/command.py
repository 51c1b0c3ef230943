"""`clipkd eval`: benchmarks (and distillation diagnostics) for an open_clip model, checkpoint or clipkd run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

import torch
import yaml
from pydantic import ValidationError

from clipkd.config import BenchmarkSpec, DataConfig, TrainConfig, error_lines
from clipkd.config_paths import resolve_paths
from clipkd.errors import ConfigError


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


def _check_flags(args: argparse.Namespace) -> None:
    """Numbers and combinations of flags, before anything is read."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers: must be >= 0, got {args.workers}")
    if args.device != "auto":
        try:
            torch.device(args.device)
        except RuntimeError:
            raise ConfigError(f"--device: expected auto, cpu or cuda (or a torch device like cuda:1), "
                              f"got '{args.device}'") from None
    if not args.run:
        for flag, given in (("--diagnostics", args.diagnostics), ("--side", args.side != "student"),
                            ("--checkpoint", args.checkpoint)):
            if given:
                raise ConfigError(f"{flag} needs --run (a clipkd run folder)")
    if args.run and args.pretrained:
        raise ConfigError("--pretrained goes with --model (a run's weights come from its checkpoint or config)")
    if args.pairs and not args.diagnostics:
        raise ConfigError("--pairs needs --diagnostics")


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
            "label_key": "--label-key", "image_key": "image column", "caption_key": "caption column"}


def collect_specs(args: argparse.Namespace) -> list[BenchmarkSpec]:
    """Benchmarks from the YAML file and the shorthand flags, validated, their data paths checked."""
    from clipkd.engine.builders import check_benchmark

    checked: list[tuple[BenchmarkSpec, list[str]]] = []
    if args.benchmarks:
        for i, raw in enumerate(_benchmarks_file(args.benchmarks)):
            spec = _validate_spec(f"--benchmarks {args.benchmarks}", f"benchmarks.{i}.", raw)
            checked.append((spec, check_benchmark(f"--benchmarks {args.benchmarks}: benchmarks.{i}", spec)))
    common = {"root": args.root, "batch_size": args.batch_size, "workers": args.workers}
    for flag, items in (("--zeroshot", args.zeroshot), ("--retrieval", args.retrieval)):
        for item in items:
            fmt, path = _split(item, flag)
            raw = {"name": Path(path.rstrip("/")).stem, "format": fmt, "path": path, **common}
            if flag == "--zeroshot":
                raw.update(task="zeroshot", classnames=args.classnames, templates=args.templates,
                           label_key=args.label_key)
            else:
                raw.update(task="retrieval", split=args.split, first_caption_only=args.first_caption_only)
            spec = _validate_spec(f"{flag} {item}", "", raw)
            checked.append((spec, check_benchmark(flag, spec, _flag_names(flag, item))))
    problems = [p for _, found in checked for p in found]
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))  # --root etc. once, even for several benchmarks
    return [spec for spec, _ in checked]


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
    except FileNotFoundError as exc:
        raise ConfigError(f"--checkpoint: {exc}") from None
    if path is None:
        raise FileNotFoundError(f"--run {run}: no checkpoint in {Path(run) / 'checkpoints'} (train first, or "
                                "evaluate its teacher with --side teacher)")
    return path


def _check_model_args(args: argparse.Namespace) -> None:
    """The model to evaluate exists and its weights fit it, checked without building it."""
    from clipkd.engine.builders import check_model

    if args.model:
        problems = check_model("--model", args.model, args.pretrained, "--pretrained")
        where = ""
    else:
        cfg = _run_config(args.run)
        where = f"--run {args.run}: "
        if args.side == "teacher":
            problems = check_model("teacher.model", cfg.teacher.model, cfg.teacher.pretrained, "teacher.pretrained")
        else:
            weights = str(_checkpoint(args.run, args.checkpoint) / "student.safetensors")
            problems = check_model("student.model", cfg.student.model, weights, "checkpoint")
    if problems:
        raise ConfigError(where + "; ".join(problems))


def _check_diagnostics(args: argparse.Namespace) -> None:
    """A run with a checkpoint, and held-out pairs (``--pairs`` or the run's ``eval.val_data``) that exist."""
    from clipkd.engine.builders import check_data

    cfg = _run_config(args.run)
    if args.pairs:
        fmt, path = _split(args.pairs, "--pairs")
        try:
            data = DataConfig(format=fmt, train=path, batch_size=args.batch_size, workers=args.workers)
        except ValidationError as exc:
            raise ConfigError(f"--pairs {args.pairs}: " + "; ".join(f"{f}: {m}" for f, m in error_lines(exc))) \
                from None
        problems = check_data("--pairs", data, "--pairs")
    elif cfg.eval.val_data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH, or eval.val_data in the run's "
                          "config")
    else:
        problems = [f"--run {args.run}: {p}" for p in check_data("eval.val_data", cfg.eval.val_data)]
    if problems:
        raise ConfigError("; ".join(problems))
    _checkpoint(args.run, args.checkpoint)


def load_encoder(args: argparse.Namespace):
    """The encoder to evaluate, and its (model, pretrained) labels."""
    from clipkd.engine.builders import build_encoder
    from clipkd.models.factory import create_encoder
    from clipkd.models.open_clip_adapter import create_open_clip_encoder

    if args.model:
        return create_encoder(args.model, args.pretrained), args.model, args.pretrained
    cfg = _run_config(args.run)
    if args.side == "teacher":
        return build_encoder(cfg.teacher), cfg.teacher.model, cfg.teacher.pretrained
    weights = str(_checkpoint(args.run, args.checkpoint) / "student.safetensors")
    return create_open_clip_encoder(cfg.student.model, weights), cfg.student.model, weights


def diagnostics(args: argparse.Namespace, device) -> dict:
    """Teacher-student diagnostics of a run's checkpoint on held-out pairs: every pair once, student in eval mode."""
    from clipkd.engine.builders import build_distiller_from_config
    from clipkd.engine.checkpoint import load_student
    from clipkd.engine.hooks import ValLossHook

    cfg = _run_config(args.run)
    data = cfg.eval.val_data
    if args.pairs:
        fmt, path = _split(args.pairs)
        data = DataConfig(format=fmt, train=path, batch_size=args.batch_size, workers=args.workers)
    if data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH or eval.val_data in the run")
    distiller = build_distiller_from_config(cfg)
    load_student(_checkpoint(args.run, args.checkpoint), distiller.student)  # weights only: no training state
    distiller.teacher.to(device)
    distiller.student.to(device)
    return ValLossHook.from_config(data, distiller, device)(distiller, 0)


def run_eval(args: argparse.Namespace) -> int:
    """Check every argument and path (one clear error each, before any model is built), then evaluate."""
    from clipkd.engine.builders import resolve_device
    from clipkd.eval.report import markdown_table
    from clipkd.eval.runner import Benchmark, write_result

    _check_flags(args)
    specs = collect_specs(args)
    if not specs and not args.diagnostics:
        raise ConfigError("nothing to evaluate: give --zeroshot, --retrieval, --benchmarks or --diagnostics")
    if args.diagnostics:
        _check_diagnostics(args)
    if specs:
        _check_model_args(args)
    device = resolve_device(args.device)
    results = []
    if specs:
        encoder, model, pretrained = load_encoder(args)
        encoder.to(device)
        for spec in specs:
            bench = Benchmark(spec)
            metrics = bench.evaluate(encoder, device, args.cache_dir, f"{model}|{pretrained}")
            results.append(bench.result(metrics, model, pretrained))
            print(f"wrote {write_result(results[-1], args.out)}")
    if args.diagnostics:
        diag = {"dataset": "diagnostics", "model": "student-vs-teacher", "pretrained": args.run,
                "task": "distillation_diagnostics", "metrics": diagnostics(args, device)}
        print(f"wrote {write_result(diag, args.out)}")
        print("diagnostics (student vs teacher): " + ", ".join(f"{k} {v:.4g}" for k, v in diag["metrics"].items()))
    if results:
        print(markdown_table(results))
    return 0
