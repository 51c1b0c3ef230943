"""A study's table (``ablation.md`` / ``ablation.json``) and plots: the gap recovered per arm beside the paper's,
and accuracy versus steps.

The paper's figures (Yang et al., CVPR 2024, Table 1: ViT-B/16 teacher 36.99 → ViT-T/16 student, ImageNet
zero-shot top-1) are on another scale, so both are compared as the share of the teacher–baseline gap recovered:
``(arm - baseline) / (teacher - baseline)``.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from clipkd.ablate.study import value_label

PAPER = {"teacher": 36.99, "baseline": 30.55, "crd": 31.94, "fd": 34.23, "mfd": 34.09, "gd": 31.54, "icl": 33.11,
         "afd": 31.42, "clipkd": 34.90}


def paper_share(arm: str) -> Optional[float]:
    """The paper's share of the gap recovered by recipe ``arm`` (None for arms the paper has no figure of)."""
    if arm not in PAPER or arm in ("teacher",):
        return None
    return (PAPER[arm] - PAPER["baseline"]) / (PAPER["teacher"] - PAPER["baseline"])


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[str, list[dict]], teacher: dict[str, float], baseline: str) -> dict[str, Any]:
    """Per arm (in study order): val and test mean ± std over seeds, the test gain over ``baseline``, the share of
    the teacher–baseline gap, the paper's share, and the cost per step relative to ``baseline`` (from each arm's
    fastest run: the one least disturbed by anything else on the machine, as timers take the best of repeats);
    plus the arm that is best on val."""
    base = results[baseline]
    base_test = statistics.fmean(r["test"] for r in base)
    base_speed = max((r["samples_per_s"] for r in base if r.get("samples_per_s")), default=None)
    gap = teacher["test"] - base_test
    rows = {}
    for arm, runs in results.items():
        (val, val_sd), (test, test_sd) = _mean_std([r["val"] for r in runs]), _mean_std([r["test"] for r in runs])
        speeds = [r["samples_per_s"] for r in runs if r.get("samples_per_s")]
        rows[arm] = {"seeds": [r["seed"] for r in runs], "val": val, "val_std": val_sd, "test": test,
                     "test_std": test_sd, "gain": test - base_test, "share": (test - base_test) / gap if gap else None,
                     "paper_share": paper_share(arm),
                     "cost": base_speed / max(speeds) if speeds and base_speed else None}
    best = max((a for a in rows if a != baseline), key=lambda a: rows[a]["val"], default=None)
    return {"teacher": teacher, "baseline": baseline, "gap": gap, "arms": rows, "best_on_val": best}


