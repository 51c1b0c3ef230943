"""Reinforced data and training speed: four ratios, each measured side by side in one run (issue: reinforce).

Every part interleaves its variants (the order rotates every repeat) after a warm-up and reports medians; the
CPU time other processes used is printed per part and for the whole run (``_common.OtherLoad``).

1. ``build``: ``clipkd reinforce`` throughput (:func:`clipkd.build.reinforce.run_build`, each build into a fresh
   temporary folder, ``--dtype`` bf16 and fp32) / a bare teacher loop over the same records: read the tar
   shards with :mod:`tarfile`, decode each JPEG, draw K random-resized crops (torchvision's
   ``RandomResizedCrop.get_params``, the same scale and ratio), the teacher's ``preprocess_val``, then the
   teacher's image and text forward (no grad) in batches of the same number of records (on a CPU the images in
   passes of that many, as the build does since issue 27), outputs discarded.
   The headline uses the samples/s ``clipkd reinforce`` reports (its record loop: reading, fingerprints, crops,
   forward, sidecar writes and receipts; not the teacher's construction nor the manifest); the whole
   ``run_build`` call (plus teacher construction, folder checks, shard counting, manifest) is printed too.
   The default teacher is the tiny one at 48 px, where per-record work weighs most; ``--teacher ViT-B-16``
   (with fewer ``--samples``) shows a real teacher. Target: build / bare >= 0.9.
2. ``bytes``: sidecar bytes / (records x K) of the folders built in part 1, for bf16 and fp32, and how much of
   it is embeddings, crop boxes, fingerprints and the rest (usable flags, scales, safetensors header).
3. ``train``: clipkd's ``baseline`` recipe (:class:`clipkd.engine.trainer.Trainer`, no teacher) / open_clip's
   own loop (``open_clip_train.train.train_one_epoch``), the same student, the same CSV of JPEG files (read by
   clipkd's CSV source and by open_clip_train's ``CsvDataset``), the same batch size, loader workers, fp32,
   threads, AdamW settings, grad clipping (1.0) and logging interval, samples/s.
   Why the Python API and not ``python -m open_clip_train.main``: ``main``'s logged samples/s is the time of
   the one step before each log line (``batch_time_m.val``), to be parsed from its log, and a run of ``main``
   also creates its log folder and writes params and a checkpoint at the end of the epoch. Through the API
   both loops are timed by the same clock at the same point: the moment a step starts with its batch in hand
   (clipkd: ``Trainer.train_step`` is called; open_clip: its scheduler is called, right after the loader
   yields). samples/s = batch x intervals / time from the start of step ``--skip-steps`` + 1 to the start of
   the last step: every interval holds one whole step (forward, backward, clip, AdamW, logging) and the wait
   for the next batch, nothing of start-up (models, loader workers), evaluation (none configured) or
   checkpoint writing (clipkd's final checkpoint is switched off here; ``train_one_epoch`` writes none).
   Both run in this process, one epoch each (data = steps x batch records, so no loader restarts), with
   ``OMP_WAIT_POLICY=PASSIVE`` as the ``clipkd`` command sets it.
   Needs pandas (open_clip_train's CSV reader imports it; clipkd does not install it).
   ``--profile-train`` explains the ratio: each loop's mean step broken into the same parts (waiting for the
   batch, forward, loss, backward, grad norm + clip, AdamW + schedule, rest; timing wrappers on the methods
   the loops call, a few microseconds each), both steps on one pre-made batch without a loader, and the CPU
   time per sample of each data pipeline alone (on a machine whose cores also run the step, a pipeline's CPU
   time is taken from the step). Target: clipkd / open_clip >= 1.0.
4. ``online``: the paper's pair, ViT-B-16 teacher -> ViT-T-16 student at 224 px, random weights, pre-made
   tensors (no data loading): a ``clipkd``-recipe step with the online teacher (GlobalBatchStep, clip 1.0,
   AdamW, logit-scale clamp, as the Trainer does) / a ``baseline`` step (the same, student only, same batch),
   the same ``clipkd`` step as training from reinforced data runs it (the teacher's embeddings in the batch,
   stored as bf16; no teacher) / the baseline step (target <= 1.05), and the teacher forward alone / the
   baseline step. The variants are entries of :data:`STEP_VARIANTS` (name -> factory of a step function).

Usage (all parts; see --help for the sizes):
    python benchmarks/reinforce_speed.py [--parts build,bytes,train,online] [--threads 2] [--repeats 5]
        [--profile-train]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import platform
import shutil
import statistics
import struct
import sys
import tarfile
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what the `clipkd` command sets before torch loads

import torch  # noqa: E402

from _common import OtherLoad, _loadavg  # noqa: E402

PARTS = ("build", "bytes", "train", "online")
BUILD_TARGET, TRAIN_TARGET = 0.9, 1.0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def rotated(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def runs(xs: list[float], fmt: str = "{:.0f}") -> str:
    return ", ".join(fmt.format(x) for x in xs)


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------
def jpeg_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image_csv(folder: Path, count: int, size: int) -> Path:
    """``count`` drawn-shape JPEGs and a CSV (filepath, title) with ABSOLUTE paths: open_clip_train's CsvDataset
    opens the paths as written, clipkd resolves relative ones against the CSV's folder."""
    import csv

    from clipkd.data.synthetic import shape_samples

    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "train.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for i, s in enumerate(shape_samples(count, size=size, seed=1)):
            img = (folder / "images" / f"{i:06d}.jpg").absolute()
            img.write_bytes(jpeg_bytes(s.image))
            w.writerow([str(img), s.caption])
    return path


