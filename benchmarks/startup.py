"""Start-up time of the `clipkd` commands that need no model (issue: a new user's first hour).

Target: each of these answers in under 1.5 s wall time (median), i.e. imports no torch / open_clip / timm:
  clipkd --help, clipkd train --help, clipkd losses, an argument error (clipkd train --nproc 0) and a config
  error (clipkd train -c bad.yaml: an unknown key, a value out of range, a misspelled recipe).
For reference, ``python -c "import torch"`` alone.

Each command runs as a fresh subprocess (the ``clipkd`` console script next to this interpreter, else
``python -m clipkd``), output discarded, ``HF_HUB_OFFLINE=1``. After ``--warmup`` untimed rounds (file cache),
``--repeats`` timed rounds, the order rotating every round; best and median wall time per command.
Which modules a command imports is checked by ``tests/test_startup.py``; timings live here, not in tests.

Usage: python benchmarks/startup.py [--repeats 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import OtherLoad, _loadavg

TARGET_S = 1.5
BAD_CONFIG = """\
run_dir: runs/bad
teacher: {model: ViT-B-32}
student: {model: clipkd-tiny-vit}
data: {format: csv, train: data.csv, batch_size: 0}
optim: {lrr: 1.0e-3, steps: 10}
distill: {recipe: clipdk}
"""


def clipkd_command() -> list[str]:
    script = Path(sys.executable).with_name("clipkd")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "clipkd"]


def wall_time(argv: list[str], cwd: str, env: dict[str, str], expect: int) -> float:
    t0 = time.perf_counter()
    rc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    dt = time.perf_counter() - t0
    if rc != expect:
        raise SystemExit(f"{' '.join(argv)}: exit status {rc}, expected {expect}")
    return dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="timed runs per command (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    args = p.parse_args()

    clipkd = clipkd_command()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    tmp = tempfile.mkdtemp(prefix="clipkd-startup-")
    Path(tmp, "bad.yaml").write_text(BAD_CONFIG)
    jobs = {  # label: (argv, expected exit status, judged against the target)
        "clipkd --help": (clipkd + ["--help"], 0, True),
        "clipkd train --help": (clipkd + ["train", "--help"], 0, True),
        "clipkd losses": (clipkd + ["losses"], 0, True),
        "clipkd train --nproc 0  (argument error)": (clipkd + ["train", "--nproc", "0"], 2, True),
        "clipkd train -c bad.yaml  (config error)": (clipkd + ["train", "-c", "bad.yaml"], 2, True),
        'python -c "import torch"  (reference)': ([sys.executable, "-c", "import torch"], 0, False),
    }
    names = list(jobs)
    load_start = _loadavg()
    monitor = OtherLoad(children=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        for n in names[r % len(names):] + names[: r % len(names)]:
            argv, expect, _ = jobs[n]
            dt = wall_time(argv, tmp, env, expect)
            if r >= args.warmup:
                times[n].append(dt)
    other = monitor.report()

    print("Start-up time of clipkd commands that need no model")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPU cores; command: {' '.join(clipkd)}")
    print(f"{args.warmup} warm-up round(s) + {args.repeats} timed, interleaved; wall time of the whole subprocess")
    print(f"at start: {load_start}; at end: {_loadavg()}")
    print(other)
    print()
    hdr = f"{'command':<44}{'best s':>9}{'median s':>10}{'target s':>10}  verdict"
    print(hdr)
    print("-" * len(hdr))
    failed = []
    for n in names:
        _, _, judged = jobs[n]
        best, med = min(times[n]), statistics.median(times[n])
        verdict = ("PASS" if med < TARGET_S else "FAIL") if judged else "-"
        if verdict == "FAIL":
            failed.append(n)
        print(f"{n:<44}{best:>9.3f}{med:>10.3f}{(f'{TARGET_S:g}' if judged else '-'):>10}  {verdict}")
    print()
    print(f"{'FAIL' if failed else 'PASS'}: {len(names) - 1 - len(failed)} of {len(names) - 1} commands answer in "
          f"under {TARGET_S:g} s (median)" + (f"; over: {', '.join(failed)}" if failed else ""))


if __name__ == "__main__":
    main()
