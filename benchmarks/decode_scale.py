"""Decode only what the view needs (issue: feed the GPU): the student's 224 px data path against a bare decode.

Writes natural-image-like JPEGs (1/f noise, :func:`clipkd.data.synthetic.natural_jpeg`) at 500x375 and 1024x768
(and 2048x1536) with a CSV, then measures side by side in one process, one thread, interleaved rounds:
  - bare: a full-resolution decode of each file (Pillow, RGB), CPU seconds per image;
  - the data path as training runs it for a 224 px ViT-B-16 student without a teacher view (recipe baseline; with
    reinforced data the path adds the sidecar rows), ``data.decode`` full and reduced, CPU seconds per sample with
    every stage (:func:`clipkd.data.bench.measure_stream`, loader in this process);
and prints CPU per sample / bare decode (targets: <= 1.5 at 500x375, <= 0.8 at 1024x768) and the stages.

    python benchmarks/decode_scale.py [--images 40] [--rounds 3]
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

SIZES = [(500, 375), (1024, 768), (2048, 1536)]


def write_images(folder: Path, size: tuple[int, int], count: int) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "data.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["filepath", "title"])
        for i in range(count):
            (folder / f"{i}.jpg").write_bytes(natural_jpeg(*size, seed=i))
            out.writerow([f"{i}.jpg", f"a photo number {i}"])
    return folder / "data.csv"


def bare_decode(folder: Path, count: int) -> float:
    start = time.process_time()
    for i in range(count):
        open_image(folder / f"{i}.jpg")
    return (time.process_time() - start) / count


def data_path(csv_path: Path, student, count: int, reduced: bool) -> dict:
    views = PairedViews(student, student, (0.9, 1.0), reduced_decode=reduced)
    batch = 10
    stream = DistillStream(CsvSource(csv_path), views, batch, workers=0, batches_per_split=count // batch)
    figures = measure_stream(stream, 0, 0, count // batch, torch.device("cpu"))
    return {"cpu": figures.cpu_s_per_sample, "stages": figures.stages}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    student = create_open_clip_encoder("ViT-B-16")  # 224 px; random weights (only its preprocessing is used)
    with tempfile.TemporaryDirectory() as tmp:
        csvs = {s: write_images(Path(tmp) / f"{s[0]}x{s[1]}", s, args.images) for s in SIZES}
        rows: dict = {s: {"bare": [], "full": [], "reduced": []} for s in SIZES}
        stages: dict = {}
        for _ in range(args.rounds):
            for s in SIZES:
                rows[s]["bare"].append(bare_decode(csvs[s].parent, args.images))
                for mode in ("full", "reduced"):
                    got = data_path(csvs[s], student, args.images, mode == "reduced")
                    rows[s][mode].append(got["cpu"])
                    stages[(s, mode)] = got["stages"]
    print(f"torch {torch.__version__}, {args.images} images per size, {args.rounds} rounds (medians), 1 thread, "
          "CPU ms per image/sample")
    for s in SIZES:
        bare = statistics.median(rows[s]["bare"])
        print(f"\n== {s[0]}x{s[1]} ({len(natural_jpeg(*s)) // 1024} KB): bare full decode {1000 * bare:.2f} ms")
        for mode in ("full", "reduced"):
            cpu = statistics.median(rows[s][mode])
            parts = ", ".join(f"{k} {1000 * v:.2f}" for k, v in stages[(s, mode)].items() if v > 0)
            print(f"  data.decode={mode:<8} {1000 * cpu:6.2f} ms per sample  RATIO path/bare {cpu / bare:.2f}  "
                  f"({parts})")


if __name__ == "__main__":
    main()
