"""When a study's numbers are noise: the uncertainty of its mean accuracies and the flags of its report.

The rules (``ablation.md`` states them under its table):

- **Uncertainty** (standard error, SE) of an arm's mean accuracy ``p`` over ``k`` seeds, on a benchmark of ``N``
  examples: ``SE = sqrt(s²/k + p(1-p)/N)``, ``s`` the sample std of the seeds' scores. The first term is the
  seed-to-seed error (needs k ≥ 2), the second the benchmark's sampling error (needs N; it does not shrink with
  more seeds, as every seed is scored on the same images). A term that cannot be computed is left out; with
  neither the SE is unknown (None). The teacher is one model: ``SE = sqrt(t(1-t)/N)`` (0 when N is unknown).
- **A difference** (a gain = arm − baseline; the gap = teacher − baseline; two arms on val):
  ``SE = sqrt(SE_a² + SE_b²)``, as if independent (conservative: both are scored on the same images).
- **Within noise**: ``|difference| < Z·SE`` with ``Z = 2`` (about a 95% interval); an exact tie always is.
- **Shares** of the gap are meaningful only for a gap beyond noise and positive; a share below 0% is *below the
  baseline*, above 100% *beyond the teacher*.
- **Teacher near chance**: ``teacher − chance < max(Z·SE, 5 points)``, the chance level given by the caller
  (1/classes for top-1); no chance level, no check.

The report's words for these (the footnote under the table, one caveat per flag) and the chart's bars are here too.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Optional, Sequence

Z = 2.0  # a difference under Z standard errors is noise
NEAR_CHANCE = 0.05  # a teacher less than this (or Z SE) above chance is near chance
TIE = 1e-12  # two means closer than this are equal


def sampling_var(p: float, n: Optional[int]) -> Optional[float]:
    """The variance of an accuracy ``p`` measured on ``n`` examples, ``p(1-p)/n`` (None when ``n`` is unknown)."""
    return p * (1 - p) / n if n else None


def mean_se(values: Sequence[float], n: Optional[int]) -> Optional[float]:
    """SE of the mean of the seeds' scores ``values`` on a benchmark of ``n`` examples (module rule)."""
    terms = [statistics.variance(values) / len(values)] if len(values) > 1 else []
    sampling = sampling_var(statistics.fmean(values), n)
    terms += [] if sampling is None else [sampling]
    return math.sqrt(sum(terms)) if terms else None