def tar_records(paths: list[str]) -> Iterator[dict[str, bytes]]:
    """The members of each webdataset sample (``{ext: bytes}``), read with tarfile, in file order."""
    for path in paths:
        with tarfile.open(path) as tar:
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = Path(member.name).name.partition(".")
                if stem != key and parts:
                    yield parts
                    parts = {}
                key = stem
                parts[ext] = tar.extractfile(member).read()
            if parts:
                yield parts


# ------------------------------------------------------------------------------------------------------------
# part 1 + 2: reinforce build vs. a bare teacher loop; bytes per sample-view
# ------------------------------------------------------------------------------------------------------------
def build_config(args: argparse.Namespace, shards: list[str]):
    from clipkd.config import validate_config

    return validate_config({
        "run_dir": "unused", "seed": 0, "device": "cpu", "threads": args.threads,
        "teacher": {"model": args.teacher, "pretrained": None}, "student": {"model": args.student},
        "data": {"format": "webdataset", "train": shards, "crop_scale": list(args.crop_scale)},
        "optim": {"steps": 1}, "logging": {"progress": False, "tensorboard": False},
    })


def bare_teacher_loop(teacher, shards: list[str], views: int, batch_records: int, scale) -> int:
    """Read, decode, K random-resized crops, ``preprocess_val``, teacher image + text forward; outputs dropped."""
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    ratio = [3 / 4, 4 / 3]
    done = 0

    def forward(images: list[torch.Tensor], captions: list[str]) -> None:
        with torch.no_grad():
            for chunk in torch.stack(images).split(batch_records):  # as the build: a batch of records' worth a pass
                teacher.encode_image(chunk, normalize=True)
            teacher.encode_text(teacher.tokenizer(captions), normalize=True)

    images, captions = [], []
    for rec in tar_records(shards):
        with Image.open(io.BytesIO(rec["jpg"])) as im:
            image = im.convert("RGB")
        for _ in range(views):
            top, left, h, w = RandomResizedCrop.get_params(image, list(scale), ratio)
            images.append(teacher.preprocess_val(image.crop((left, top, left + w, top + h))))
        captions.append(rec["txt"].decode("utf-8"))
        if len(captions) == batch_records:
            forward(images, captions)
            done += len(captions)
            images, captions = [], []
    if captions:
        forward(images, captions)
        done += len(captions)
    return done


@dataclass
class BuildRun:
    records: int
    loop_s: float  # what `clipkd reinforce` reports (its record loop)
    call_s: float  # the whole run_build call
    folder: Path


def one_build(cfg, args: argparse.Namespace, dtype: str, root: Path) -> BuildRun:
    from clipkd.build.reinforce import run_build
    from clipkd.reinforce.settings import BuildOptions

    out = Path(tempfile.mkdtemp(prefix=f"build-{dtype}-", dir=root)) / "cache"  # fresh, not existing yet
    opts = BuildOptions(out=out, views=args.views, dtype=dtype, batch_size=args.build_batch)
    t0 = time.perf_counter()
    result = run_build(cfg, opts)
    call = time.perf_counter() - t0
    return BuildRun(result.records, result.seconds, call, out)


def sidecar_breakdown(folder: Path) -> tuple[dict[str, int], int, int]:
    """({category: bytes} over all sidecars, sidecar file bytes, other files' bytes) from safetensors headers."""
    cats = {"embeddings": 0, "crops": 0, "fingerprints": 0, "usable flags": 0, "scales": 0, "header+metadata": 0}
    total = 0
    for path in sorted(folder.glob("sidecar-*.safetensors")):
        data = path.read_bytes()
        total += len(data)
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        used = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            size = info["data_offsets"][1] - info["data_offsets"][0]
            used += size
            if name.endswith((".image", ".text")):
                cats["embeddings"] += size
            elif name == "crop":
                cats["crops"] += size
            elif name == "fingerprint":
                cats["fingerprints"] += size
            elif name == "usable":
                cats["usable flags"] += size
            else:
                cats["scales"] += size
        cats["header+metadata"] += len(data) - used
    other = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("sidecar-"))
    return cats, total, other


