"""Data pipeline throughput vs. training throughput (issue: training engine).

Writes tiny webdataset shards (64 px JPEG + caption), then measures side by side:
  - the data pipeline alone: DistillStream + DataLoader with N workers, building both sides' views
    (shared crop, each side's resize/normalise, each side's tokenizer), samples/s;
  - the tiny student's distillation training (clipkd recipe, batch 128, Trainer-equivalent step), samples/s.
Target: pipeline samples/s >= 3x training samples/s with 2 workers.

``--reinforced K``: the same with reinforced data (issue: reinforced data). `clipkd reinforce` first stores K views
per sample (random tiny teacher, bf16); the pipeline then replays each sample's stored view for the student and
reads its stored teacher embeddings (fingerprint check included), and the training step has no teacher forward.
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

from clipkd.data.sources import ShardSource  # noqa: E402
from clipkd.data.stream import DistillStream, make_loader  # noqa: E402
from clipkd.data.synthetic import write_shards  # noqa: E402
from clipkd.data.views import PairedViews  # noqa: E402
from clipkd.distill import build_distiller  # noqa: E402
from clipkd.engine.optim import create_optimizer  # noqa: E402
from clipkd.models import create_open_clip_encoder  # noqa: E402


def pipeline_rate(shards, views, batch: int, workers: int, batches: int, stored=None) -> float:
    stream = DistillStream(ShardSource(shards, shuffle_buffer=256), views, batch, workers=workers,
                           batches_per_split=max(1, batches // max(workers, 1)) + 1, stored=stored)
    it = iter(make_loader(stream, workers))
    next(it)  # worker start-up is not throughput
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        b, _ = next(it)
        n += len(b)
    return n / (time.perf_counter() - t0)


def reinforced(tmp: str, shards: list, views: int):
    """`clipkd reinforce` over the shards (the tiny teacher, random weights, bf16); the stored views training reads."""
    from clipkd.config import load_config
    from clipkd.build.data import stored_views
    from clipkd.build.reinforce import run_build
    from clipkd.reinforce.settings import BuildOptions

    items = [f"run_dir={tmp}/run", "teacher.model=clipkd-tiny-teacher", "student.model=clipkd-tiny-vit",
             "data.format=webdataset", f"data.train={shards}", "optim.steps=1", "logging.progress=false",
             f"distill.teacher_cache={tmp}/reinforced"]
    cfg = load_config(None, items)
    built = run_build(cfg, BuildOptions(out=Path(tmp) / "reinforced", views=views))
    files = Path(tmp, "reinforced").glob("sidecar-*.safetensors")
    size = sum(f.stat().st_size for f in files)
    print(f"reinforced data: {built.records} samples x {views} views in {built.seconds:.1f} s, "
          f"{size / (built.records * views):.0f} bytes per sample-view (bf16)")
    return stored_views(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reinforced", type=int, default=0, metavar="K",
                    help="build reinforced data with K views first and train from it (0: online teacher)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="clipkd-bench-")
    shards = write_shards(tmp, args.samples, per_shard=256, size=64)
    torch.manual_seed(0)
    weights = {"task": 1, "crd": 1, "icl": 1, "fd": 2000}
    stored = reinforced(tmp, shards, args.reinforced) if args.reinforced else None
    teacher = create_open_clip_encoder("clipkd-tiny-teacher") if stored is None else None
    student = create_open_clip_encoder("clipkd-tiny-vit")
    d = build_distiller(student, teacher, weights, stored_teacher_dims=stored.embed_dims if stored else None)
    views = PairedViews(*d.view_encoders)
    opt = create_optimizer(d.student, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    batch, _ = next(iter(make_loader(DistillStream(ShardSource(shards), views, args.batch, stored=stored), 0)))

    def train_rate() -> float:
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            out = d(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
        return args.train_steps * args.batch / (time.perf_counter() - t0)

    train_rate()  # warm-up
    data, train = [], []
    for _ in range(args.repeats):
        data.append(pipeline_rate(shards, views, args.batch, args.workers, args.batches, stored))
        train.append(train_rate())
    dm, tm = statistics.median(data), statistics.median(train)
    source = f"reinforced data, K={args.reinforced} (no teacher forward)" if stored else "online teacher"
    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; batch {args.batch}; 64 px JPEG shards; {source}; "
          f"{args.repeats} interleaved repeats (median)")
    print(f"  data pipeline, {args.workers} workers: {dm:8.1f} samples/s   (runs: {', '.join(f'{x:.0f}' for x in data)})")
    print(f"  distillation training:       {tm:8.1f} samples/s   (runs: {', '.join(f'{x:.0f}' for x in train)})")
    ratio = dm / tm
    print(f"ratio pipeline / training = {ratio:.2f}  (target >= 3): {'PASS' if ratio >= 3 else 'FAIL'}")


if __name__ == "__main__":
    main()
