"""Exported encoders' speed (issue: export), ratios measured side by side in one run.

1. onnxruntime ÷ PyTorch eager latency of the student's image encoder at batch 1 (goal <= 1.0), and the same for
   every model, side and batch measured.
2. Student ÷ teacher latency at batch 1 and 32, image and text, in PyTorch and in onnxruntime, for
   - the demo pair: clipkd-tiny-vit (32 px) ← lit-effnetlite0-minilm at the demo teacher's resolution (64 px),
   - the paper's pair: ViT-T-16 ← ViT-B-16 (224 px; random weights: latency does not depend on them).

Each model is exported with ``clipkd.export.onnx_export.export_onnx`` (checked against PyTorch first); latency is
``clipkd.export.measure.latency_ms``: the median of ``--repeats`` timed calls after 2 warm-up calls, PyTorch and
onnxruntime with the same number of threads, measured alternately per model, side and batch.

    python benchmarks/export_latency.py                 # both pairs
    python benchmarks/export_latency.py --pairs demo    # the demo pair only (fast)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from _common import OtherLoad  # noqa: E402

PAIRS = {"demo": ("clipkd-tiny-vit", "lit-effnetlite0-minilm"), "paper": ("ViT-T-16", "ViT-B-16")}
BATCHES = (1, 32)


def measure(name: str, folder: Path, repeats: int) -> dict:
    """Latency per engine, side and batch of model ``name`` (random open_clip weights; the LiT teacher's pretrained
    towers with untrained heads)."""
    from clipkd.commands.demo import SIZES
    from clipkd.export.measure import encoder_latency
    from clipkd.export.onnx_encoder import OnnxEncoder
    from clipkd.export.onnx_export import IMAGE_FILE, TEXT_FILE, check_onnx, export_onnx
    from clipkd.models.composite import LIT_NAME, create_lit_encoder
    from clipkd.models.factory import create_encoder

    torch.manual_seed(0)
    if name == LIT_NAME:  # as `clipkd demo` builds it
        encoder = create_lit_encoder(image_size=SIZES["full"]["teacher_px"]).eval()
    else:
        encoder = create_encoder(name, None, role="model").eval()
    export_onnx(encoder, folder)
    check_onnx(encoder, folder)
    onnx = OnnxEncoder(folder / IMAGE_FILE, folder / TEXT_FILE, encoder)
    found: dict = {"pytorch": {"image": {}, "text": {}}, "onnxruntime": {"image": {}, "text": {}},
                   "px": encoder.image_size[0]}
    for b in BATCHES:  # engines alternate per batch size, so drift of the machine hits both alike
        for engine, model in (("pytorch", encoder), ("onnxruntime", onnx)):
            got = encoder_latency(model, [b], repeats=repeats, budget_s=60.0)
            for side in ("image", "text"):
                found[engine][side][b] = got[side][b]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["demo", "paper"])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    load = OtherLoad()
    print(f"threads {torch.get_num_threads()}; median of {args.repeats} calls after 2 warm-up calls")
    for pair in args.pairs:
        student, teacher = PAIRS[pair]
        with tempfile.TemporaryDirectory() as tmp:
            lat = {role: measure(name, Path(tmp) / role, args.repeats)
                   for role, name in (("student", student), ("teacher", teacher))}
        print(f"\n## {pair} pair: {student} ({lat['student']['px']} px) <- {teacher} ({lat['teacher']['px']} px)")
        print("| model | side | batch | PyTorch ms | onnxruntime ms | onnxruntime ÷ PyTorch |")
        print("|---|---|---|---|---|---|")
        for role, name in (("student", student), ("teacher", teacher)):
            for side in ("image", "text"):
                for b in BATCHES:
                    pt, ort_ = lat[role]["pytorch"][side][b], lat[role]["onnxruntime"][side][b]
                    print(f"| {role} {name} | {side} | {b} | {pt:.2f} | {ort_:.2f} | {ort_ / pt:.3f} |")
        print("\n| side | batch | student ÷ teacher, PyTorch | student ÷ teacher, onnxruntime |")
        print("|---|---|---|---|")
        for side in ("image", "text"):
            for b in BATCHES:
                r = [lat["student"][e][side][b] / lat["teacher"][e][side][b] for e in ("pytorch", "onnxruntime")]
                print(f"| {side} | {b} | {r[0]:.3f} | {r[1]:.3f} |")
        s = lat["student"]
        print(f"\nheadline ({pair}): student image encoder, batch 1: onnxruntime ÷ PyTorch eager = "
              f"{s['onnxruntime']['image'][1] / s['pytorch']['image'][1]:.3f} (goal <= 1.0)")
    print("\n" + load.report())


if __name__ == "__main__":
    main()