def part_build(args: argparse.Namespace, root: Path, want_bytes: bool) -> dict[str, Any]:
    from clipkd.data.synthetic import write_shards
    from clipkd.models import create_open_clip_encoder

    shards = write_shards(root / "wds", args.samples, per_shard=args.per_shard, size=args.image_size)
    cfg = build_config(args, shards)
    torch.manual_seed(0)
    teacher = create_open_clip_encoder(args.teacher).eval().requires_grad_(False)
    dtypes = list(dict.fromkeys(args.dtypes))
    print(f"== 1. reinforce build vs. bare teacher loop: {args.samples} records ({len(shards)} shards, "
          f"{args.image_size} px JPEG), K={args.views} views, {args.build_batch} records per batch (and images per "
          "forward), teacher "
          f"{args.teacher} ({teacher.image_size[0]} px, dim {teacher.embed_dim}), crop scale {tuple(args.crop_scale)}")

    def bare() -> float:
        t0 = time.perf_counter()
        n = bare_teacher_loop(teacher, shards, args.views, args.build_batch, args.crop_scale)
        return n / (time.perf_counter() - t0)

    builds: dict[str, list[BuildRun]] = {d: [] for d in dtypes}
    bare_rates: list[float] = []
    jobs = {f"build {d}": (lambda d=d: builds[d].append(one_build(cfg, args, d, root))) for d in dtypes}
    jobs["bare loop"] = lambda: bare_rates.append(bare())
    names = list(jobs)
    for name in names:  # warm-up (first imports, first forward), dropped
        jobs[name]()
    for d in dtypes:
        shutil.rmtree(builds[d].pop().folder.parent)
    bare_rates.clear()
    monitor = OtherLoad()
    for r in range(args.repeats):
        for name in rotated(names, r):
            jobs[name]()
            for d in dtypes:  # keep the newest folder of each dtype (for part 2), drop the older ones
                if len(builds[d]) > 1:
                    shutil.rmtree(builds[d][-2].folder.parent, ignore_errors=True)
    load = monitor.report()

    bare_med = median(bare_rates)
    print(f"  bare teacher loop            {bare_med:8.1f} samples/s   (runs: {runs(bare_rates)})")
    out: dict[str, Any] = {"bare": bare_med}
    for d in dtypes:
        loop = [b.records / b.loop_s for b in builds[d]]
        call = [b.records / b.call_s for b in builds[d]]
        out[d] = (median(loop), median(call))
        print(f"  clipkd reinforce --dtype {d:<4} {median(loop):8.1f} samples/s   (runs: {runs(loop)}); whole "
              f"run_build call {median(call):.1f} samples/s (runs: {runs(call)})")
    print(f"  {load}")
    for d in dtypes:
        ratio = out[d][0] / bare_med
        print(f"RATIO build/bare ({d}): {ratio:.3f}  (clipkd reinforce {out[d][0]:.1f} vs bare loop {bare_med:.1f} "
              f"samples/s; target >= {BUILD_TARGET}): {verdict(ratio >= BUILD_TARGET)}")
    for d in dtypes:
        print(f"RATIO build/bare, whole run_build call ({d}): {out[d][1] / bare_med:.3f}  (includes teacher "
              "construction, folder checks, shard counting and the manifest; no target)")
    if want_bytes:
        part_bytes(args, {d: builds[d][-1] for d in dtypes}, teacher.embed_dim)
    shutil.rmtree(root / "wds", ignore_errors=True)
    return out


def part_bytes(args: argparse.Namespace, folders: dict[str, BuildRun], dim: int) -> None:
    print(f"\n== 2. bytes per sample-view (sidecars of the part-1 builds; teacher dim {dim}, K={args.views})")
    for d, b in folders.items():
        cats, total, other = sidecar_breakdown(b.folder)
        views = b.records * args.views
        shares = ", ".join(f"{k} {v / total:.1%}" for k, v in cats.items())
        print(f"  --dtype {d}: {total} sidecar bytes for {b.records} records x {args.views} views; {shares}; "
              f"other files (build.json, receipts, manifest) {other} bytes")
        print(f"RATIO bytes per sample-view ({d}): {total / views:.1f}  (embeddings {cats['embeddings'] / views:.1f}, "
              f"crops {cats['crops'] / views:.1f}, fingerprints {cats['fingerprints'] / views:.1f}, rest "
              f"{(total - cats['embeddings'] - cats['crops'] - cats['fingerprints']) / views:.1f}; "
              f"embedding share {cats['embeddings'] / total:.1%}, crops+fingerprints share "
              f"{(cats['crops'] + cats['fingerprints']) / total:.1%})")


# ------------------------------------------------------------------------------------------------------------
# part 3: clipkd baseline recipe vs. open_clip_train's own loop
# ------------------------------------------------------------------------------------------------------------
@dataclass
class LoopTimes:
    """Per-step stamps of one training loop: step starts (batch in hand) and, when known, step ends."""

    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    data_wait: list[float] = field(default_factory=list)  # open_clip: time the loader took for each batch
    parts: dict[str, list[float]] = field(default_factory=dict)  # clipkd train_step parts

    def rate(self, batch: int, skip: int) -> float:
        s = self.starts[skip:]
        return batch * (len(s) - 1) / (s[-1] - s[0])

    def add(self, name: str, dt: float) -> None:
        self.parts.setdefault(name, []).append(dt)


def timed(fn: Callable, sink: LoopTimes, name: str) -> Callable:
    def wrapper(*a, **kw):
        t0 = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            sink.add(name, time.perf_counter() - t0)
    return wrapper


