"""`clipkd card RUN_DIR`: measure the student and its teacher(s) and write ``card.md`` + ``card.json``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from clipkd.errors import ConfigError

CARD_JSON, CARD_MD = "card.json", "card.md"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `clipkd card` (nothing heavy imported)."""
    p.add_argument("source", metavar="RUN_DIR|CHECKPOINT",
                   help="a run folder (its newest intact checkpoint), a checkpoint folder or its student.safetensors")
    p.add_argument("--out", default=None, help="folder for card.md and card.json (default: RUN_DIR/card)")
    p.add_argument("--results", nargs="*", default=[], metavar="JSON",
                   help="result files of `clipkd eval --out` to show besides the run's own eval/* metrics")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="batch sizes timed")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per latency figure (median)")
    p.add_argument("--no-teacher", action="store_true", help="measure the student alone")
    p.add_argument("--onnx", default=None, metavar="DIR", help="the student's ONNX folder from `clipkd export` (checked "
                   "against the checkpoint), used instead of exporting it again")


def _read_results(paths: Sequence[str]) -> list[dict]:
    from clipkd.files import read_json

    found = []
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"--results: file not found: {path}")
        data = read_json(Path(path))
        if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
            raise ConfigError(f"--results {path}: not a `clipkd eval` result (no 'metrics' mapping)")
        found.append(data)
    return found


def _check(args: argparse.Namespace) -> None:
    if any(b < 1 for b in args.batch_sizes):
        raise ConfigError(f"--batch-sizes: each must be >= 1, got {args.batch_sizes}")
    if args.repeats < 3:
        raise ConfigError(f"--repeats: must be >= 3 (a median of fewer is noise), got {args.repeats}")
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the card measures onnxruntime too and needs {', '.join(missing)}: "
                          "pip install 'clipkd[export]'")


def write_card(source, out: Path, results: Sequence[dict] = (), batches: Sequence[int] = (1, 32),
               with_teacher: bool = True, student_onnx: Optional[Path] = None, **timing) -> dict[str, Any]:
    """Measure ``source``'s student (and teachers) and write ``out/card.json`` and ``out/card.md``; the card.
    ``student_onnx``: the student's `clipkd export` ONNX folder, used instead of exporting it again."""
    from clipkd.commands.source import load_student, load_teachers
    from clipkd.export.card import build_card
    from clipkd.export.card_render import markdown
    from clipkd.files import write_atomic, write_json

    models = [("student", load_student(source))] + (load_teachers(source) if with_teacher else [])
    card = build_card(source, models, results, batches, student_onnx,
                      run_metrics=run_evaluation(source.run_dir, source.step), **timing)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CARD_JSON, card)
    write_atomic(out / CARD_MD, markdown(card).encode("utf-8"))
    return card


def run_card(args: argparse.Namespace) -> int:
    """`clipkd card`: checks, then measures and writes; prints the card."""
    from clipkd.commands.source import resolve_source

    _check(args)
    source = resolve_source(args.source)
    results = _read_results(args.results)
    folder = Path(args.out) if args.out else (source.run_dir or source.checkpoint) / "card"
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out: {folder} is a file, not a folder")
    onnx = Path(args.onnx) if args.onnx else None
    if onnx is not None and not (onnx / "image_encoder.onnx").is_file():
        raise ConfigError(f"--onnx: {onnx} holds no image_encoder.onnx (a `clipkd export --format onnx` folder)")
    write_card(source, folder, results, args.batch_sizes, not args.no_teacher, onnx, repeats=args.repeats)
    print((folder / CARD_MD).read_text())
    print(f"wrote {folder / CARD_MD} and {folder / CARD_JSON}")
    return 0


def run_evaluation(run_dir: Optional[Path], step: int) -> dict[str, float]:
    """The run's last logged ``eval/*`` metrics at or before ``step`` (benchmarks and held-out loss)."""
    from clipkd.engine.logger import read_metrics

    if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
        return {}
    found: dict[str, float] = {}
    for row in read_metrics(run_dir, "eval"):
        if step < 0 or row["step"] <= step:
            found.update({k: v for k, v in row.items() if k.startswith("eval/")})
    return found
