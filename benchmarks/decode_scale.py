"""Decode only what the view needs (issue: feed the GPU): the student's 224 px data path against a bare decode.

Writes natural-image-like JPEGs (1/f noise, :func:`clipkd.data.synthetic.natural_jpeg`) at 500x375 and 1024x768
(and 2048x1536) with a CSV, twice: smooth (about 26 KB at 500x375) and with a camera's grain (about 75 KB at
500x375, the issue's 77 KB photograph), then measures side by side in one process, one thread, interleaved rounds:
  - bare: a full-resolution decode of each file (Pillow, RGB), CPU seconds per image;
  - the data path as training runs it for a 224 px ViT-B-16 student without a teacher view (recipe baseline; with
    reinforced data the path adds the sidecar rows), CPU seconds per sample with every stage
    (:func:`clipkd.data.bench.measure_stream`, loader in this process), three ways: ``data.decode`` full and
    reduced with the views made on the host (PIL), and reduced with ``data.preprocess: device``, whose ``device``
    stage (resize, crop, normalise as tensor ops) runs here on the CPU; on a GPU machine it runs on the GPU, and
    the host's share is the rest (``host`` below);
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
GRAIN = {"smooth": 0.0, "photo-like": 10.0}  # natural_jpeg's grain: 8-bit levels of per-pixel noise
CASES = [(s, g) for g in GRAIN for s in SIZES]


def write_images(folder: Path, size: tuple[int, int], count: int, grain: float) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "data.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["filepath", "title"])
        for i in range(count):
            (folder / f"{i}.jpg").write_bytes(natural_jpeg(*size, seed=i, grain=grain))
            out.writerow([f"{i}.jpg", f"a photo number {i}"])
    return folder / "data.csv"


def bare_decode(folder: Path, count: int) -> float:
    start = time.process_time()
    for i in range(count):
        open_image(folder / f"{i}.jpg")
    return (time.process_time() - start) / count


MODES = {"decode=full": (False, False), "decode=reduced": (True, False), "reduced+device": (True, True)}


def data_path(csv_path: Path, student, count: int, reduced: bool, on_device: bool) -> dict:
    views = PairedViews(student, student, (0.9, 1.0), reduced_decode=reduced, on_device=on_device)
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
        csvs = {c: write_images(Path(tmp) / f"{c[0][0]}x{c[0][1]}-{c[1]}", c[0], args.images, GRAIN[c[1]])
                for c in CASES}
        rows: dict = {c: {k: [] for k in ("bare", *MODES)} for c in CASES}
        stages: dict = {}
        for _ in range(args.rounds):
            for s in CASES:
                rows[s]["bare"].append(bare_decode(csvs[s].parent, args.images))
                for mode, (reduced, on_device) in MODES.items():
                    got = data_path(csvs[s], student, args.images, reduced, on_device)
                    rows[s][mode].append(got["cpu"])
                    stages[(s, mode)] = got["stages"]
    print(f"torch {torch.__version__}, {args.images} images per size, {args.rounds} rounds (medians), 1 thread, "
          "CPU ms per image/sample")
    for s in CASES:
        (w, h), grain = s
        kb = len(natural_jpeg(w, h, grain=GRAIN[grain])) // 1024
        bare = statistics.median(rows[s]["bare"])
        print(f"\n== {w}x{h} {grain} ({kb} KB): bare full decode (PIL) {1000 * bare:.2f} ms")
        for mode in MODES:
            cpu = statistics.median(rows[s][mode])
            parts = ", ".join(f"{k} {1000 * v:.2f}" for k, v in stages[(s, mode)].items() if v > 0)
            print(f"  {mode:<15} {1000 * cpu:6.2f} ms per sample  RATIO path/bare {cpu / bare:.2f}  ({parts})")
            on_device = stages[(s, mode)].get("device", 0.0)
            if MODES[mode][1]:
                host = cpu - on_device
                print(f"  {'  host share':<15} {1000 * host:6.2f} ms per sample  RATIO host/bare {host / bare:.2f}  "
                      "(all but the device stage: what a GPU machine's cores do)")


if __name__ == "__main__":
    main()