def clipkd_config(args: argparse.Namespace, csv_path: Path, run_dir: Path, steps: int):
    from clipkd.config import validate_config

    return validate_config({
        "run_dir": str(run_dir), "seed": 0, "device": "cpu", "precision": "fp32", "threads": args.threads,
        "student": {"model": args.train_student}, "distill": {"recipe": "baseline"},
        "data": {"format": "csv", "train": str(csv_path), "csv_img_key": "filepath", "csv_caption_key": "title",
                 "batch_size": args.train_batch, "workers": args.workers, "crop_scale": [0.9, 1.0]},
        "optim": {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.98], "eps": 1e-6, "warmup_steps": 2,
                  "steps": steps, "grad_clip": 1.0},
        "checkpoint": {"every_steps": 10 ** 9, "keep_last": 1},
        "logging": {"every_steps": args.log_every, "tensorboard": False, "progress": False},
    })


def run_clipkd(args: argparse.Namespace, csv_path: Path, root: Path, steps: int, profile: bool) -> LoopTimes:
    from clipkd.commands.train import make_trainer

    run_dir = Path(tempfile.mkdtemp(prefix="clipkd-run-", dir=root)) / "run"
    trainer = make_trainer(clipkd_config(args, csv_path, run_dir, steps))
    times = LoopTimes()
    step = trainer.train_step
    if profile:  # instance attributes shadow the methods the loop calls; the library is unchanged
        gs = trainer.grad_step
        for obj, attr, label in ((gs, "_embed", "forward"), (gs, "_global_loss", "loss"), (gs, "_backward", "backward"),
                                 (trainer, "_grad_norm", "grad norm + clip"),
                                 (trainer, "_optimizer_step", "optimizer step + schedule"),
                                 (trainer, "_agree", "clipkd: finite/stop agreement")):
            if hasattr(obj, attr):  # private names: a part the library no longer has is left out of the profile
                setattr(obj, attr, timed(getattr(obj, attr), times, label))

    def stamped(micro_batches):
        times.starts.append(time.perf_counter())
        try:
            return step(micro_batches)
        finally:
            times.ends.append(time.perf_counter())

    trainer.train_step = stamped
    trainer.save = lambda: None  # the final checkpoint is not part of the measured steps (saves wall time)
    result = trainer.fit()
    assert result.step == steps, result.step
    shutil.rmtree(run_dir.parent, ignore_errors=True)
    return times


class _StampedLoader:
    """open_clip_train's DataLoader with the time each batch took to arrive recorded."""

    def __init__(self, loader, times: LoopTimes):
        self.loader, self.times = loader, times
        self.num_batches, self.num_samples = loader.num_batches, loader.num_samples

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.times.data_wait.append(time.perf_counter() - t0)
            yield batch


def open_clip_args(args: argparse.Namespace, csv_path: Path):
    from open_clip_train.params import parse_args

    a = parse_args([
        "--train-data", str(csv_path), "--dataset-type", "csv", "--csv-separator", ",",
        "--csv-img-key", "filepath", "--csv-caption-key", "title", "--model", args.train_student,
        "--batch-size", str(args.train_batch), "--workers", str(args.workers), "--precision", "fp32",
        "--lr", "1e-3", "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6", "--warmup", "2",
        "--epochs", "1", "--grad-clip-norm", "1.0", "--log-every-n-steps", str(args.log_every),
        "--report-to", "", "--seed", "0",
    ])
    # what open_clip_train.main sets for one process without a distributed launcher
    a.device, a.distributed, a.world_size, a.rank, a.local_rank = "cpu", False, 1, 0, 0
    a.distill, a.wandb, a.tensorboard = False, False, False
    return a


@contextmanager
def patched(obj: Any, attr: str, value: Any) -> Iterator[None]:
    saved = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, saved)


def open_clip_model(a) -> tuple[Any, Any, Any, torch.optim.Optimizer]:
    """The model, transforms and AdamW (open_clip_train.main's parameter groups: no decay on gains, biases and
    the logit scale) of open_clip_train's arguments ``a``."""
    import open_clip

    torch.manual_seed(0)
    model, pp_train, pp_val = open_clip.create_model_and_transforms(
        a.model, None, precision=a.precision, device="cpu", output_dict=True, aug_cfg=a.aug_cfg)
    exclude = [p for n, p in model.named_parameters()
               if p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n]
    ids = {id(p) for p in exclude}
    rest = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW([{"params": exclude, "weight_decay": 0.0}, {"params": rest, "weight_decay": a.wd}],
                                  lr=a.lr, betas=(a.beta1, a.beta2), eps=a.eps)
    return model, pp_train, pp_val, optimizer


def run_open_clip(args: argparse.Namespace, csv_path: Path, profile: bool) -> LoopTimes:
    import contextlib

    import open_clip
    import open_clip_train.train as oct_train
    from open_clip_train.data import get_data
    from open_clip_train.scheduler import cosine_lr

    a = open_clip_args(args, csv_path)
    model, pp_train, pp_val, optimizer = open_clip_model(a)
    data = get_data(a, (pp_train, pp_val), epoch=0, tokenizer=open_clip.get_tokenizer(a.model))
    steps = data["train"].dataloader.num_batches
    times = LoopTimes()
    data["train"].dataloader = _StampedLoader(data["train"].dataloader, times)
    schedule = cosine_lr(optimizer, a.lr, a.warmup, steps)
    loss = open_clip.create_loss(a)

    def scheduler(step):  # called once per step, right after the loader yielded its batch
        times.starts.append(time.perf_counter())
        return schedule(step)

    with contextlib.ExitStack() as stack:
        if profile:  # the same parts as clipkd's profile; patched for this run only
            model.forward = timed(model.forward, times, "forward")
            loss = timed(loss, times, "loss")
            optimizer.step = timed(optimizer.step, times, "optimizer step + schedule")
            stack.enter_context(patched(oct_train, "backward", timed(oct_train.backward, times, "backward")))
            stack.enter_context(patched(torch.nn.utils, "clip_grad_norm_",
                                        timed(torch.nn.utils.clip_grad_norm_, times, "grad norm + clip")))
        oct_train.train_one_epoch(model, data, loss, 0, optimizer, None, scheduler, None, a, tb_writer=None)
    assert len(times.starts) == steps, (len(times.starts), steps)
    return times


