"""A study's table (``ablation.md`` / ``ablation.json``) and plots: the gap recovered per arm beside the paper's,
and accuracy versus steps.

The paper's figures (Yang et al., CVPR 2024, Table 1: ViT-B/16 teacher 36.99 → ViT-T/16 student, ImageNet
zero-shot top-1) are on another scale, so both are compared as the share of the teacher–baseline gap recovered:
``(arm - baseline) / (teacher - baseline)``.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from clipkd.ablate import noise
from clipkd.ablate.study import value_label

PAPER = {"teacher": 36.99, "baseline": 30.55, "crd": 31.94, "fd": 34.23, "mfd": 34.09, "gd": 31.54, "icl": 33.11,
         "afd": 31.42, "clipkd": 34.90}


def paper_share(arm: str) -> Optional[float]:
    """The paper's share of the gap recovered by recipe ``arm`` (None for arms the paper has no figure of)."""
    if arm not in PAPER or arm in ("teacher",):
        return None
    return (PAPER[arm] - PAPER["baseline"]) / (PAPER["teacher"] - PAPER["baseline"])


def _mean_std(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample std (None for one value: no spread)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _arm_row(runs: list[dict], n: dict[str, Any], base_test: float, gap: float) -> dict[str, Any]:
    """One arm's means, stds and SEs (:mod:`clipkd.ablate.noise`), gain and share; cost and flags come later."""
    vals, tests = [r["val"] for r in runs], [r["test"] for r in runs]
    (val, val_sd), (test, test_sd) = _mean_std(vals), _mean_std(tests)
    return {"seeds": [r["seed"] for r in runs], "val": val, "val_std": val_sd,
            "val_se": noise.mean_se(vals, n.get("val")), "test": test, "test_std": test_sd,
            "test_se": noise.mean_se(tests, n.get("test")),
            "gain": test - base_test, "share": (test - base_test) / gap if abs(gap) > noise.TIE else None}


def summarise(results: dict[str, list[dict]], teacher: dict[str, Any], baseline: str) -> dict[str, Any]:
    """Per arm (in study order): val and test mean ± std over seeds and their standard errors, the test gain over
    ``baseline`` ± its SE, the share of the teacher–baseline gap, the paper's share, the cost per step relative to
    ``baseline`` (from each arm's fastest run: the one least disturbed by anything else on the machine, as timers
    take the best of repeats) and the arm's noise flags; plus the arm best on val, the arms tied with it, and the
    study's flags (rules: :mod:`clipkd.ablate.noise`).

    ``teacher``: ``{"val": score, "test": score}``, optionally ``"n": {"val": int, "test": int}`` (benchmark
    sizes; without them the SEs count the seeds alone) and ``"chance": {"val": float|None, "test": ...}``."""
    n = teacher.get("n") or {}
    base = results[baseline]
    base_test = statistics.fmean(r["test"] for r in base)
    base_speed = max((r["samples_per_s"] for r in base if r.get("samples_per_s")), default=None)
    gap = teacher["test"] - base_test
    rows = {arm: _arm_row(runs, n, base_test, gap) for arm, runs in results.items()}
    teacher_se = {side: math.sqrt(noise.sampling_var(teacher[side], n.get(side)) or 0.0) for side in ("val", "test")}
    gap_se = noise.diff_se(teacher_se["test"], rows[baseline]["test_se"])
    meaningful = noise.gap_ok(gap, gap_se)
    for arm, row in rows.items():
        speeds = [r["samples_per_s"] for r in results[arm] if r.get("samples_per_s")]
        gain_se = None if arm == baseline else noise.diff_se(row["test_se"], rows[baseline]["test_se"])
        row.update(gain_se=gain_se, paper_share=paper_share(arm),
                   cost=base_speed / max(speeds) if speeds and base_speed else None)
        row["flags"] = noise.arm_flags(row, arm == baseline, meaningful)
    best = max((a for a in rows if a != baseline), key=lambda a: rows[a]["val"], default=None)
    ties = noise.val_ties(rows, best, baseline)
    for arm in ties + ([best] if ties else []):
        rows[arm]["flags"].append("tied_on_val")
    summary = {"teacher": teacher, "baseline": baseline, "gap": gap, "gap_se": gap_se, "teacher_se": teacher_se,
               "benchmark_size_known": bool(n.get("val") and n.get("test")), "arms": rows, "best_on_val": best,
               "tied_on_val": ties, "teacher_near_chance": noise.teacher_near_chance(teacher, teacher_se),
               "noise_rule": {"z": noise.Z, "near_chance": noise.NEAR_CHANCE}}
    summary["flags"] = noise.overall_flags(summary)
    return summary


def sweep_summary(sweeps: dict[str, dict[str, Any]], summary: dict[str, Any]) -> dict[str, Any]:
    """Per sweep, its points sorted by value: ``{"key", "arm", "points": [{"value", "arm", "val", "test",
    "share", "seeds", "flags"}]}``. ``sweeps[name]`` gives ``key``, ``arm`` and ``points`` (value -> arm name), the
    swept arm itself included under its own value when that is known."""
    out = {}
    for name, sw in sweeps.items():
        points = [{"value": v, "arm": arm, **{k: summary["arms"][arm][k] for k in ("val", "test", "share", "seeds")},
                   "flags": summary["arms"][arm].get("flags", [])} for v, arm in sw["points"] if arm in summary["arms"]]
        out[name] = {"key": sw["key"], "arm": sw["arm"], "points": sorted(points, key=lambda p: p["value"])}
    return out


def _pct(x: Optional[float], sd: Optional[float] = None) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _mean(x: float, sd: Optional[float], seeds: int) -> str:
    """A mean over seeds: ``± std``, or ``(1 seed)`` where there is no spread."""
    return f"{_pct(x)} (1 seed)" if seeds == 1 else _pct(x, sd)


def _share(x: Optional[float], flags: Sequence[str] = (), shown: bool = True) -> str:
    """A share of the gap, named when outside 0–100%; ``-`` when unknown or not shown (the gap is noise)."""
    if x is None or not shown:
        return "-"
    words = {"share_beyond_teacher": " (beyond the teacher)", "share_below_baseline": " (below the baseline)"}
    return f"{round(x, 2) + 0.0:.0%}" + "".join(words[f] for f in flags if f in words)  # no "-0%"


def _gain(r: dict[str, Any]) -> str:
    se = r.get("gain_se")
    return (f"{100 * r['gain']:+.1f}" + ("" if se is None else f" ± {100 * se:.1f}")
            + (" (noise)" if "gain_within_noise" in r.get("flags", []) else ""))


def sweep_markdown(sweeps: dict[str, Any], metric: str, shares_shown: bool = True) -> str:
    """One table per sweep: each value's val and test metric (mean over its seeds) and share of the gap."""
    lines = []
    for name, sw in sweeps.items():
        lines += ["", f"### Sweep `{name}`: `{sw['key']}` on `{sw['arm']}`", "",
                  f"| {sw['key']} | val {metric} | test {metric} | share of gap | seeds |", "|---|---|---|---|---|"]
        lines += [f"| {value_label(p['value'])}{' (the arm)' if p['arm'] == sw['arm'] else ''} | {_pct(p['val'])} | "
                  f"{_pct(p['test'])} | {_share(p['share'], p.get('flags', []), shares_shown)} | {len(p['seeds'])} |"
                  for p in sw["points"]]
    return "\n".join(lines) + ("\n" if lines else "")


def _headline(summary: dict[str, Any], metric: str) -> str:
    """The teacher (and chance), the gap ± SE, and the arm best on val with the arms tied with it."""
    t, flags = summary["teacher"], summary.get("flags", [])
    chance = (t.get("chance") or {}).get("test")
    gap = _pct(summary["gap"], summary.get("gap_se")) + " points" + (" (within noise)" if "gap_within_noise" in flags
                                                                     else "")
    ties = summary.get("tied_on_val", [])
    best = f"`{summary['best_on_val']}`" + (f", tied with {', '.join(f'`{a}`' for a in ties)} (within noise)"
                                           if ties else "")
    return (f"Teacher: val {_pct(t['val'])}, test {_pct(t['test'])} ({metric}, %"
            f"{'' if chance is None else f'; chance {_pct(chance)}'}). Gap = teacher - {summary['baseline']} on test"
            f" = {gap}. Best on val: {best}.")


def markdown(summary: dict[str, Any], metric: str) -> str:
    """The study's table, its footnote and a Caveats paragraph (each noise flag in words)."""
    shown = noise.shares_shown(summary)
    lines = [_headline(summary, metric), "",
             f"| arm | val {metric} | test {metric} | gain ± SE (points) | share of gap | paper's share | "
             "cost per step | seeds |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in summary["arms"].items():
        n, flags = len(r["seeds"]), r.get("flags", [])
        paper = "-" if r["paper_share"] is None else f"{r['paper_share']:.0%}"
        cost = "-" if r["cost"] is None else f"{r['cost']:.2f}"
        lines.append(f"| {arm} | {_mean(r['val'], r['val_std'], n)} | {_mean(r['test'], r['test_std'], n)} | "
                     f"{_gain(r)} | {_share(r['share'], flags, shown)} | {paper} | {cost} | {n} |")
    lines += ["", noise.footnote(summary) + f" Cost per step = {summary['baseline']}'s samples/s ÷ the arm's "
              "(training from the same data, measured in the same study; each arm's fastest run).", ""]
    if "flags" in summary:
        found = noise.caveats(summary)
        lines += ["**Caveats**: none (no flag raised)." if not found else "**Caveats**:"] + [f"- {c}" for c in found]
    return "\n".join(lines) + "\n" + sweep_markdown(summary.get("sweeps", {}), metric, shown)


def _ablation_plot(summary: dict[str, Any], arms: list[str], path: Path, figure) -> Path:
    """Share of the gap per arm beside the paper's (or the gain in points when the gap is noise), ±2 SE."""
    bars = noise.ablation_bars(summary, arms)
    shares = noise.shares_shown(summary)
    fig = figure(figsize=(max(6, 0.8 * len(arms)), 4.8))
    ax = fig.add_subplot()
    xs = range(len(arms))
    width, shift = (0.4, 0.2) if shares else (0.6, 0.0)
    drawn = ax.bar([x - shift for x in xs], [b["value"] for b in bars], width, label="this study (±2 SE)",
                   yerr=[b["err"] for b in bars], capsize=3)
    for patch, bar in zip(drawn, bars):
        if bar["hatch"]:
            patch.set_hatch("//")
            patch.set_alpha(0.45)
        if bar["note"]:
            end = bar["value"] + (bar["err"] if bar["value"] >= 0 else -bar["err"])
            ax.annotate(bar["note"], (patch.get_x() + patch.get_width() / 2, end), ha="center", fontsize="x-small",
                        va="bottom" if bar["value"] >= 0 else "top", xytext=(0, 2 if bar["value"] >= 0 else -2),
                        textcoords="offset points")
    if shares:
        ax.bar([x + shift for x in xs], [100 * (summary["arms"][a]["paper_share"] or 0) for a in arms], width,
               label="paper (ViT-B/16 → ViT-T/16, ImageNet)")
        ax.axhline(100, color="grey", linestyle="--", linewidth=0.7, label="the teacher (100%)")
    ax.set_xticks(list(xs), arms, rotation=30, ha="right")
    ax.set_ylabel("share of the teacher-baseline gap (%)" if shares else f"gain over {summary['baseline']} (points)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.margins(y=0.15)  # room for the notes over the bars
    notes = ["hatched: within noise (|gain| < 2 SE) or no uncertainty"]
    notes += [] if shares else ["the gap is noise or not positive: gains shown, not shares"]
    notes += ["teacher near chance"] if summary.get("teacher_near_chance") else []
    ax.set_title("\n".join(notes), fontsize="small")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plots(summary: dict[str, Any], results: dict[str, list[dict]], out: Path) -> list[Path]:
    """``ablation.png`` (share of the gap, ours beside the paper's; flagged arms hatched), ``curves.png`` (test
    metric vs steps) and, with sweeps, ``sweeps.png`` (val and test metric against each sweep's values); sweep
    values are left out of the first two."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    swept = {p["arm"] for sw in summary.get("sweeps", {}).values() for p in sw["points"] if p["arm"] != sw["arm"]}
    results = {a: r for a, r in results.items() if a not in swept}
    arms = [a for a in summary["arms"] if a != summary["baseline"] and a not in swept]
    _ablation_plot(summary, arms, out / "ablation.png", Figure)
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
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 8:  # ticks at the swept values, no log grid's labels
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(xs, [value_label(x) for x in xs], fontsize="small")
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel(sw["key"])
        ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
