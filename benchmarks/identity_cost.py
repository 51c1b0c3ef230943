"""What identifying a run's inputs by content costs at start-up: `run_inputs` of a run config, with an empty digest
table (first start on this machine) and with the table filled (every later start), side by side.

Usage: python benchmarks/identity_cost.py [RUN.yaml] [--repeats N]
(default: the demo's `runs/demo/ablation-base.yaml`, written by `clipkd demo`). Each measurement runs in a fresh
process, so nothing is remembered in memory between them; only the SQLite table under CLIPKD_CACHE_DIR carries over.
The libraries training imports anyway (torch, open_clip) are imported before the clock starts.
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

ONE = """
import json, sys, time
import clipkd.eval.runner  # torch, open_clip, webdataset: imported by training anyway, not timed here
from clipkd.config import load_config
from clipkd.build.inputs import run_inputs
cfg = load_config(sys.argv[1])
t = time.perf_counter()
inputs = run_inputs(cfg)
print(json.dumps({"seconds": time.perf_counter() - t, "inputs": inputs}))
"""


def measure(config: str, cache: str) -> dict:
    env = {**os.environ, "CLIPKD_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", ONE, config], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default="runs/demo/ablation-base.yaml")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not Path(args.config).is_file():
        sys.exit(f"{args.config}: not found (run `clipkd demo` first, or name a run config)")
    cold, warm = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="clipkd-digests-") as cache:
            first = measure(args.config, cache)
            cold.append(first["seconds"])
            again = measure(args.config, cache)
            warm.append(again["seconds"])
            assert again["inputs"] == first["inputs"]  # the table gives the same identity
    inputs = first["inputs"]
    print(f"run config: {args.config}")
    print(f"inputs identified: {', '.join(inputs)} (benchmarks: {', '.join(inputs.get('benchmarks', {}))})")
    print(f"run_inputs, empty digest table: median {statistics.median(cold):.3f} s ({args.repeats} runs)")
    print(f"run_inputs, filled digest table: median {statistics.median(warm):.3f} s")
    print(f"ratio filled / empty: {statistics.median(warm) / statistics.median(cold):.2f}")


if __name__ == "__main__":
    main()
