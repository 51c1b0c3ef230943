"""`clipkd` command line: argv -> explicit arguments -> library calls.

Building the parser imports nothing heavy (no torch, open_clip, ...): `--help`, `clipkd losses`, argument errors
and config errors answer at once; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
from typing import Callable, Optional, Sequence


def _command(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """``clipkd.commands.<module>.<function>(args)``, imported when the command runs, not when the parser is built."""
    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"clipkd.commands.{module}"), function)(args)

    return run


def _cmd_smoke(args: argparse.Namespace) -> int:
    from clipkd.commands.smoke import run_smoke

    run_smoke(args.recipe, args.student, args.teacher, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clipkd.offline import set_offline

    set_offline()  # before anything imports a hub client
    from clipkd.commands.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, source=Path(args.source) if args.source else None, seed=args.seed)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after every flag that has a default worth showing, also after flags without a help text;
    none where there is nothing to show (``None``, a switch's ``False``, an empty list) or where the help text
    already says its default."""

    @staticmethod
    def _shows_default(action: argparse.Action) -> bool:
        d = action.default
        if d is argparse.SUPPRESS or d is None or d is False or (isinstance(d, (list, tuple)) and not d):
            return False
        return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)

    def _get_help_string(self, action: argparse.Action) -> str:
        if self._shows_default(action) and "(default:" not in (action.help or ""):
            return super()._get_help_string(action)
        return action.help or ""

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and self._shows_default(action):  # argparse prints no help line at all for these
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def build_parser() -> argparse.ArgumentParser:
    from clipkd import __version__  # a plain string: importing clipkd loads nothing else

    parser = argparse.ArgumentParser(prog="clipkd", description="Distil a large CLIP teacher into a small student.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"clipkd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, description=summary, formatter_class=_HelpFormatter)

    p = command("losses", "print every loss term's equation and every recipe's weights")
    p.set_defaults(fn=_command("catalog", "run_losses"))
    p = command("models", "list model names (open_clip built-ins and clipkd's tiny configs)")
    p.add_argument("filter", nargs="?", default=None, help="show only names containing this (case ignored)")
    p.set_defaults(fn=_command("catalog", "run_models"))
    p = command("train", "distil a student on image-text data (YAML config + key=value overrides)")
    p.add_argument("--config", "-c", default=None, help="run YAML (see configs/)")
    p.add_argument("--resume", default=None, help="a checkpoint folder, or 'latest' in the run directory")
    p.add_argument("--overwrite", action="store_true",
                   help="run_dir holds another run: move it aside (to <run_dir>.replaced-<time>) and start anew")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although keys that define the run changed (breaks exact resume; logged)")
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="processes on this machine (starts torchrun; for several nodes run torchrun yourself)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=5e-4 data.batch_size=64")
    p.set_defaults(fn=_command("train", "run_train"))
    p = command("eval", "zero-shot / retrieval benchmarks and distillation diagnostics")
    from clipkd.commands.eval.args import add_arguments  # flags only: imports nothing heavy

    add_arguments(p)
    p.set_defaults(fn=_command("eval.run", "run_eval"))
    p = command("reinforce", "run the teacher once over the training data: K augmented views per sample, the "
                "teacher's embeddings, stored in sidecar shards beside the data (augmentation replay)")
    p.add_argument("--config", "-c", default=None, help="run YAML (its teacher or teachers, data and seed are used)")
    p.add_argument("--views", type=_positive_int, default=None, help="augmented views K per sample (1 without "
                   "data.crop_scale); required to build")
    p.add_argument("--out", required=True, help="folder for the sidecars and manifest.json (re-run to resume; train "
                   "from it with distill.teacher_cache=OUT)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="embedding storage type")
    p.add_argument("--batch-size", type=_positive_int, default=64,
                   help="records per batch; the teacher sees as many images (views) per forward pass")
    p.add_argument("--rows-per-shard", type=_positive_int, default=10000, help="CSV rows per sidecar")
    p.add_argument("--nproc", type=_positive_int, default=1,
                   help="processes on this machine (starts torchrun; for several nodes run torchrun yourself)")
    p.add_argument("--verify", action="store_true", help="build nothing: read every sidecar in --out and compare "
                   "its size, header and SHA-256 with the build's manifest (exit 1 on any difference)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the run config, e.g. data.crop_scale=[0.5,1]")
    p.set_defaults(fn=_command("reinforce", "run_reinforce"))
    p = command("export", "a run's student as an open_clip hub folder and/or ONNX encoders (+ preprocessing and "
                "tokenizer files), each checked against PyTorch")
    from clipkd.commands.export import add_arguments as export_arguments  # flags only: imports nothing heavy

    export_arguments(p)
    p.set_defaults(fn=_command("export", "run_export"))
    p = command("card", "a model card of a run: parameters, FLOPs, latency (PyTorch and onnxruntime), file sizes, "
                "evaluation results, student beside teacher")
    from clipkd.commands.card import add_arguments as card_arguments

    card_arguments(p)
    p.set_defaults(fn=_command("card", "run_card"))
    p = command("ablate", "a study: every listed recipe, variant and sweep value x seed on one base run, with the "
                "same budget; finished runs are kept; ablation.md/.json, share-of-gap chart beside the paper's, curves")
    from clipkd.commands.ablate import add_arguments as ablate_arguments

    ablate_arguments(p)
    p.set_defaults(fn=_command("ablate", "run_ablate"))
    p = command("report", "result JSONs -> markdown table + bar chart")
    p.add_argument("results", nargs="+", help="result JSON files (clip_benchmark layout)")
    p.add_argument("--out", default=".", help="folder for report.md and report.png")
    p.set_defaults(fn=_command("report", "run_report"))
    p = command("demo", "the whole story offline: real teacher, Fashion-MNIST, baseline vs clipkd")
    p.add_argument("--out", default="runs/demo", help="output folder (data, teacher and runs are cached here)")
    p.add_argument("--quick", action="store_true", help="reduced version (< 3 minutes)")
    p.add_argument("--source", help="folder with the Fashion-MNIST idx files (default: Debian's package)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(fn=_cmd_demo)
    p = command("bench-data", "the training data path as `clipkd train` runs it, without the model step: samples/s, "
                "CPU per sample and per stage, cores one GPU needs")
    from clipkd.commands.bench_data import add_arguments as bench_arguments

    bench_arguments(p)
    p.set_defaults(fn=_command("bench_data", "run_bench_data"))
    p = command("smoke", "a one-minute distillation run on drawn shapes with tiny models")
    p.add_argument("--recipe", default="clipkd", help="loss recipe (see `clipkd losses`)")
    p.add_argument("--student", default="clipkd-tiny-vit", help="student model (see `clipkd models`)")
    p.add_argument("--teacher", default="clipkd-tiny-teacher", help="teacher model (see `clipkd models`)")
    p.add_argument("--steps", type=int, default=30, help="distillation steps")
    p.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(fn=_cmd_smoke)
    return parser


def _log_to_console() -> None:
    """clipkd's own INFO messages (GD weight, resume, global batch) on stderr; other libraries at WARNING."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("clipkd").setLevel(logging.INFO)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``clipkd`` console script."""
    from clipkd.errors import USER_ERRORS
    from clipkd.runtime.threads import set_thread_environment

    set_thread_environment()  # before torch loads: OpenMP threads sleep instead of spinning while they wait
    args = build_parser().parse_args(argv)
    _log_to_console()
    try:
        return args.fn(args)
    except USER_ERRORS as exc:
        print(f"clipkd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C where no command stops on it by itself (e.g. while torch is imported)
        print("clipkd: interrupted", file=sys.stderr)
        return 130
