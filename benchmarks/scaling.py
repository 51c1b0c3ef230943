"""Throughput and memory of clipkd training steps, for one process or under torchrun (CPU or GPU).

One configuration per run; prints one JSON line (rank 0) with samples/s of the global batch, median step time
and peak memory. Modes:
  global  every term on the global batch (all-gather across processes; GradCache when --accum > 1): what
          `clipkd train` does;
  local   each process computes the loss on its own micro-batch only (no gather; the baseline the gathers are
          measured against; with --accum > 1 it is K independent small batches);
  direct  one process, no split at the embeddings: forward, loss.backward() (the pre-GradCache step).
The data are random tensors (no loader), so this measures the model, the loss and the communication.

    python benchmarks/scaling.py --mode direct --batch 256
    torchrun --nproc_per_node 8 benchmarks/scaling.py --device cuda --student ViT-T-16 --teacher ViT-B-16 \
        --batch 128 --accum 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from clipkd.data.batch import DistillBatch
from clipkd.distill import build_distiller  # noqa: E402
from clipkd.runtime.distributed import DistEnv, init_distributed, shutdown, wrap_ddp  # noqa: E402
from clipkd.engine.gradcache import GlobalBatchStep  # noqa: E402
from clipkd.engine.optim import clamp_logit_scales, create_optimizer  # noqa: E402
from clipkd.engine.step import autocast as precision_autocast  # noqa: E402
from clipkd.losses.recipes import get_recipe  # noqa: E402
from clipkd.models import create_open_clip_encoder  # noqa: E402


def make_batch(student, teacher, n: int, device: torch.device, seed: int) -> DistillBatch:
    g = torch.Generator().manual_seed(seed)
    captions = [f"a photo of a red square number {i}" for i in range(n)]
    return DistillBatch(torch.randn((n, 3, *student.image_size), generator=g), student.tokenize(captions),
                        torch.randn((n, 3, *teacher.image_size), generator=g), teacher.tokenize(captions)).to(device)


def peak_memory_mib(device: torch.device) -> float:
    """High-water mark: CUDA allocator peak, or max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_memory_mib(device: torch.device) -> float:
    """Memory in use now (before the steps): CUDA allocated (peak reset here), or RSS on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["global", "local", "direct"], default="global")
    ap.add_argument("--student", default="clipkd-tiny-vit")
    ap.add_argument("--teacher", default="clipkd-tiny-teacher")
    ap.add_argument("--recipe", default="clipkd")
    ap.add_argument("--batch", type=int, default=64, help="micro-batch per process")
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as set)")
    return ap.parse_args()


def main() -> None:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    env = init_distributed(args.device)
    device = torch.device("cuda", env.local_rank) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(0)
    teacher, student = create_open_clip_encoder(args.teacher), create_open_clip_encoder(args.student)
    d = build_distiller(student, teacher, get_recipe(args.recipe).weights, get_recipe(args.recipe).mask_ratio)
    d.teacher.to(device)
    module = d.student.to(device).train()
    ddp = wrap_ddp(module, env, device)
    opt = create_optimizer(module, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    autocast = lambda: precision_autocast(device, args.precision)  # noqa: E731
    loss_env = env if args.mode == "global" else DistEnv()
    step_fn = GlobalBatchStep(d, ddp, loss_env, device, autocast)
    micro = [make_batch(student, teacher, args.batch, device, seed=1000 * env.rank + k) for k in range(args.accum)]
    big = make_batch(student, teacher, args.batch * args.accum, device, seed=env.rank)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        if args.mode == "direct":
            with autocast():
                loss = d(big, gen)["loss"]
            loss.backward()
        elif args.mode == "local" and args.accum > 1:
            for k, b in enumerate(micro):  # K independent small batches, DDP syncing on the last
                with ddp.no_sync() if env.active and k < len(micro) - 1 else contextlib.nullcontext():
                    step_fn([b], gen)
        else:
            step_fn(micro, gen)
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        clamp_logit_scales(module)

    times, base = [], current_memory_mib(device)
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    global_batch = args.batch * args.accum * (env.world_size if args.mode != "direct" else 1)
    memory = env.gather_objects((peak_memory_mib(device), peak_memory_mib(device) - base))
    if env.is_main:
        print(json.dumps({"mode": args.mode, "world_size": env.world_size, "batch": args.batch,
                          "accum": args.accum, "global_batch": global_batch, "device": str(device),
                          "precision": args.precision, "student": args.student, "teacher": args.teacher,
                          "step_ms": round(1000 * step_s, 2), "samples_per_s": round(global_batch / step_s, 1),
                          "peak_mem_mib_max_rank": round(max(m[0] for m in memory), 1),
                          "step_mem_mib_max_rank": round(max(m[1] for m in memory), 1)}), flush=True)
    shutdown()


if __name__ == "__main__":
    main()