def sweep_summary(sweeps: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Per sweep, its points sorted by value: ``{"key", "arm", "points": [{"value", "arm", "val", "test",
    "share", "seeds"}]}``. ``sweeps[name]`` gives ``key``, ``arm`` and ``points`` (value -> arm name), the swept
    arm itself included under its own value when that is known."""
    out = {}
    for name, sw in sweeps.items():
        points = [{"value": v, "arm": arm, **{k: summary["arms"][arm][k] for k in ("val", "test", "share", "seeds")}}
                  for v, arm in sw["points"] if arm in summary["arms"]]
        out[name] = {"key": sw["key"], "arm": sw["arm"], "points": sorted(points, key=lambda p: p["value"])}
    return out


def _pct(x: Optional[float], sd: Optional[float] = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _share(x: Optional[float]) -> str:
    return "-" if x is None else f"{round(x, 2) + 0.0:.0%}"  # no "-0%"


def sweep_markdown(sweeps: dict[str, Any], metric: str) -> str:
    """One table per sweep: each value's val and test metric (mean over its seeds) and share of the gap."""
    lines = []
    for name, sw in sweeps.items():
        lines += ["", f"### Sweep `{name}`: `{sw['key']}` on `{sw['arm']}`", "",
                  f"| {sw['key']} | val {metric} | test {metric} | share of gap | seeds |", "|---|---|---|---|---|"]
        lines += [f"| {value_label(p['value'])}{' (the arm)' if p['arm'] == sw['arm'] else ''} | {_pct(p['val'])} | "
                  f"{_pct(p['test'])} | {_share(p['share'])} | {len(p['seeds'])} |" for p in sw["points"]]
    return "\n".join(lines) + ("\n" if lines else "")


def markdown(summary: dict[str, Any], metric: str) -> str:
    """The study's table."""
    t = summary["teacher"]
    lines = [f"Teacher: val {_pct(t['val'])}, test {_pct(t['test'])} ({metric}, %). Gap = teacher - "
             f"{summary['baseline']} on test = {100 * summary['gap']:.1f} points. Best on val: "
             f"`{summary['best_on_val']}`.", "",
             f"| arm | val {metric} | test {metric} | gain (points) | share of gap | paper's share | cost per step | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, r in summary["arms"].items():
        share = _share(r["share"])
        paper = "-" if r["paper_share"] is None else f"{r['paper_share']:.0%}"
        cost = "-" if r["cost"] is None else f"{r['cost']:.2f}"
        lines.append(f"| {arm} | {_pct(r['val'], r['val_std'])} | {_pct(r['test'], r['test_std'])} | "
                     f"{100 * r['gain']:+.1f} | {share} | {paper} | {cost} | {len(r['seeds'])} |")
    lines += ["", f"Mean ± std over seeds; cost per step = {summary['baseline']}'s samples/s ÷ the arm's (training "
              "from the same data, measured in the same study; each arm's fastest run)."]
    return "\n".join(lines) + "\n" + sweep_markdown(summary.get("sweeps", {}), metric)


def plots(summary: dict[str, Any], results: dict[str, list[dict]], out: Path) -> list[Path]:
    """``ablation.png`` (share of the gap, ours beside the paper's), ``curves.png`` (test metric vs steps) and,
    with sweeps, ``sweeps.png`` (val and test metric against each sweep's values); sweep values are left out of the
    first two."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    swept = {p["arm"] for sw in summary.get("sweeps", {}).values() for p in sw["points"] if p["arm"] != sw["arm"]}
    results = {a: r for a, r in results.items() if a not in swept}
    arms = [a for a in summary["arms"] if a != summary["baseline"] and a not in swept]
    fig = Figure(figsize=(max(6, 0.8 * len(arms)), 4.5))
    ax = fig.add_subplot()
    xs = range(len(arms))
    gap = summary["gap"] or 1.0
    ax.bar([x - 0.2 for x in xs], [100 * (summary["arms"][a]["share"] or 0) for a in arms], 0.4, label="this study",
           yerr=[100 * summary["arms"][a]["test_std"] / abs(gap) for a in arms], capsize=3)  # seed spread
    ax.bar([x + 0.2 for x in xs], [100 * (summary["arms"][a]["paper_share"] or 0) for a in arms], 0.4,
           label="paper (ViT-B/16 → ViT-T/16, ImageNet)")
    ax.set_xticks(list(xs), arms, rotation=30, ha="right")
    ax.set_ylabel("share of the teacher-baseline gap (%)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    for arm, runs in results.items():
        steps = [p["step"] for p in runs[0]["curve"]]
        means = [statistics.fmean(r["curve"][i]["test"] for r in runs if i < len(r["curve"])) for i in range(len(steps))]
        ax.plot(steps, [100 * m for m in means], marker=".", label=arm)
    ax.axhline(100 * summary["teacher"]["test"], color="black", linestyle="--", label="teacher")
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    written = [out / "ablation.png", out / "curves.png"]
    if summary.get("sweeps"):
        written.append(_sweep_plot(summary, out / "sweeps.png", Figure))
    return written


def _sweep_plot(summary: dict[str, Any], path: Path, figure) -> Path:
    sweeps = summary["sweeps"]
    fig = figure(figsize=(4 * len(sweeps), 3.5))
    base, teacher = summary["arms"][summary["baseline"]]["test"], summary["teacher"]["test"]
    for i, (name, sw) in enumerate(sweeps.items()):
        ax = fig.add_subplot(1, len(sweeps), i + 1)
        xs = [p["value"] for p in sw["points"]]
        if not all(isinstance(x, (int, float)) for x in xs):  # e.g. teacher caches: one position per value
            ax.set_xticks(range(len(xs)), [value_label(x) for x in xs], rotation=30, ha="right")
            xs = list(range(len(xs)))
        for side in ("val", "test"):
            ax.plot(xs, [100 * p[side] for p in sw["points"]], marker="o", label=side)
        ax.axhline(100 * base, color="grey", linestyle=":", label=f"{summary['baseline']} (test)")
        ax.axhline(100 * teacher, color="black", linestyle="--", label="teacher (test)")
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:
            ax.set_xscale("log")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(sw["key"])
        ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
