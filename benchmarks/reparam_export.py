"""MobileCLIP's image tower as it is deployed (issue 26): the ONNX export fuses the MobileOne/FastViT training
branches (``clipkd.export.onnx_export.inference_form``, timm's ``reparameterize_model`` on a copy). Measured side by
side on this machine: PyTorch with the branches, PyTorch fused, and onnxruntime on the exported (fused) graph, each
the median of ``--repeats`` calls after two warm-up calls, same thread count; plus the largest embedding difference
the fusion makes. Prints the ratios.

    python benchmarks/reparam_export.py --model MobileCLIP2-S0 --batch 2 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="MobileCLIP2-S0")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from clipkd.export.onnx_export import IMAGE_FILE, export_onnx, inference_form, run_session, session
    from clipkd.models.open_clip_adapter import create_open_clip_encoder

    torch.manual_seed(0)
    student = create_open_clip_encoder(args.model).eval()
    fused = inference_form(student)
    images = torch.randn(args.batch, 3, *student.image_size)
    with torch.no_grad():
        diff = float((fused.encode_image(images) - student.encode_image(images)).abs().max())
        branches = median_ms(lambda: student.encode_image(images), args.repeats)
        merged = median_ms(lambda: fused.encode_image(images), args.repeats)
    with tempfile.TemporaryDirectory() as out:
        export_onnx(student, Path(out))
        sess = session(Path(out) / IMAGE_FILE, args.threads)
        onnx = median_ms(lambda: run_session(sess, {"image": images}), args.repeats)
    print(f"{args.model} image tower, batch {args.batch}, {args.threads} threads: PyTorch with branches "
          f"{branches:.1f} ms, fused {merged:.1f} ms, onnxruntime (fused graph) {onnx:.1f} ms")
    print(f"RATIO fused/branches {merged / branches:.2f}  onnx/branches {onnx / branches:.2f}  "
          f"max |embedding difference| {diff:.2e}")


if __name__ == "__main__":
    main()