def part_train(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import open_clip_train

    from clipkd.models.open_clip_adapter import list_models

    try:
        import pandas  # noqa: F401 - open_clip_train.data reads the CSV with it (open_clip_torch's training extra)
    except ImportError:
        raise SystemExit("part 3 needs pandas, which open_clip_train's CSV reader imports and clipkd does not "
                         "install: `pip install pandas` (or leave `train` out of --parts)") from None
    list_models()  # registers clipkd's model configs with open_clip (clipkd-tiny-vit, ViT-T-16, ...)
    steps = math.ceil(args.train_steps / args.workers) * args.workers if args.workers else args.train_steps
    if steps - args.skip_steps < 2:
        raise SystemExit("--train-steps must exceed --skip-steps by at least 2")
    csv_path = write_image_csv(root / "csv", steps * args.train_batch, args.train_image_size)
    print(f"\n== 3. clipkd baseline recipe (Trainer) vs. open_clip_train.train_one_epoch: student "
          f"{args.train_student}, {steps} steps x batch {args.train_batch} (one epoch of a {steps * args.train_batch}-"
          f"row CSV, {args.train_image_size} px JPEG files), {args.workers} loader workers, fp32, grad clip 1.0, "
          f"log every {args.log_every} steps; samples/s from the start of step {args.skip_steps + 1} to the start "
          f"of step {steps}")
    print(f"  open_clip_train from {Path(open_clip_train.__file__).parent}")
    jobs = {"clipkd": lambda: run_clipkd(args, csv_path, root, steps, args.profile_train),
            "open_clip_train": lambda: run_open_clip(args, csv_path, args.profile_train)}
    names = list(jobs)
    results: dict[str, list[LoopTimes]] = {n: [] for n in names}
    for name in names:  # warm-up (first imports, first loader start), dropped
        jobs[name]()
    monitor = OtherLoad(children=True)
    for r in range(args.repeats):
        for name in rotated(names, r):
            results[name].append(jobs[name]())
    load = monitor.report()
    rates = {n: [t.rate(args.train_batch, args.skip_steps) for t in results[n]] for n in names}
    med = {n: median(v) for n, v in rates.items()}
    for n in names:
        print(f"  {n:<16} {med[n]:8.1f} samples/s   (runs: {runs(rates[n])})")
    per_run = [a / b for a, b in zip(rates["clipkd"], rates["open_clip_train"])]
    print(f"  per-repeat ratios: {runs(per_run, '{:.3f}')}")
    print(f"  {load}")
    if args.profile_train:
        profile_report(results, args.skip_steps)
        fixed_batch_steps(args, csv_path, root)
        loader_cpu(args, csv_path, root)
    ratio = med["clipkd"] / med["open_clip_train"]
    print(f"RATIO clipkd baseline/open_clip_train: {ratio:.3f}  (samples/s {med['clipkd']:.1f} vs "
          f"{med['open_clip_train']:.1f}; target >= {TRAIN_TARGET}): {verdict(ratio >= TRAIN_TARGET)}")
    return {"ratio": ratio, **med}


def loader_cpu(args: argparse.Namespace, csv_path: Path, root: Path) -> None:
    """Each loop's data pipeline alone over one epoch (``--workers`` workers, no training): CPU time of this
    process and its workers per sample. On a machine whose cores also run the training step, every CPU
    millisecond a worker spends is taken from the step, so this (unlike wall time) is what the pipeline costs the
    training; CPU time hardly depends on what else runs on the machine."""
    import resource

    import open_clip

    from clipkd.data.stream import make_loader
    from clipkd.commands.train import make_trainer
    from open_clip_train.data import get_data

    def cpu() -> float:
        return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage,
                                                          (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))

    trainer = make_trainer(clipkd_config(args, csv_path, root / "loader-run", 10 ** 6))
    a = open_clip_args(args, csv_path)
    _, pp_train, pp_val, _ = open_clip_model(a)
    tokenizer = open_clip.get_tokenizer(a.model)

    def clipkd_epoch() -> int:
        return sum(len(b) for b, _ in make_loader(trainer.stream, args.workers, 0))

    def open_clip_epoch() -> int:
        loader = get_data(a, (pp_train, pp_val), epoch=0, tokenizer=tokenizer)["train"].dataloader
        return sum(len(images) for images, _ in loader)

    fns = {"clipkd": clipkd_epoch, "open_clip_train": open_clip_epoch}
    cost: dict[str, list[float]] = {k: [] for k in fns}
    rate: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(3):
        for name in rotated(names, r):
            c0, t0 = cpu(), time.perf_counter()
            n = fns[name]()
            cost[name].append((cpu() - c0) / n)
            rate[name].append(n / (time.perf_counter() - t0))
    print(f"  data pipeline alone, one epoch, {args.workers} workers (start-up included), 3 interleaved runs (median):")
    for k in names:
        print(f"    {k:<16} {median(cost[k]) * 1e3:6.2f} ms CPU per sample (main process + workers)   "
              f"{median(rate[k]):7.1f} samples/s wall")
    ratio = median(cost["clipkd"]) / median(cost["open_clip_train"])
    print(f"    CPU per sample clipkd / open_clip_train: {ratio:.2f}")


