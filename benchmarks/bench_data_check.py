"""`clipkd bench-data`'s stage figures against a hand timing of the same stages (issue: feed the GPU).

40 natural-image-like 1024x768 JPEGs in a CSV, a 224 px ViT-B-16 student view (no augmentation, full decode: the
stages are then plain calls), one thread. Side by side, interleaved rounds:
  - bench: :func:`clipkd.data.bench.measure_stream` over the CSV (the loader in this process), CPU ms per sample
    of ``decode``, ``preprocess`` and ``tokenize``;
  - hand: a plain loop timing ``open_image``, ``preprocess_val`` and the tokenizer on the same files with
    ``time.process_time``.
Prints both and their ratio per stage (agreement: within 10%).

    python benchmarks/bench_data_check.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from clipkd.data.bench import measure_stream  # noqa: E402
from clipkd.data.decode import open_image  # noqa: E402
from clipkd.data.sources import CsvSource  # noqa: E402
from clipkd.data.stream import DistillStream  # noqa: E402
from clipkd.data.synthetic import natural_jpeg  # noqa: E402
from clipkd.data.views import PairedViews  # noqa: E402
from clipkd.models import create_open_clip_encoder  # noqa: E402

COUNT = 40


def hand(folder: Path, student) -> dict:
    spent = {"decode": 0.0, "preprocess": 0.0, "tokenize": 0.0}
    for i in range(COUNT):
        t0 = time.process_time()
        image = open_image(folder / f"{i}.jpg")
        t1 = time.process_time()
        student.preprocess_val(image)
        t2 = time.process_time()
        student.tokenizer([f"a photo number {i}"])
        t3 = time.process_time()
        spent["decode"] += t1 - t0
        spent["preprocess"] += t2 - t1
        spent["tokenize"] += t3 - t2
    return {k: v / COUNT for k, v in spent.items()}


def bench(csv_path: Path, student) -> dict:
    views = PairedViews(student, student, None)
    stream = DistillStream(CsvSource(csv_path), views, 10, workers=0, augment=False, batches_per_split=COUNT // 10)
    return measure_stream(stream, 0, 0, COUNT // 10, torch.device("cpu")).stages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    student = create_open_clip_encoder("ViT-B-16")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with open(folder / "data.csv", "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["filepath", "title"])
            for i in range(COUNT):
                (folder / f"{i}.jpg").write_bytes(natural_jpeg(1024, 768, seed=i))
                out.writerow([f"{i}.jpg", f"a photo number {i}"])
        rows: dict = {"bench": [], "hand": []}
        for _ in range(args.rounds):
            rows["bench"].append(bench(folder / "data.csv", student))
            rows["hand"].append(hand(folder, student))
    print(f"{COUNT} JPEGs 1024x768, 224 px view, 1 thread, median of {args.rounds}; CPU ms per sample")
    for stage in ("decode", "preprocess", "tokenize"):
        b = statistics.median(r[stage] for r in rows["bench"])
        h = statistics.median(r[stage] for r in rows["hand"])
        print(f"  {stage:<11} bench-data {1000 * b:6.2f}   hand {1000 * h:6.2f}   RATIO bench/hand {b / h:.2f}")


if __name__ == "__main__":
    main()
