"""`clipkd eval` command-line flags (imports nothing heavy: `clipkd --help` must start fast).

The flags that describe --zeroshot / --retrieval data default to None, so that `clipkd eval` can tell a flag
that was given from one that was not, and refuse one that applies to none of the requested benchmarks. Their
effective defaults (:data:`DEFAULTS`, the same as a benchmark spec's) are applied when the specs are built and
are said in --help.
"""

from __future__ import annotations

import argparse

DEFAULTS = {"label_key": "label", "image_key": "filepath", "caption_key": "title", "split": "test",
            "side": "student"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="open_clip model name (see `clipkd models`) or model-config JSON")
    src.add_argument("--run", help="a clipkd run directory (its config and latest checkpoint)")
    p.add_argument("--pretrained", help="with --model: pretrained tag (downloaded from the model hub) or a local "
                                        "checkpoint file (.safetensors, .pt, .bin)")
    p.add_argument("--side", choices=["student", "teacher"], default=None,
                   help=f"with --run: which model (default: {d['side']})")
    p.add_argument("--checkpoint", help="with --run: a checkpoint folder instead of the latest")
    p.add_argument("--benchmarks", help="YAML file with a list of benchmark specs (see docs/evaluation.md)")
    p.add_argument("--zeroshot", action="append", default=[], metavar="FORMAT:PATH",
                   help="folder:DIR, csv:FILE or webdataset:URLS (repeatable)")
    p.add_argument("--retrieval", action="append", default=[], metavar="FORMAT:PATH",
                   help="karpathy:FILE, csv:FILE or webdataset:URLS (repeatable)")
    p.add_argument("--classnames", help="zero-shot class names: a file (one per line) or 'imagenet' (default: the "
                                        "folder names, or the label numbers)")
    p.add_argument("--templates", help="zero-shot prompt templates: a file (one per line, '{}' = the class name), "
                                       "'imagenet' (80 CLIP templates) or 'imagenet-simple' (default: '{}', i.e. "
                                       "the bare class name)")
    p.add_argument("--root", help="image root for csv/karpathy paths (default: the file's folder)")
    p.add_argument("--image-key", default=None,
                   help=f"csv: the image-path column (default: {d['image_key']}); webdataset: the image member, "
                        "e.g. png (default: the first of jpg, jpeg, png, webp)")
    p.add_argument("--label-key", default=None,
                   help=f"zero-shot csv: the class-index column; zero-shot webdataset: the class-index member, "
                        f"e.g. cls (default: {d['label_key']})")
    p.add_argument("--caption-key", default=None,
                   help=f"retrieval csv: the caption column (default: {d['caption_key']}); retrieval webdataset: "
                        "the caption member, txt (one per line) or json (default: json, else txt)")
    p.add_argument("--split", default=None, help=f"retrieval karpathy: the split (default: {d['split']})")
    p.add_argument("--first-caption-only", action="store_true", default=None,
                   help="retrieval: official CLIP-KD protocol (each image's first caption only)")
    p.add_argument("--diagnostics", action="store_true",
                   help="with --run: teacher-student diagnostics on held-out pairs")
    p.add_argument("--pairs", metavar="FORMAT:PATH", help="held-out pairs for --diagnostics (default: eval.val_data)")
    p.add_argument("--batch-size", type=int, default=256, help="images (or pairs) per batch")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or a torch device (cuda:1)")
    p.add_argument("--out", default="eval_results", help="folder for the result JSONs")
    p.add_argument("--cache-dir", help="cache zero-shot classifiers here")