def fixed_batch_steps(args: argparse.Namespace, csv_path: Path, root: Path) -> None:
    """Both steps on one pre-made batch, no loader: clipkd's ``Trainer.train_step`` vs. the body of
    open_clip_train's step (schedule, zero_grad, forward, ClipLoss, backward, clip 1.0, AdamW, clamp)."""
    import open_clip

    from clipkd.data.stream import make_loader
    from clipkd.commands.train import make_trainer
    from open_clip_train.scheduler import cosine_lr

    trainer = make_trainer(clipkd_config(args, csv_path, root / "fixed-run", 10 ** 6))
    batch, _ = next(iter(make_loader(trainer.stream, 0)))
    batch = batch.rendered()  # data.preprocess: device (the default): the views as tensors, for both loops
    trainer.student.train()
    a = open_clip_args(args, csv_path)
    model, _, _, optimizer = open_clip_model(a)
    loss = open_clip.create_loss(a)
    schedule = cosine_lr(optimizer, a.lr, a.warmup, 10 ** 6)
    images, texts = batch.student_images, batch.student_text
    model.train()
    count = [0]

    def open_clip_step() -> None:
        schedule(count[0])
        count[0] += 1
        optimizer.zero_grad()
        losses = loss(**model(images, texts), output_dict=True)
        sum(losses.values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    fns = {"clipkd": lambda: trainer.train_step([batch]), "open_clip_train": open_clip_step}
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(2 + args.fixed_repeats):
        for name in rotated(names, r):
            t0 = time.perf_counter()
            fns[name]()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    med = {k: median(v) for k, v in times.items()}
    print(f"  same pre-made batch of {len(batch)}, no loader, 2 warm-up + {args.fixed_repeats} interleaved (median):")
    for k in names:
        print(f"    {k:<16} {med[k] * 1e3:8.1f} ms per step   (runs: {runs([x * 1e3 for x in times[k]])})")
    print(f"    step time clipkd / open_clip_train: {med['clipkd'] / med['open_clip_train']:.3f} (above 1: clipkd's "
          "step does more work per batch)")


def profile_report(results: dict[str, list[LoopTimes]], skip: int) -> None:
    """Mean ms per step of each loop's parts (means add up), over the timed steps of all repeats.

    ``step interval``: start of a step to the start of the next; ``waiting for the batch``: open_clip: the
    loader's ``next``; clipkd: the time between ``train_step`` returning and the next call (the loader's
    ``next``, plus the loop's own bookkeeping and logging)."""
    rows: dict[str, dict[str, float]] = {}
    for loop, runs_ in results.items():
        mean = lambda xs: statistics.fmean(xs) if xs else float("nan")  # noqa: E731
        r = {"step interval": mean([b - a for t in runs_ for a, b in zip(t.starts[skip:], t.starts[skip + 1:])])}
        if loop == "clipkd":
            r["waiting for the batch"] = mean([s_ - e for t in runs_
                                               for e, s_ in zip(t.ends[skip:], t.starts[skip + 1:])])
        else:
            r["waiting for the batch"] = mean([x for t in runs_ for x in t.data_wait[skip + 1:]])
        n_steps = sum(max(0, len(t.starts) - skip - 1) for t in runs_)
        for name in runs_[0].parts:  # per step: parts of the timed steps (a part may be called once per step)
            vals = [x for t in runs_ for x in t.parts.get(name, [])[skip:len(t.starts) - 1]]
            r[name] = sum(vals) / n_steps if n_steps else float("nan")
        r["rest of the step"] = r["step interval"] - sum(v for k, v in r.items() if k != "step interval")
        rows[loop] = r
    names = list(dict.fromkeys(k for r in rows.values() for k in r))
    names.remove("rest of the step")
    names.append("rest of the step")
    loops = list(rows)
    print("  profile: mean ms per timed step, over all repeats")
    print(f"    {'part':<32}" + "".join(f"{name:>18}" for name in loops) + f"{'difference':>14}")
    for k in names:
        vals = [rows[loop].get(k, float("nan")) * 1e3 for loop in loops]
        diff = vals[0] - vals[1] if len(vals) == 2 else float("nan")
        cells = "".join(f"{v:>18.1f}" if not math.isnan(v) else f"{'-':>18}" for v in vals)
        print(f"    {k:<32}{cells}{diff:>+14.1f}" if not math.isnan(diff) else f"    {k:<32}{cells}{'':>14}")


# ------------------------------------------------------------------------------------------------------------
# part 4: online teacher step vs. baseline step (paper pair)
# ------------------------------------------------------------------------------------------------------------
@dataclass
class OnlineContext:
    """What the step variants share: the teacher encoder, the student's model name (each variant builds its own
    student from ``seed``), the batch, the device; ``extra`` for what a later variant needs (e.g. a reinforced
    folder)."""

    teacher: Any  # ClipEncoder
    student_name: str
    batch: Any  # DistillBatch
    device: torch.device
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _trainer_like_step(distiller, device: torch.device) -> Callable[[Any], None]:
    """A Trainer step on one micro-batch: zero grad, GlobalBatchStep, clip 1.0, AdamW, logit-scale clamp."""
    from clipkd.runtime.distributed import DistEnv
    from clipkd.engine.gradcache import GlobalBatchStep
    from clipkd.engine.optim import clamp_logit_scales, create_optimizer

    distiller.student.train()
    opt = create_optimizer(distiller.student, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    grad_step = GlobalBatchStep(distiller, distiller.student, DistEnv(), device)

    def step(batch) -> None:
        opt.zero_grad(set_to_none=True)
        grad_step([batch])
        torch.nn.utils.clip_grad_norm_(distiller.student.parameters(), 1.0)
        opt.step()
        clamp_logit_scales(distiller.student)

    return step


def _student(ctx: OnlineContext):
    from clipkd.models import create_open_clip_encoder

    torch.manual_seed(ctx.seed)  # every variant starts from the same student weights
    return create_open_clip_encoder(ctx.student_name).to(ctx.device)


def baseline_step(ctx: OnlineContext) -> Callable[[], None]:
    from clipkd.distill import build_distiller

    step = _trainer_like_step(build_distiller(_student(ctx), None, {"task": 1.0}), ctx.device)
    return lambda: step(ctx.batch)


def online_teacher_step(ctx: OnlineContext) -> Callable[[], None]:
    from clipkd.distill import build_distiller
    from clipkd.losses.recipes import get_recipe

    recipe = get_recipe("clipkd")
    distiller = build_distiller(_student(ctx), ctx.teacher, recipe.weights, recipe.mask_ratio)
    step = _trainer_like_step(distiller, ctx.device)
    return lambda: step(ctx.batch)


def teacher_forward(ctx: OnlineContext) -> Callable[[], None]:
    from clipkd.models.teacher import FrozenTeacher

    frozen = FrozenTeacher(ctx.teacher)
    return lambda: frozen(ctx.batch.teacher_images, ctx.batch.teacher_text)


def reinforced_step(ctx: OnlineContext) -> Callable[[], None]:
    """The clipkd step as training from reinforced data runs it: the batch carries the teacher's stored
    embeddings (bf16 in the sidecar, float32 in the batch), the distiller has no teacher."""
    from dataclasses import replace

    from clipkd.distill import build_distiller
    from clipkd.losses.recipes import get_recipe
    from clipkd.embeddings import Embeddings
    from clipkd.models.teacher import FrozenTeacher

    t = FrozenTeacher(ctx.teacher)(ctx.batch.teacher_images, ctx.batch.teacher_text)
    stored = Embeddings(t.img.bfloat16().float(), t.txt.bfloat16().float(), t.scale.float())
    batch = replace(ctx.batch, teacher=stored)
    recipe = get_recipe("clipkd")
    distiller = build_distiller(_student(ctx), None, recipe.weights, recipe.mask_ratio,
                                stored_teacher_dims=[ctx.teacher.embed_dim])
    step = _trainer_like_step(distiller, ctx.device)
    return lambda: step(batch)


STEP_VARIANTS: dict[str, Callable[[OnlineContext], Callable[[], None]]] = {
    "baseline step": baseline_step,
    "clipkd step, online teacher": online_teacher_step,
    "clipkd step, reinforced data": reinforced_step,  # target: <= 1.05 x the baseline step
    "teacher forward": teacher_forward,
}
REFERENCE = "baseline step"
TARGETS = {"clipkd step, reinforced data": 1.05}  # variant / baseline step


def part_online(args: argparse.Namespace) -> dict[str, float]:
    from clipkd.data.batch import DistillBatch
    from clipkd.models import create_open_clip_encoder

    torch.manual_seed(1)
    device = torch.device(args.online_device)
    teacher = create_open_clip_encoder(args.online_teacher).to(device)
    probe = create_open_clip_encoder(args.online_student)
    n = args.online_batch
    captions = [f"a photo of a {c} square number {i}" for i, c in zip(range(n), ["red", "green", "blue"] * n)]
    g = torch.Generator().manual_seed(0)
    s_img = torch.randn(n, 3, *probe.image_size, generator=g)
    same = (tuple(probe.image_size) == tuple(teacher.image_size)
            and repr(probe.preprocess_val) == repr(teacher.preprocess_val))
    t_img = s_img if same else torch.randn(n, 3, *teacher.image_size, generator=g)  # shared, as the loader does
    batch = DistillBatch(s_img, probe.tokenize(captions), t_img, teacher.tokenize(captions)).to(device)
    del probe
    ctx = OnlineContext(teacher, args.online_student, batch, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fns = {name: make(ctx) for name, make in STEP_VARIANTS.items()}
    print(f"\n== 4. online teacher: {args.online_teacher} -> {args.online_student}, {teacher.image_size[0]} px, batch "
          f"{n}, {device.type}, random weights, pre-made tensors; {args.online_warmup} warm-up + {args.online_repeats} timed, "
          "interleaved")
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.online_warmup):
        for name in rotated(names, r):
            fns[name]()
    monitor = OtherLoad()
    for r in range(args.online_repeats):
        for name in rotated(names, r):
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    load = monitor.report()
    med = {k: median(v) for k, v in times.items()}
    for k in names:
        print(f"  {k:<32} {med[k] * 1e3:9.1f} ms   (runs: {runs([x * 1e3 for x in times[k]])})")
    print(f"  {load}")
    for k in names:
        if k != REFERENCE:
            ratio = med[k] / med[REFERENCE]
            verdict = f"target <= {TARGETS[k]}: {'PASS' if ratio <= TARGETS[k] else 'FAIL'}" if k in TARGETS \
                else "no target"
            print(f"RATIO {k} / {REFERENCE}: {ratio:.3f}  ({med[k] * 1e3:.0f} vs {med[REFERENCE] * 1e3:.0f} ms; "
                  f"{verdict})")
    online, cached = "clipkd step, online teacher", "clipkd step, reinforced data"
    if online in med and cached in med:
        print(f"RATIO speed-up of training from reinforced data over the online teacher: "
              f"{med[online] / med[cached]:.2f}x  (no target)")
    return med


# ------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (and clipkd's `threads:`)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of parts 1 and 3 (after 1 warm-up)")
    g = ap.add_argument_group("parts 1-2: reinforce build")
    g.add_argument("--samples", type=int, default=512, help="records in the generated webdataset")
    g.add_argument("--per-shard", type=int, default=128, help="records per tar shard (one sidecar each)")
    g.add_argument("--image-size", type=int, default=64, help="side of the generated JPEGs")
    g.add_argument("--views", type=int, default=4, help="K augmented views per record")
    g.add_argument("--build-batch", type=int, default=64, help="records per teacher forward (--batch-size)")
    g.add_argument("--teacher", default="clipkd-tiny-teacher", help="teacher of the build (e.g. ViT-B-16)")
    g.add_argument("--student", default="clipkd-tiny-vit", help="the run config's student (not built)")
    g.add_argument("--crop-scale", type=float, nargs=2, default=(0.5, 1.0), help="data.crop_scale of the run")
    g.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp16", "fp32"])
    g = ap.add_argument_group("part 3: clipkd baseline vs. open_clip_train")
    g.add_argument("--train-student", default="clipkd-tiny-vit")
    g.add_argument("--train-batch", type=int, default=64)
    g.add_argument("--train-steps", type=int, default=24, help="steps per run (rounded up to a multiple of "
                   "--workers); the data is one epoch of them")
    g.add_argument("--skip-steps", type=int, default=2, help="first steps not timed (loader warm-up)")
    g.add_argument("--train-image-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=2, help="data-loader workers of both loops")
    g.add_argument("--log-every", type=int, default=10, help="logging interval of both loops")
    g.add_argument("--profile-train", action="store_true", help="break each loop's step time down, and time "
                   "both steps on one pre-made batch without a loader")
    g.add_argument("--fixed-repeats", type=int, default=7, help="timed repeats of the pre-made-batch comparison")
    g = ap.add_argument_group("part 4: online teacher")
    g.add_argument("--online-teacher", default="ViT-B-16")
    g.add_argument("--online-student", default="ViT-T-16")
    g.add_argument("--online-batch", type=int, default=8)
    g.add_argument("--online-repeats", type=int, default=5)
    g.add_argument("--online-warmup", type=int, default=1)
    g.add_argument("--online-device", default="cpu", help="cpu or cuda (a lent GPU: benchmarks/gpu_session.sh)")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"--parts: unknown {sorted(unknown)} (known: {', '.join(PARTS)})")

    logging.basicConfig(level=logging.ERROR)  # random-weight warnings and info lines are not results
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator")  # open_clip_train's loader, on CPU
    torch.set_num_threads(args.threads)
    print("Reinforced data and training speed (benchmarks/reinforce_speed.py)")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores, "
          f"torch.set_num_threads({args.threads}), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, device cpu")
    print(f"parts: {', '.join(parts)}; {args.repeats} timed repeats (parts 1, 3) after 1 warm-up, interleaved, "
          f"order rotating; medians")
    import clipkd

    print(f"clipkd {clipkd.__version__} from {Path(clipkd.__file__).parent}")
    print(f"at start: {_loadavg()}")
    sys.stdout.flush()
    total = OtherLoad(children=True)
    t_start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="clipkd-reinforce-speed-"))
    try:
        if "build" in parts or "bytes" in parts:
            part_build(args, root, "bytes" in parts)
            sys.stdout.flush()
        if "train" in parts:
            part_train(args, root)
            sys.stdout.flush()
        if "online" in parts:
            part_online(args)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nat end: {_loadavg()}; whole run {time.perf_counter() - t_start:.0f} s; {total.report()}")


if __name__ == "__main__":
    main()
