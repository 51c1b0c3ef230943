"""`clipkd bench-data`: the training data path exactly as `clipkd train` runs it (its loader workers, reinforced
data or the teachers' views, the device it moves batches to), without the model step.

It prints samples/s, CPU seconds per sample over all processes, each stage's share, the first batch of an epoch
against the median one, and how many CPU cores one GPU of this student needs to be fed at a given step rate
(``--step-rate``) or at the student step measured here on the configured device.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=None, help="the run YAML (as for `clipkd train`)")
    p.add_argument("--batches", type=int, default=20, help="batches to read (the first one starts the workers)")
    p.add_argument("--step-rate", type=float, default=None, metavar="SAMPLES_PER_S",
                   help="samples/s one GPU's student step takes (default: measured here, on the configured device)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the run config, e.g. data.workers=4")


def _describe(cfg, stored) -> str:
    source = "reinforced data" if stored is not None else "teacher views" if cfg.teacher else "no teacher"
    return (f"{cfg.data.format} {cfg.data.train if isinstance(cfg.data.train, str) else cfg.data.train[0] + ' ...'}"
            f", {cfg.data.workers} worker(s), batch {cfg.data.batch_size}, {source}")


def measure_step(distiller, batch, device, precision: str, steps: int = 3) -> float:
    """Samples/s of the student's training step (forward, every loss term, backward; no optimizer) on the host
    ``batch``, made ready on ``device`` as the trainer does: the median of ``steps`` timed steps after one warm-up."""
    import statistics

    import torch

    from clipkd.engine.step import autocast

    student = distiller.student.to(device).train()
    batch = distiller.on_device(batch, device)
    if distiller.teacher is not None:
        distiller.teacher.to(device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with autocast(device, precision):
            t = batch.teacher if batch.teacher is not None else distiller.teacher(batch.teacher_images,
                                                                                 batch.teacher_text)
            s = student(batch.student_images, batch.student_text, t, 0.0)
            loss = distiller.loss(s, t)["loss"]
        loss.backward()
        student.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return len(batch) / statistics.median(times)


def _report(figures: dict[str, Any], describe: str) -> str:
    st = figures["stages"]
    ms = lambda v: f"{1000 * v:.2f}"  # noqa: E731
    stages = ", ".join(f"{k} {ms(v)}" for k, v in st.items() if v > 0 or k in ("decode", "preprocess"))
    first = ", ".join(f"{s:.2f}" for s in figures["first_batch_s"])
    return "\n".join([
        f"data path: {describe}",
        f"  {figures['batches']} batches ({figures['samples']} samples) in {figures['seconds']:.1f} s: "
        f"{figures['samples_per_s']:.1f} samples/s after the first batch",
        f"  first batch of an epoch {first} s; median batch {figures['median_batch_s']:.3f} s",
        f"  CPU {ms(figures['cpu_s_per_sample'])} ms per sample over all processes",
        f"  stages (CPU ms per sample): {stages}",
        f"  one GPU at {figures['step_rate']:.0f} samples/s ({figures['step_rate_source']}) needs about "
        f"{figures['cores_per_gpu']:.1f} cores for its data"])


def run_bench_data(args: argparse.Namespace) -> int:
    from clipkd.config import load_config
    from clipkd.errors import ConfigError

    if args.batches < 1:
        raise ConfigError(f"--batches: must be >= 1, got {args.batches}")
    cfg = load_config(args.config, args.overrides)
    from clipkd.build.data import build_stream, stored_views
    from clipkd.build.device import resolve_device
    from clipkd.build.models import build_distiller_from_config
    from clipkd.build.preflight import preflight
    from clipkd.data.bench import measure_stream
    from clipkd.runtime.threads import apply_threads

    manifest = preflight(cfg)
    apply_threads(cfg.threads, 1)
    device = resolve_device(cfg.device)
    stored = stored_views(cfg, manifest)
    distiller = build_distiller_from_config(cfg, stored=stored)
    stream = build_stream(cfg.data, distiller, cfg.seed, stored=stored)
    figures = measure_stream(stream, cfg.data.workers, cfg.seed, args.batches, device).to_dict()
    rate, source = args.step_rate, "given"
    if rate is None:
        from clipkd.data.stream import DataPosition, make_loader

        stream.start(DataPosition())
        batch, _ = next(iter(make_loader(stream, 0, cfg.seed)))
        rate = measure_step(distiller, batch, device, cfg.precision)
        source = f"measured on {device}"
    figures.update(step_rate=rate, step_rate_source=source, cores_per_gpu=rate * figures["cpu_s_per_sample"],
                   config=_describe(cfg, stored))
    print(_report(figures, figures["config"]))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")
    return 0


