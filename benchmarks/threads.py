"""Training throughput of clipkd's default CPU thread choice vs. the best fixed setting, idle and on a busy CPU.

Runs ``clipkd train`` (configs/tiny-csv.yaml, generated CSV data, the config's 2 loader workers) as subprocesses:
  * ``default``: no ``threads:`` and no ``OMP_NUM_THREADS`` - what a user gets;
  * ``threads=N`` for N = 1 .. usable cores: fixed settings, the best of which is the reference;
  * ``old``: one thread per core, spinning while waiting (PyTorch's default, what clipkd did before);
each on an idle machine and with a competing job (another process doing float32 matmuls on 2 threads, as a
second training job would). Throughput = median ``samples_per_s`` of the logged windows after the first.
Target (issue: a new user's first hour): default / best >= 0.8 in both conditions.
The rounds are interleaved (every setting once per round) so drift in the machine's state hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import OtherLoad, _loadavg

ROOT = Path(__file__).resolve().parent.parent
LOAD = ("import torch\ntorch.set_num_threads({n})\na = torch.randn(384, 384)\n"
        "while True:\n    a = (a @ a).clamp_(-1, 1)\n")


def run_train(data: str, out: Path, setting: str, steps: int, batch: int) -> float:
    """Median samples/s of one short ``clipkd train`` run with ``setting``: 'default', a thread count, or
    'old' (PyTorch's own default before clipkd chose: one thread per core, spinning while waiting)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    env["HF_HUB_OFFLINE"] = "1"
    if setting == "old":
        env["OMP_WAIT_POLICY"] = "ACTIVE"
        setting = str(len(os.sched_getaffinity(0)))
    overrides = [f"data.train={data}", f"run_dir={out}", f"optim.steps={steps}", "logging.every_steps=5",
                 f"data.batch_size={batch}", "logging.progress=false", "logging.tensorboard=false",
                 f"checkpoint.every_steps={steps}"]
    if setting != "default":
        overrides.append(f"threads={setting}")
    cmd = [sys.executable, "-m", "clipkd", "train", "-c", str(ROOT / "configs/tiny-csv.yaml"), "--overwrite",
           *overrides]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/samples_per_s"] for r in rows if "train/samples_per_s" in r][1:]
    return statistics.median(rates)


def measure(data: str, tmp: Path, settings: list[str], rounds: int, steps: int, batch: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {s: [] for s in settings}
    for _ in range(rounds):
        for s in settings:
            rates[s].append(run_train(data, tmp / f"run-{s}", s, steps, batch))
    return {s: statistics.median(v) for s, v in rates.items()}


def report(label: str, rates: dict[str, float]) -> float:
    best = max((v, s) for s, v in rates.items() if s not in ("default", "old"))
    ratio = rates["default"] / best[0]
    for s, v in rates.items():
        print(f"  {label:<6} {s:>9}: {v:7.1f} samples/s")
    verdict = "PASS" if ratio >= 0.8 else "FAIL"
    print(f"  {label:<6} default / best (threads={best[1]}) = {ratio:.2f}  (target >= 0.8: {verdict})")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--load-threads", type=int, default=2, help="threads of the competing job")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from clipkd.data.synthetic import write_csv

    cores = len(os.sched_getaffinity(0))
    settings = ["default"] + [str(n) for n in range(1, cores + 1)] + ["old"]
    print(f"clipkd train, tiny-csv config, batch {args.batch}, {args.steps} steps, {cores} usable cores; "
          f"{_loadavg()}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = write_csv(tmp / "data", 512, size=64)
        idle_load = OtherLoad(children=True)
        idle = measure(data, tmp, settings, args.rounds, args.steps, args.batch)
        print(f"idle machine ({idle_load.report()})")
        r_idle = report("idle", idle)
        load = subprocess.Popen([sys.executable, "-c", LOAD.format(n=args.load_threads)])
        try:
            busy = measure(data, tmp, settings, args.rounds, args.steps, args.batch)
        finally:
            load.kill()
            load.wait()
        print(f"busy machine (a competing job on {args.load_threads} threads)")
        r_busy = report("busy", busy)
    print(f"summary: default/best idle {r_idle:.2f}, busy {r_busy:.2f}")


if __name__ == "__main__":
    main()
