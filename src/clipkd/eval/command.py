"""`clipkd eval`: benchmarks (and distillation diagnostics) for an open_clip model, checkpoint or clipkd run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

import yaml

from clipkd.config import BenchmarkSpec, DataConfig, TrainConfig
from clipkd.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="open_clip model name or model-config JSON")
    src.add_argument("--run", help="a clipkd run directory (its config and latest checkpoint)")
    p.add_argument("--pretrained", help="with --model: pretrained tag or checkpoint path")
    p.add_argument("--side", choices=["student", "teacher"], default="student", help="with --run: which model")
    p.add_argument("--checkpoint", help="with --run: a checkpoint folder instead of the latest")
    p.add_argument("--benchmarks", help="YAML file with a list of benchmark specs (see README)")
    p.add_argument("--zeroshot", action="append", default=[], metavar="FORMAT:PATH",
                   help="folder:DIR, csv:FILE or webdataset:URLS (repeatable)")
    p.add_argument("--retrieval", action="append", default=[], metavar="FORMAT:PATH",
                   help="karpathy:FILE, csv:FILE or webdataset:URLS (repeatable)")
    p.add_argument("--classnames", help="file (one per line) or 'imagenet'")
    p.add_argument("--templates", help="file (one per line, '{}' = class), 'imagenet' or 'imagenet-simple'")
    p.add_argument("--root", help="image root for csv/karpathy paths")
    p.add_argument("--label-key", default="label")
    p.add_argument("--split", default="test", help="karpathy split")
    p.add_argument("--first-caption-only", action="store_true", help="official CLIP-KD retrieval protocol")
    p.add_argument("--diagnostics", action="store_true", help="with --run: teacher-student diagnostics on held-out pairs")
    p.add_argument("--pairs", metavar="FORMAT:PATH", help="held-out pairs for --diagnostics (default: eval.val_data)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="eval_results", help="folder for the result JSONs")
    p.add_argument("--cache-dir", help="cache zero-shot classifiers here")


def _split(item: str) -> tuple[str, str]:
    if ":" not in item:
        raise ConfigError(f"'{item}': expected FORMAT:PATH")
    fmt, path = item.split(":", 1)
    return fmt, path


def collect_specs(args: argparse.Namespace) -> list[BenchmarkSpec]:
    """Benchmarks from the YAML file and the shorthand flags, validated."""
    raw: list[dict] = []
    if args.benchmarks:
        loaded = yaml.safe_load(Path(args.benchmarks).read_text())
        raw += loaded.get("benchmarks", []) if isinstance(loaded, dict) else list(loaded or [])
    common = {"root": args.root, "batch_size": args.batch_size, "workers": args.workers}
    for item in args.zeroshot:
        fmt, path = _split(item)
        raw.append({"name": Path(path.rstrip("/")).stem, "task": "zeroshot", "format": fmt, "path": path,
                    "classnames": args.classnames, "templates": args.templates, "label_key": args.label_key, **common})
    for item in args.retrieval:
        fmt, path = _split(item)
        raw.append({"name": Path(path).stem, "task": "retrieval", "format": fmt, "path": path, "split": args.split,
                    "first_caption_only": args.first_caption_only, **common})
    try:
        return [BenchmarkSpec.model_validate(r) for r in raw]
    except Exception as exc:  # pydantic ValidationError: one clear message
        raise ConfigError(f"invalid benchmark: {exc}") from None


def _run_config(run: str) -> TrainConfig:
    from clipkd.config import load_config

    return load_config(Path(run) / "config.yaml")


def _checkpoint(run: str, explicit: Optional[str]) -> Path:
    from clipkd.engine.checkpoint import resolve_resume

    path = resolve_resume(explicit or "latest", run)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in {run}")
    return path


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
    """Teacher-student diagnostics of a run's checkpoint on held-out pairs."""
    from clipkd.engine.builders import build_distiller_from_config, build_stream
    from clipkd.engine.checkpoint import load_checkpoint
    from clipkd.engine.hooks import ValLossHook

    cfg = _run_config(args.run)
    data = cfg.eval.val_data
    if args.pairs:
        fmt, path = _split(args.pairs)
        data = DataConfig(format=fmt, train=path, batch_size=args.batch_size, workers=args.workers)
    if data is None:
        raise ConfigError("--diagnostics needs held-out pairs: --pairs FORMAT:PATH or eval.val_data in the run")
    distiller = build_distiller_from_config(cfg)
    load_checkpoint(_checkpoint(args.run, args.checkpoint), distiller.student)
    distiller.teacher.to(device)
    distiller.student.to(device)
    hook = ValLossHook(build_stream(data, distiller, cfg.seed, augment=False), 10**9, device)
    return hook(distiller, 0)


def run_eval(args: argparse.Namespace) -> int:
    from clipkd.engine.builders import resolve_device
    from clipkd.eval.report import markdown_table
    from clipkd.eval.runner import Benchmark, write_result

    specs = collect_specs(args)
    if not specs and not args.diagnostics:
        raise ConfigError("nothing to evaluate: give --zeroshot, --retrieval, --benchmarks or --diagnostics")
    if (args.diagnostics or args.checkpoint or args.side != "student") and not args.run:
        raise ConfigError("--diagnostics, --checkpoint and --side need --run")
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
