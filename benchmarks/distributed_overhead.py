"""Cost of exact global-batch training (issue: scale out), as ratios measured side by side in one run.

Runs `benchmarks/scaling.py` configurations as separate processes, interleaved over --repeats rounds (median):
  gathers       W processes, every term on the global batch (all-gather) vs. each process on its own batch
  accumulation  one process, K micro-batches of B through GradCache vs. one batch of K*B (time and peak memory)
  plain step    one process, the embeddings-split step (K=1) vs. forward + loss.backward()
Step memory: the peak during the steps above what was in use before them (model, optimizer, inputs): max RSS
on CPU, torch.cuda.max_memory_allocated on GPU.

    python benchmarks/distributed_overhead.py                      # CPU, tiny models, 2 processes
    python benchmarks/distributed_overhead.py --device cuda --nproc 8 --student ViT-T-16 --teacher ViT-B-16 \
        --batch 128 --accum 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import OtherLoad

from clipkd.runtime.distributed import torchrun_command

HERE = Path(__file__).parent


def run(args, mode: str, nproc: int, batch: int, accum: int) -> dict:
    common = ["--mode", mode, "--batch", str(batch), "--accum", str(accum), "--steps", str(args.steps),
              "--student", args.student, "--teacher", args.teacher, "--device", args.device,
              "--precision", args.precision]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if nproc > 1:
        env["OMP_NUM_THREADS"] = str(max(1, args.threads // nproc))
        cmd = torchrun_command(nproc, [str(HERE / "scaling.py"), *common])
    else:
        cmd = [sys.executable, str(HERE / "scaling.py"), *common, "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--student", default="clipkd-tiny-vit")
    ap.add_argument("--teacher", default="clipkd-tiny-teacher")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    b, k, w = args.batch, args.accum, args.nproc
    configs = {
        "gather: global": ("global", w, b, 1), "gather: local": ("local", w, b, 1),
        "accum: GradCache K x B": ("global", 1, b, k), "accum: direct K*B": ("direct", 1, b * k, 1),
        "accum: direct B": ("direct", 1, b, 1), "plain: split K=1": ("global", 1, b, 1),
    }
    results: dict[str, list[dict]] = {name: [] for name in configs}
    load = OtherLoad(children=True)
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            results[name].append(run(args, *cfg))
    med = {n: statistics.median(r["step_ms"] for r in rs) for n, rs in results.items()}
    mem = {n: statistics.median(r["step_mem_mib_max_rank"] for r in rs) for n, rs in results.items()}
    sps = {n: statistics.median(r["samples_per_s"] for r in rs) for n, rs in results.items()}
    print(f"{args.device}, {args.student} <- {args.teacher}, micro-batch {b}, K={k}, W={w}, {args.threads} threads, "
          f"{args.steps} steps x {args.repeats} interleaved runs (medians)")
    print(f"{'configuration':<24} {'step ms':>9} {'samples/s':>10} {'step MiB':>9}")
    for n in configs:
        print(f"{n:<24} {med[n]:9.1f} {sps[n]:10.1f} {mem[n]:9.0f}")
    print(f"gathers:      global / local step time ({w} processes)         = {med['gather: global'] / med['gather: local']:.3f}")
    print(f"accumulation: GradCache K x B / direct K*B step time          = "
          f"{med['accum: GradCache K x B'] / med['accum: direct K*B']:.3f}")
    print(f"accumulation: step memory GradCache K x B / direct K*B        = "
          f"{mem['accum: GradCache K x B'] / mem['accum: direct K*B']:.3f}  (direct B: "
          f"{mem['accum: direct B'] / mem['accum: direct K*B']:.3f})")
    print(f"plain step:   split at the embeddings (K=1) / loss.backward() = {med['plain: split K=1'] / med['accum: direct B']:.3f}")
    print(load.report())


if __name__ == "__main__":
    main()
