"""Wall time of one study trained run after run (``--jobs 1``) and with runs at once (``--jobs N``), side by side.

The same study (the demo's base run, ``--recipes`` × seed 0, ``--steps`` each, evaluations included) runs from
scratch into temporary folders: first in turn, then with each ``--jobs`` value. Prints the wall times and their
ratios, and checks that every way gave every run a result. Needs the demo's files (``clipkd demo``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def study_file(folder: Path, base: Path, recipes: list[str], steps: int) -> Path:
    raw = yaml.safe_load(base.read_text())
    raw["optim"].update(steps=steps, warmup_steps=min(raw["optim"].get("warmup_steps", 0), steps // 4))
    raw["checkpoint"]["every_steps"] = steps
    (folder / "base.yaml").write_text(yaml.safe_dump(raw))
    study = {"base": "base.yaml", "out": "out", "recipes": recipes, "seeds": [0], "curve_points": 2,
             "select": {"val": "fashion-mnist-val", "test": "fashion-mnist"}}
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def timed_study(folder: Path, args, jobs: int) -> float:
    folder.mkdir()
    path = study_file(folder, args.base, args.recipes, args.steps)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipkd", "ablate", "-c", str(path), "--jobs", str(jobs)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    results = list((folder / "out" / "runs").glob("*/result.json"))
    assert len(results) == len(args.recipes), f"--jobs {jobs}: {len(results)} of {len(args.recipes)} runs finished"
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", type=Path, default=Path("runs/demo/ablation-base.yaml"), help="a study's base run")
    p.add_argument("--recipes", nargs="+", default=["baseline", "fd", "crd", "clipkd"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--jobs", type=int, nargs="+", default=[2], help="the --jobs values compared with 1")
    args = p.parse_args()
    if not args.base.is_file():
        sys.exit(f"{args.base} not found: run `clipkd demo --out runs/demo` first (it writes the base run)")
    with tempfile.TemporaryDirectory() as tmp:
        in_turn = timed_study(Path(tmp) / "jobs-1", args, 1)
        at_once = {jobs: timed_study(Path(tmp) / f"jobs-{jobs}", args, jobs) for jobs in args.jobs}
    print(f"study of {len(args.recipes)} runs x {args.steps} steps, {os.cpu_count()} cores: in turn {in_turn:.0f} s")
    for jobs, seconds in at_once.items():
        print(f"  --jobs {jobs}: {seconds:.0f} s -> {in_turn / seconds:.2f}x faster")


if __name__ == "__main__":
    main()
