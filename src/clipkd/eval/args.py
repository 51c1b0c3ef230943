"""`clipkd eval` command-line flags (imports nothing heavy: `clipkd --help` must start fast)."""

from __future__ import annotations

import argparse


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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or a torch device (cuda:1)")
    p.add_argument("--out", default="eval_results", help="folder for the result JSONs")
    p.add_argument("--cache-dir", help="cache zero-shot classifiers here")
