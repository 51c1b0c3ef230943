"""Does the data path keep a GPU busy? (issue: feed the GPU; run on a lent GPU machine, about 5 minutes.)

ViT-T-16 student from stored ViT-B-16 embeddings (reinforced data, random weights), bf16, photo-like 500x375 JPEGs
(:func:`clipkd.data.synthetic.natural_jpeg` with a camera's grain, about 75 KB) in webdataset shards, one GPU and
the machine's cores (``data.workers``: cores - 1), ``data.preprocess: device``. Steps, all through clipkd's CLI:
  1. shards, then ``clipkd reinforce`` (the teacher's embeddings of one view per sample);
  2. ``clipkd bench-data``: the data path alone (samples/s, CPU per sample and per stage, device stage included)
     and the student step alone on a batch already on the GPU (``measure_step``: forward, every term, backward);
  3. ``clipkd train`` for ``--steps`` optimizer steps: samples/s of the run (logged every 25 steps, the first
     window, with the loader's start, left out);
and prints RATIO run / step alone (target >= 0.9) and the run's MFU (the student's training FLOPs per sample,
counted by ``torch.utils.flop_counter`` on the device, times the run's samples/s, over the GPU's dense bf16 peak,
``--peak-tflops``: 989 for an H100 SXM). Host syncs per step: ``tests/test_cuda.py``.

    python benchmarks/gpu_feed.py --out gpu-feed [--samples 40000] [--batch 256] [--steps 150]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_shards(out: Path, samples: int, per_shard: int = 1000) -> str:
    """``samples`` photo-like JPEGs with captions in shards of ``per_shard``; the brace pattern of their URLs."""
    from clipkd.data.synthetic import natural_jpeg

    out.mkdir(parents=True, exist_ok=True)
    pool = [natural_jpeg(500, 375, seed=i, grain=10.0) for i in range(64)]  # 64 distinct files, reused
    shards = (samples + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(out / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per_shard, min(samples, (s + 1) * per_shard)):
                for ext, payload in (("jpg", pool[i % len(pool)]), ("txt", f"a photo of thing {i}".encode())):
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return str(out / f"{{00000..{shards - 1:05d}}}.tar")


def clipkd(*args: str) -> None:
    print("$ clipkd", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "clipkd", *args], check=True)


def student_flops(model: str, batch: int, device: str) -> float:
    """Training FLOPs per sample of the student (image and text towers, forward and backward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from clipkd.models import create_open_clip_encoder

    enc = create_open_clip_encoder(model).to(device).train()
    images = torch.randn(batch, 3, *enc.image_size, device=device)
    text = enc.tokenizer([f"a photo of thing {i}" for i in range(batch)]).to(device)
    with FlopCounterMode(display=False) as counter, torch.autocast(device, torch.bfloat16):
        (enc.encode_image(images).sum() + enc.encode_text(text).sum()).backward()
    return counter.get_total_flops() / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu-feed")
    ap.add_argument("--samples", type=int, default=40000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the plumbing (with tiny models)")
    ap.add_argument("--student", default="ViT-T-16")
    ap.add_argument("--teacher", default="ViT-B-16")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    urls = write_shards(out / "shards", args.samples)
    workers = max(1, (os.cpu_count() or 2) - 1)
    cfg = out / "run.yaml"
    cfg.write_text(json.dumps({
        "run_dir": str(out / "run"), "seed": 0, "device": args.device, "precision": "bf16",
        "teacher": {"model": args.teacher}, "student": {"model": args.student}, "distill": {"recipe": "clipkd"},
        "data": {"format": "webdataset", "train": urls, "num_samples": args.samples, "batch_size": args.batch,
                 "workers": workers, "shuffle_buffer": 1000, "crop_scale": [0.9, 1.0]},
        "optim": {"steps": args.steps, "warmup_steps": 10}, "logging": {"every_steps": 25},
        "checkpoint": {"every_steps": 100000}}))
    cache = out / "cache"
    clipkd("reinforce", "-c", str(cfg), "--views", "1", "--out", str(cache), "--batch-size", "256")
    stored = f"distill.teacher_cache={cache}"
    clipkd("bench-data", "-c", str(cfg), stored, "--batches", "40", "--json", str(out / "bench.json"))
    clipkd("train", "-c", str(cfg), stored)
    bench = json.loads((out / "bench.json").read_text())
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [m["train/samples_per_s"] for m in metrics if "train/samples_per_s" in m]
    rates = rates[1:] or rates  # the first window holds the loader's start
    run = statistics.median(rates)
    step = bench["step_rate"]
    flops = student_flops(args.student, 64, args.device)
    print(json.dumps({"bench_data": bench, "run_samples_per_s": rates}, indent=1))
    print(f"data path alone {bench['samples_per_s']:.0f} samples/s, {1000 * bench['cpu_s_per_sample']:.2f} CPU ms "
          f"per sample ({workers} workers)")
    if step:
        print(f"student step alone {step:.0f} samples/s; the run {run:.0f} samples/s: RATIO run/step {run / step:.2f}")
    print(f"student training {flops / 1e9:.1f} GFLOP per sample: MFU {run * flops / (args.peak_tflops * 1e12):.1%}")


if __name__ == "__main__":
    main()
