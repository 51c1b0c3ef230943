"""`clipkd eval`: benchmarks (and distillation diagnostics) for an open_clip model, checkpoint or clipkd run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from clipkd.commands.eval.specs import check_flags, collect, read_benchmarks, split_item
from clipkd.commands.eval.target import (
    Target,
    check_model_args,
    load_encoder,
    model_download_errors,
    one_teacher,
    run_checkpoint,
    run_config,
)
from clipkd.config import BenchmarkSpec, DataConfig, error_lines
from clipkd.errors import ConfigError


def _check_diagnostics(args: argparse.Namespace) -> None:
    """A run with a checkpoint, models that can be built, and held-out pairs (``--pairs`` or the run's
    ``eval.val_data``) that exist."""
    from clipkd.build.checks import check_data, check_model
    from clipkd.build.models import teacher_in_use

    cfg = run_config(args.run)
    if not teacher_in_use(cfg):
        raise ConfigError(f"--diagnostics compares the student with its teacher; run {args.run} was trained "
                          "without one (distill.recipe baseline)")
    if args.pairs:
        fmt, path = split_item(args.pairs, "--pairs")
        try:
            data = DataConfig(format=fmt, train=path, batch_size=max(args.batch_size, 1),  # a bad number: its flag
                              workers=max(args.workers, 0))  # says so (check_flags)
        except ValidationError as exc:
            raise ConfigError(f"--pairs {args.pairs}: " + "; ".join(f"{f}: {m}" for f, m in error_lines(exc))) \
                from None
        problems = check_data("--pairs", data, "--pairs")
    elif cfg.eval.val_data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH, or eval.val_data in the run's "
                          "config")
    else:
        problems = [f"--run {args.run}: {p}" for p in check_data("eval.val_data", cfg.eval.val_data)]
    one_teacher(cfg, args.run, "--diagnostics")
    problems += [f"--run {args.run}: {p}" for side, mc in (("teacher", cfg.teacher), ("student", cfg.student))
                 for p in check_model(f"{side}.model", mc.model, mc.pretrained, f"{side}.pretrained")]
    if problems:
        raise ConfigError("; ".join(problems))
    run_checkpoint(args.run, args.checkpoint)


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
    problems = check_flags(args)
    wanted = bool(args.zeroshot or args.retrieval or args.benchmarks)
    if not wanted and not args.diagnostics:
        problems.append("nothing to evaluate: give --zeroshot, --retrieval, --benchmarks or --diagnostics")

    def attempt(check, *a):
        try:
            return check(*a)
        except ConfigError as exc:
            problems.append(str(exc))
            return None

    specs = attempt(collect, args) if wanted else []
    target = attempt(check_model_args, args) if wanted else None
    if args.diagnostics and args.run:  # without --run: said by check_flags
        attempt(_check_diagnostics, args)
    problems += _check_outputs(args)
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    return specs, target


def diagnostics(args: argparse.Namespace, device) -> dict:
    """Teacher-student diagnostics of a run's checkpoint on held-out pairs: every pair once, student in eval mode."""
    from clipkd.build.hooks import val_loss_hook
    from clipkd.build.models import build_distiller_from_config
    from clipkd.engine.checkpoint import load_student

    cfg = run_config(args.run)
    data = cfg.eval.val_data
    if args.pairs:
        fmt, path = split_item(args.pairs)
        data = DataConfig(format=fmt, train=path, batch_size=args.batch_size, workers=args.workers)
    if data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH or eval.val_data in the run")
    target = Target(cfg.teacher.model, cfg.teacher.pretrained, "teacher", f"--run {args.run} --diagnostics",
                    f"teacher.pretrained in {Path(args.run) / 'config.yaml'}")
    with model_download_errors(target):
        distiller = build_distiller_from_config(cfg)
    load_student(run_checkpoint(args.run, args.checkpoint), distiller.student)  # weights only: no training state
    distiller.teacher.to(device)
    distiller.student.to(device)
    return val_loss_hook(data, distiller, device)(distiller, 0)


def run_eval(args: argparse.Namespace) -> int:
    """Check every argument and path (one clear error, before any model is built), read the benchmarks' data
    indexes, then build the model and evaluate."""
    from clipkd.build.device import resolve_device
    from clipkd.eval.report import markdown_table
    from clipkd.eval.runner import write_result

    specs, target = _preflight(args)
    benches = read_benchmarks(specs)
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
        checkpoint = run_checkpoint(args.run, args.checkpoint)
        diag = {"dataset": "diagnostics", "model": "student-vs-teacher", "pretrained": args.run,
                "checkpoint": str(checkpoint), "task": "distillation_diagnostics",
                "metrics": diagnostics(args, device)}
        print(f"wrote {write_result(diag, args.out, short=Path(os.path.abspath(args.run)).name)}")
        print("diagnostics (student vs teacher): " + ", ".join(f"{k} {v:.4g}" for k, v in diag["metrics"].items()))
    if results:
        print(markdown_table(results))
    return 0