def diff_se(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """SE of a difference of two independent estimates (None when either is unknown)."""
    return None if a is None or b is None else math.hypot(a, b)


def within_noise(diff: float, se: Optional[float]) -> Optional[bool]:
    """Whether ``diff`` is noise: an exact tie, or ``|diff| < Z·se``; None when ``se`` is unknown."""
    if abs(diff) <= TIE:
        return True
    return None if se is None else abs(diff) < Z * se


def near_chance(score: float, chance: Optional[float], se: float) -> bool:
    """Whether a teacher's ``score`` is less than ``max(Z·se, 5 points)`` above ``chance`` (False without one)."""
    return chance is not None and score - chance < max(Z * se, NEAR_CHANCE)


def share_flag(share: Optional[float]) -> Optional[str]:
    """``share_below_baseline`` / ``share_beyond_teacher`` for a share outside 0–100%, else None."""
    if share is None:
        return None
    if share < -TIE:
        return "share_below_baseline"
    return "share_beyond_teacher" if share > 1 + TIE else None


def arm_flags(row: dict[str, Any], is_baseline: bool, gap_ok: bool) -> list[str]:
    """An arm's flags: ``one_seed``, ``gain_within_noise`` and, for a meaningful gap, its share's range flag."""
    flags = ["one_seed"] if len(row["seeds"]) == 1 else []
    if not is_baseline and within_noise(row["gain"], row["gain_se"]):
        flags.append("gain_within_noise")
    share = share_flag(row["share"]) if gap_ok and not is_baseline else None
    return flags + ([share] if share else [])


def val_ties(rows: dict[str, dict[str, Any]], best: Optional[str], baseline: str) -> list[str]:
    """The arms (besides ``best`` and ``baseline``) whose val mean is within noise of the best one's."""
    if best is None:
        return []
    top = rows[best]
    return [a for a, r in rows.items() if a not in (best, baseline)
            and within_noise(top["val"] - r["val"], diff_se(top["val_se"], r["val_se"]))]


def teacher_near_chance(teacher: dict[str, Any], teacher_se: dict[str, float]) -> list[str]:
    """The sides (``val``, ``test``) on which the teacher is near chance."""
    chance = teacher.get("chance") or {}
    return [side for side in ("val", "test") if near_chance(teacher[side], chance.get(side), teacher_se[side])]


def overall_flags(summary: dict[str, Any]) -> list[str]:
    """The study's flags, in the order the report lists them."""
    rows, flags = summary["arms"].values(), []
    if any("one_seed" in r["flags"] for r in rows):
        flags.append("one_seed")
    if not summary["benchmark_size_known"]:
        flags.append("benchmark_size_unknown")
    if summary["gap"] <= TIE:
        flags.append("gap_not_positive")
    elif within_noise(summary["gap"], summary["gap_se"]):
        flags.append("gap_within_noise")
    flags += [f for f in ("gain_within_noise", "share_below_baseline", "share_beyond_teacher")
              if any(f in r["flags"] for r in rows)]
    if summary["tied_on_val"]:
        flags.append("tied_on_val")
    if summary["teacher_near_chance"]:
        flags.append("teacher_near_chance")
    return flags


def gap_ok(gap: float, gap_se: Optional[float]) -> bool:
    """Whether shares of the gap mean something: a positive gap beyond noise (unknown noise counts as beyond)."""
    return gap > TIE and not within_noise(gap, gap_se)


def _pts(x: float, se: Optional[float] = None, sign: str = "") -> str:
    return f"{100 * x:{sign}.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def _names(summary: dict[str, Any], flag: str) -> list[str]:
    return [a for a, r in summary["arms"].items() if flag in r["flags"]]


def caveats(summary: dict[str, Any]) -> list[str]:
    """One sentence per flag of the study (``summary["flags"]``), naming the arms and figures it concerns."""
    arms, base, known = summary["arms"], summary["baseline"], summary["benchmark_size_known"]
    words = {
        "one_seed": f"One seed for {', '.join(_names(summary, 'one_seed'))}: no spread between seeds is measured, "
                    "so " + ("their uncertainty is the benchmark's sampling error alone (a lower bound)." if known
                             else "with the benchmark size unknown they have no uncertainty at all."),
        "benchmark_size_unknown": "Benchmark size unknown: the uncertainties count the seeds' spread alone, not the "
                                  "benchmark's sampling error, so they are too small.",
        "gap_not_positive": f"The teacher does not beat {base} on test (gap {_pts(summary['gap'], sign='+')} points):"
                            " shares of the gap mean nothing and are not shown.",
        "gap_within_noise": f"The gap (teacher - {base} = {_pts(summary['gap'], summary['gap_se'])} points) is "
                            f"within noise: shares of it mean nothing and are not shown (ablation.json keeps them, "
                            "flagged).",
        "gain_within_noise": "Gains within noise (|gain| < 2 SE): " + ", ".join(
            f"{a} ({_pts(arms[a]['gain'], arms[a]['gain_se'], '+')})" for a in _names(summary, "gain_within_noise"))
            + f": not shown to differ from {base}.",
        "share_beyond_teacher": "Shares above 100% (the arm beats the teacher on test): " + ", ".join(
            f"{a} ({arms[a]['share']:.0%})" for a in _names(summary, "share_beyond_teacher")) + ".",
        "share_below_baseline": f"Shares below 0% (the arm is worse than {base} on test): " + ", ".join(
            f"{a} ({arms[a]['share']:.0%})" for a in _names(summary, "share_below_baseline")) + ".",
        "tied_on_val": f"Tied on val with the best, {summary['best_on_val']}: {', '.join(summary['tied_on_val'])} "
                       "(within noise): val does not choose between them; more seeds or a larger val set would.",
        "teacher_near_chance": "The teacher is near chance on " + " and ".join(
            f"{side} ({_pts(summary['teacher'][side])} against chance {_pts(summary['teacher']['chance'][side])})"
            for side in summary["teacher_near_chance"]) + f": less than max(2 SE, {100 * NEAR_CHANCE:.0f} points) "
            "above it, it has little to teach on this task.",
    }
    return [words[f] for f in summary["flags"]]


def shares_shown(summary: dict[str, Any]) -> bool:
    """Whether the report prints shares of the gap: not when the gap is within noise or not positive."""
    return not {"gap_within_noise", "gap_not_positive"} & set(summary.get("flags", []))


def footnote(summary: dict[str, Any]) -> str:
    """How the table's means, SEs and marks are computed (this module's rules), for under the table."""
    base, known = summary["baseline"], summary.get("benchmark_size_known", False)
    se = ("an arm's SE = sqrt(std²/seeds + p(1-p)/N), p its mean and N the benchmark's examples (the teacher's: "
          "sqrt(p(1-p)/N))" if known else "an arm's SE = std/sqrt(seeds) (benchmark size unknown: its sampling "
                                          "error is left out)")
    return (f"val, test: mean ± std over seeds (1 seed: no spread). Gain: test points over {base} ± its standard "
            f"error (SE): {se}; a difference's SE = sqrt(SE_a² + SE_b²); (noise): within noise, |gain| < {Z:g} SE. "
            "Shares of the gap are shown only when the gap itself is beyond noise.")


_SHORT = {"one_seed": "1 seed", "gain_within_noise": "noise", "share_beyond_teacher": "beyond teacher",
          "share_below_baseline": "below baseline", "tied_on_val": "tied on val"}


def ablation_bars(summary: dict[str, Any], arms: Sequence[str]) -> list[dict[str, Any]]:
    """The bars of ``ablation.png`` per arm: ``value`` (the share of the gap in %, or, when shares mean nothing,
    the gain in points: ``unit`` says which), ``err`` (±2 SE on the same scale; the gap taken as exact),
    ``hatch`` (the gain is within noise, of unknown uncertainty, or the gap is noise) and ``note`` (the arm's flags
    in short words, written over the bar)."""
    shares = shares_shown(summary)
    scale = 100 / (abs(summary["gap"]) or 1.0) if shares else 100.0
    bars = []
    for arm in arms:
        r = summary["arms"][arm]
        se = r.get("gain_se")
        bars.append({"arm": arm, "unit": "share" if shares else "points",
                     "value": 100 * (r["share"] or 0) if shares else 100 * r["gain"],
                     "err": 0.0 if se is None else Z * se * scale,
                     "hatch": not shares or se is None or "gain_within_noise" in r.get("flags", []),
                     "note": ", ".join(word for f, word in _SHORT.items() if f in r.get("flags", []))})
    return bars
