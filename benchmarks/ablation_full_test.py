"""The finished runs of the demo's ablation studies re-measured on all 10,000 Fashion-MNIST test images (issue 14).

The studies before issue 27 reported on the demo's 1,000-image test split (one run's accuracy has a sampling
error of about 1.3 points there); since issue 27 they report on all 10,000 images themselves, and this script is
the record of the earlier ones. This evaluates the final checkpoint of each listed arm's runs, and the teacher, with
`clipkd eval` on the whole t10k split (single items, the demo's prompts and class names) and prints each arm's
accuracy, mean ± std over seeds and share of the teacher–baseline gap, beside the 1,000-image figures of its
runs' ``result.json``. Nothing here chooses a setting: the arms are the ones the studies chose on val.

    python benchmarks/ablation_full_test.py --runs runs/ablation/runs --arms baseline clipkd fd-weight=500
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipkd.demo.fmnist import (TEST_PAIR_TEMPLATES, TEST_TEMPLATES, _seed, load_split, make_split,  # noqa: E402
                                write_shards)

FULL = 10_000


def full_test_benchmark(demo: Path, folder: Path) -> Path:
    """A benchmarks YAML: the demo's test zero-shot benchmark over all t10k images (shards written once)."""
    shards = folder / "test_zeroshot_full"
    if not list(shards.glob("shard-*.tar")):
        images, labels = load_split(None, "test")
        samples = make_split(images, labels, count=len(images), scene_fraction=0.0, seed=_seed(0, 3),
                             key_prefix="test_zeroshot", templates=TEST_TEMPLATES, pair_templates=TEST_PAIR_TEMPLATES)
        write_shards(samples, shards)
    base = yaml.safe_load((demo / "ablation-base.yaml").read_text())
    (spec,) = [b for b in base["eval"]["benchmarks"] if b["name"] == "fashion-mnist"]
    spec.update(name="fashion-mnist-full", path=sorted(str(p.resolve()) for p in shards.glob("shard-*.tar")),
                workers=2)
    path = folder / "benchmarks.yaml"
    path.write_text(yaml.safe_dump([spec]))
    return path


def evaluate(run: Path, benchmarks: Path, out: Path, side: str = "student") -> float:
    """Top-1 of the run's final student (or its teacher) on the full test split, kept in ``out`` once measured;
    the teacher once for all runs that share it (kept under its model and weights)."""
    if side == "teacher":
        t = yaml.safe_load((run / "config.yaml").read_text())["teacher"]
        name = "teacher-" + hashlib.sha256(json.dumps([t["model"], t.get("pretrained")]).encode()).hexdigest()[:12]
    else:
        name = f"{run.name}-{side}"
    target = out / f"{name}.json"
    if not target.is_file():
        subprocess.run([sys.executable, "-m", "clipkd", "eval", "--run", str(run), "--side", side, "--benchmarks",
                        str(benchmarks), "--out", str(out / "eval" / name)], check=True, stdout=subprocess.DEVNULL)
        (found,) = (out / "eval" / name).rglob("*fashion-mnist-full*.json")
        target.write_text(found.read_text())
    return float(json.loads(target.read_text())["metrics"]["acc1"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", type=Path, default=Path("runs/demo"))
    p.add_argument("--runs", type=Path, default=Path("runs/ablation/runs"))
    p.add_argument("--arms", nargs="+", required=True, help="the first is the baseline")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/ablation-full-test"))
    args = p.parse_args()
    if len(args.arms) < 2:
        p.error("give the baseline and at least one distilled arm (its runs name the teacher to measure)")
    args.out.mkdir(parents=True, exist_ok=True)
    benchmarks = full_test_benchmark(args.demo, args.out)
    first = args.runs / f"{args.arms[0]}-seed{args.seeds[0]}"
    teacher = evaluate(args.runs / f"{args.arms[1]}-seed{args.seeds[0]}", benchmarks, args.out, side="teacher")
    rows = {}
    for arm in args.arms:
        runs = [args.runs / f"{arm}-seed{s}" for s in args.seeds]
        full = [100 * evaluate(r, benchmarks, args.out) for r in runs]
        small = [100 * json.loads((r / "result.json").read_text())["test"] for r in runs]
        rows[arm] = (full, small)
    base_full, base_small = (statistics.mean(v) for v in rows[args.arms[0]])
    teacher_small = 100 * json.loads((first.parent.parent / "teacher.json").read_text())["scores"]["test"] \
        if (first.parent.parent / "teacher.json").is_file() else float("nan")
    print(f"teacher: {100 * teacher:.2f} on {FULL} test images ({teacher_small:.1f} on the study's test split)")
    print("| arm | 10k test, per seed | 10k mean ± std | share of gap (10k) | 1k test mean | share (1k) |")
    print("|---|---|---|---|---|---|")
    for arm, (full, small) in rows.items():
        share = (statistics.mean(full) - base_full) / (100 * teacher - base_full)
        share_small = (statistics.mean(small) - base_small) / (teacher_small - base_small)
        print(f"| {arm} | {', '.join(f'{v:.2f}' for v in full)} | {statistics.mean(full):.2f} ± "
              f"{statistics.stdev(full) if len(full) > 1 else 0:.2f} | {share:.0%} | {statistics.mean(small):.1f} | "
              f"{share_small:.0%} |")


if __name__ == "__main__":
    main()
