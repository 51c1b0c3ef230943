"""Weight inheritance at the demo's scale (issue 26): an inherited student against random initialisation, the same
budget and recipe, 3 seeds.

Uses the demo's data (``clipkd demo`` writes it: ``--base`` is the demo's ``ablation-base.yaml``, whose data, steps
and benchmarks are kept). A ViT teacher (``clipkd-tiny-teacher``: 4 layers of width 256, 48 px) is trained first on
the demo's training pairs with the task loss alone (``--teacher-steps``); then for each seed two students
``clipkd-tiny-vit`` (4 layers of width 192 and text width 128, 32 px) distil from it online with the clipkd
recipe for ``--steps`` steps: one from random weights, one with ``student.inherit: {}`` (every layer, the most
important channels, heads and units), both normalising images as the teacher does (ImageNet statistics: the
inherited patch embedding was trained on those). Prints the Fashion-MNIST test zero-shot top-1 of the teacher
and of each student, mean and std over seeds, and the inherited students' gain.

    python benchmarks/inherit_vs_random.py --base runs/demo/ablation-base.yaml --out runs/inherit
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import yaml  # noqa: E402

from clipkd.cli import main as cli  # noqa: E402
from clipkd.engine.logger import read_metrics  # noqa: E402

IMAGENET = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}  # the teacher's normalisation
PREFIX = "eval/fashion-mnist/"  # the demo's test benchmark; its top-1 zero-shot accuracy


def run(base: dict, out: Path, name: str, **changes) -> float:
    """Train one run (``changes``: top-level sections replaced) unless it finished before; its test top-1."""
    run_dir = out / name
    if not (run_dir / "metrics.jsonl").exists() or not _top1(run_dir):
        cfg = {**base, **changes, "run_dir": str(run_dir)}
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert cli(["train", "-c", str(path), "--overwrite"]) == 0, name
    top1 = _top1(run_dir)
    if not top1:
        raise SystemExit(f"{name}: no test accuracy (stopped early?); run again to redo it")
    return top1


def _top1(run_dir: Path) -> float:
    found = [v for r in read_metrics(run_dir, "eval") for k, v in r.items()
             if k.startswith(PREFIX) and k.endswith("/acc1")]
    return 100 * found[-1] if found else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="runs/demo/ablation-base.yaml")
    ap.add_argument("--out", default="runs/inherit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--steps", type=int, default=120)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.base).read_text())
    base["eval"]["benchmarks"] = [b for b in base["eval"]["benchmarks"] if b["name"] == "fashion-mnist"]
    optim = lambda steps: {**base["optim"], "steps": steps, "warmup_steps": min(40, steps // 10)}  # noqa: E731
    checkpoint = lambda steps: {"every_steps": steps, "keep_last": 1}  # noqa: E731
    teacher_top1 = run(base, out, "teacher", teacher=None, student={"model": "clipkd-tiny-teacher"},
                       distill={"recipe": "baseline"}, optim=optim(args.teacher_steps),
                       checkpoint=checkpoint(args.teacher_steps))
    weights = out / "teacher" / "checkpoints" / f"step_{args.teacher_steps:08d}" / "student.safetensors"
    teacher = {"model": "clipkd-tiny-teacher", "pretrained": str(weights)}
    results: dict[str, list[float]] = {"random": [], "inherited": []}
    for seed in args.seeds:
        for kind in results:
            student = {"model": "clipkd-tiny-vit", **IMAGENET, **({"inherit": {}} if kind == "inherited" else {})}
            results[kind].append(run(base, out, f"{kind}-seed{seed}", seed=seed, teacher=teacher, student=student,
                                     distill={"recipe": "clipkd"}, optim=optim(args.steps),
                                     checkpoint=checkpoint(args.steps)))
    print(f"teacher clipkd-tiny-teacher ({args.teacher_steps} steps, task loss): zero-shot top-1 {teacher_top1:.1f}")
    print(f"students clipkd-tiny-vit, clipkd recipe from it, {args.steps} steps, seeds {args.seeds}:")
    for kind, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {kind:<10} {statistics.mean(values):5.1f} ± {spread:.1f}   per seed " +
              ", ".join(f"{v:.1f}" for v in values))
    gains = [a - b for a, b in zip(results["inherited"], results["random"])]
    print(f"gain of inheritance {statistics.mean(gains):+.1f} points (per seed " +
          ", ".join(f"{g:+.1f}" for g in gains) + ")")
    (out / "summary.json").write_text(json.dumps({"teacher": teacher_top1, **results}, indent=1))


if __name__ == "__main__":
    main()
