"""The demo's target: over 3 seeds, does the distilled student beat the baseline by more than the spread?

Runs `clipkd demo` (full, or --quick) for each seed into OUT/seed<N> (data and teacher shared in --work),
reusing a seed's existing report.json,
then prints zero-shot top-1 (mean ± std over seeds) for teacher, baseline and clipkd, the per-seed gain,
and the share of the teacher-baseline gap that distillation recovers.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from clipkd.commands.demo import run_demo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo-seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--work", help="where the shards and the teacher are cached (default: --out)")
    args = ap.parse_args()
    base = Path(args.out)
    work = Path(args.work) if args.work else base
    reports = {}
    for seed in args.seeds:
        path = base / f"seed{seed}" / "report.json"
        if path.is_file():
            reports[seed] = json.loads(path.read_text())
        else:
            reports[seed] = run_demo(base / f"seed{seed}", quick=args.quick, seed=seed, work=work, log=lambda m: None)
    rows = {}
    print(f"{'seed':>6} {'teacher':>8} {'baseline':>9} {'clipkd':>7} {'gain':>6} {'gap rec.':>8} {'seconds':>8}")
    for seed, r in reports.items():
        t, b, c = (r[k]["zeroshot_top1"] for k in ("teacher", "baseline", "clipkd"))
        rows[seed] = (t, b, c)
        print(f"{seed:>6} {100*t:8.1f} {100*b:9.1f} {100*c:7.1f} {100*(c-b):6.1f} {(c-b)/(t-b):8.0%} "
              f"{r['setup']['seconds']:8.0f}")
    cols = list(zip(*rows.values()))
    mean = [statistics.mean(c) for c in cols]
    std = [statistics.stdev(c) if len(c) > 1 else 0.0 for c in cols]
    print("mean ± std: " + ", ".join(f"{n} {100*m:.1f} ± {100*s:.1f}"
                                     for n, m, s in zip(("teacher", "baseline", "clipkd"), mean, std)))
    gain, spread = mean[2] - mean[1], max(std[1], std[2])
    print(f"gain {100*gain:.1f} points vs seed spread {100*spread:.1f}: "
          f"{'PASS' if gain > spread else 'FAIL'}; gap recovered {(mean[2]-mean[1])/(mean[0]-mean[1]):.0%}")


if __name__ == "__main__":
    main()
