"""The ablation report says when its numbers are noise (issue 23 §4), and study YAML typos get a did-you-mean.

Expected uncertainties are recomputed by hand with numpy: SE of a mean accuracy p over k seeds on N examples is
sqrt(s²/k + p(1-p)/N); a difference's SE is the root of the sum of squares; "within noise" is |d| < 2 SE.
"""

import json

import numpy as np
import pytest
import yaml

from clipkd.ablate.report import markdown, plots, summarise


def _results(arms):
    """``{arm: [(val, test), ...]}`` (one tuple per seed) as the study's results."""
    return {arm: [{"seed": i, "val": v, "test": t, "samples_per_s": 100.0} for i, (v, t) in enumerate(rows)]
            for arm, rows in arms.items()}


def _se(scores, n=None):
    """SE of the mean of ``scores`` (numpy; seed term needs 2 scores, sampling term needs ``n``)."""
    scores = np.array(scores)
    var = 0.0
    if len(scores) > 1:
        var += scores.var(ddof=1) / len(scores)
    if n:
        var += scores.mean() * (1 - scores.mean()) / n
    return np.sqrt(var)


# The issue's new user: 3 recipes, 1 seed, a 3-class task, a 48-image benchmark, teacher barely above chance.
ISSUE = {"baseline": [(0.40, 0.327)], "fd": [(0.438, 0.373)], "clipkd": [(0.438, 0.375)]}
ISSUE_TEACHER = {"val": 0.36, "test": 0.35, "n": {"val": 48, "test": 48}, "chance": {"val": 1 / 3, "test": 1 / 3}}


def test_one_seed_prints_no_spread_and_says_so():
    summary = summarise(_results(ISSUE), ISSUE_TEACHER, "baseline")
    md = markdown(summary, "acc1")
    assert "± 0.0" not in md
    assert "| 37.5 (1 seed) |" in md and "| 43.8 (1 seed) |" in md
    assert "no spread" in md.lower()
    assert summary["arms"]["fd"]["test_std"] is None and "one_seed" in summary["arms"]["fd"]["flags"]
    assert "one_seed" in summary["flags"]


def test_uncertainty_combines_the_seeds_and_the_benchmark_size():
    arms = {"baseline": [(0.70, 0.72), (0.74, 0.70), (0.71, 0.69)], "fd": [(0.80, 0.76), (0.78, 0.78), (0.79, 0.80)]}
    teacher = {"val": 0.85, "test": 0.81, "n": {"val": 500, "test": 1000}, "chance": {"val": 0.1, "test": 0.1}}
    summary = summarise(_results(arms), teacher, "baseline")
    for arm, rows in arms.items():
        row = summary["arms"][arm]
        assert row["val_se"] == pytest.approx(_se([v for v, _ in rows], 500))
        assert row["test_se"] == pytest.approx(_se([t for _, t in rows], 1000))
    base, fd = _se([t for _, t in arms["baseline"]], 1000), _se([t for _, t in arms["fd"]], 1000)
    assert summary["arms"]["fd"]["gain_se"] == pytest.approx(np.sqrt(base ** 2 + fd ** 2))
    assert summary["gap_se"] == pytest.approx(np.sqrt(0.81 * 0.19 / 1000 + base ** 2))  # the teacher: one model
    assert summary["flags"] == [] and summary["arms"]["fd"]["flags"] == []  # +6 points, SE ~1.3: no flag

    no_size = summarise(_results(arms), {"val": 0.85, "test": 0.81}, "baseline")  # seed term alone
    assert no_size["arms"]["fd"]["test_se"] == pytest.approx(np.std([0.76, 0.78, 0.80], ddof=1) / np.sqrt(3))
    assert no_size["gap_se"] == pytest.approx(np.std([0.72, 0.70, 0.69], ddof=1) / np.sqrt(3))
    assert "benchmark_size_unknown" in no_size["flags"]
    assert "benchmark size unknown" in markdown(no_size, "acc1").lower()
    one = summarise(_results({"baseline": [(0.7, 0.7)], "fd": [(0.8, 0.8)]}), {"val": 0.9, "test": 0.9}, "baseline")
    assert one["arms"]["fd"]["test_se"] is None and one["arms"]["fd"]["gain_se"] is None


def test_a_gain_within_twice_its_uncertainty_is_flagged_as_noise():
    """On 400 images SE(0.75) ~ 2.2 points per arm, 3.1 for a gain: +2 points is noise, +10 is not."""
    arms = {"baseline": [(0.75, 0.75)], "small": [(0.77, 0.77)], "big": [(0.85, 0.85)]}
    teacher = {"val": 0.95, "test": 0.95, "n": {"val": 400, "test": 400}, "chance": {"val": 0.1, "test": 0.1}}
    summary = summarise(_results(arms), teacher, "baseline")
    gain_se = np.sqrt(0.75 * 0.25 / 400 + 0.77 * 0.23 / 400)
    assert abs(0.02) < 2 * gain_se < 0.10  # the hand rule puts one on each side
    assert "gain_within_noise" in summary["arms"]["small"]["flags"]
    assert "gain_within_noise" not in summary["arms"]["big"]["flags"]
    md = markdown(summary, "acc1")
    assert f"| +2.0 ± {100 * gain_se:.1f} (noise) |" in md
    assert "| +10.0 ± " in md and "+10.0 ± 3.2 (noise)" not in md
    assert "within noise" in md and "2 SE" in md  # the rule is stated


def test_a_gap_within_noise_hides_the_shares_the_issues_200_percent():
    summary = summarise(_results(ISSUE), ISSUE_TEACHER, "baseline")
    gap_se = np.sqrt(0.35 * 0.65 / 48 + 0.327 * 0.673 / 48)
    assert summary["gap"] == pytest.approx(0.023) and summary["gap_se"] == pytest.approx(gap_se)
    assert "gap_within_noise" in summary["flags"]
    assert summary["arms"]["fd"]["share"] == pytest.approx(0.046 / 0.023)  # kept in the JSON, flagged
    md = markdown(summary, "acc1")
    assert "200%" not in md and "209%" not in md
    fd_row = next(line for line in md.splitlines() if line.startswith("| fd |"))
    assert fd_row.split("|")[5].strip() == "-"  # share of gap
    assert "gap" in md and "not shown" in md


def test_shares_outside_0_to_100_percent_are_named():
    arms = {"baseline": [(0.60, 0.60)], "over": [(0.85, 0.85)], "under": [(0.40, 0.40)], "fine": [(0.7, 0.7)]}
    teacher = {"val": 0.8, "test": 0.8, "n": {"val": 10000, "test": 10000}, "chance": {"val": 0.1, "test": 0.1}}
    summary = summarise(_results(arms), teacher, "baseline")
    assert "share_beyond_teacher" in summary["arms"]["over"]["flags"]
    assert "share_below_baseline" in summary["arms"]["under"]["flags"]
    assert not {"share_beyond_teacher", "share_below_baseline"} & set(summary["arms"]["fine"]["flags"])
    md = markdown(summary, "acc1")
    assert "| 125% (beyond the teacher) |" in md and "| -100% (below the baseline) |" in md and "| 50% |" in md


@pytest.mark.parametrize("arms, teacher, tied", [
    ({"baseline": [(0.40, 0.3)], "fd": [(0.438, 0.37)], "clipkd": [(0.438, 0.37)]},
     {"val": 0.5, "test": 0.5}, ["clipkd"]),  # exactly equal, nothing else known
    ({"baseline": [(0.70, 0.7)], "fd": [(0.80, 0.8)], "crd": [(0.79, 0.8)], "icl": [(0.60, 0.6)]},
     {"val": 0.9, "test": 0.9, "n": {"val": 400, "test": 400}}, ["crd"]),  # 1 point apart, SE ~2.9
    ({"baseline": [(0.70, 0.7)], "fd": [(0.80, 0.8)], "crd": [(0.79, 0.8)]},
     {"val": 0.9, "test": 0.9, "n": {"val": 100000, "test": 100000}}, []),  # SE ~0.18: 1 point is a lead
])
def test_a_tie_on_val_is_named(arms, teacher, tied):
    summary = summarise(_results(arms), teacher, "baseline")
    assert summary["best_on_val"] == "fd" and summary["tied_on_val"] == tied
    md = markdown(summary, "acc1")
    if tied:
        assert f"Best on val: `fd`, tied with `{tied[0]}` (within noise)" in md
        assert "tied_on_val" in summary["flags"] and "tied_on_val" in summary["arms"][tied[0]]["flags"]
    else:
        assert "Best on val: `fd`." in md and "tied" not in md


@pytest.mark.parametrize("test, n, chance, near", [
    (0.35, 48, 1 / 3, True),  # the issue: 1.7 points above chance, 2 SE = 13.8 points
    (0.37, 10000, 1 / 3, True),  # 2 SE = 1 point, but within the 5-point floor
    (0.42, 10000, 1 / 3, False),  # 8.7 points above chance, 2 SE = 1 point
    (0.35, 48, None, False),  # no chance level (e.g. a retrieval metric): no check
])
def test_a_teacher_near_chance_is_flagged(test, n, chance, near):
    teacher = {"val": 0.9, "test": test, "n": {"val": 1000, "test": n}, "chance": {"val": chance, "test": chance}}
    summary = summarise(_results({"baseline": [(0.3, 0.3)], "fd": [(0.4, 0.4)]}), teacher, "baseline")
    assert ("teacher_near_chance" in summary["flags"]) is near
    assert ("near chance" in markdown(summary, "acc1")) is near


def test_the_json_holds_the_flags_and_the_chart_marks_the_flagged_arms(tmp_path):
    from clipkd.ablate.noise import ablation_bars

    summary = summarise(_results({"baseline": [(0.6, 0.6)], "fd": [(0.61, 0.61)], "crd": [(0.75, 0.75)]}),
                        {"val": 0.8, "test": 0.8, "n": {"val": 2000, "test": 2000}}, "baseline")
    back = json.loads(json.dumps(summary))  # as ablation.json holds it
    assert back["arms"]["fd"]["flags"] == ["one_seed", "gain_within_noise"] and "one_seed" in back["flags"]
    bars = {b["arm"]: b for b in ablation_bars(summary, ["fd", "crd"])}
    gap = 0.2
    gain_se = np.sqrt(0.6 * 0.4 / 2000 + 0.61 * 0.39 / 2000)
    assert bars["fd"]["unit"] == "share" and bars["fd"]["value"] == pytest.approx(100 * 0.01 / gap)
    assert bars["fd"]["err"] == pytest.approx(100 * 2 * gain_se / gap)  # error bars: ±2 SE, in % of the gap
    assert bars["fd"]["hatch"] and not bars["crd"]["hatch"]
    assert bars["fd"]["note"] == "1 seed, noise" and bars["crd"]["note"] == "1 seed"  # written over each bar
    issue = summarise(_results(ISSUE), ISSUE_TEACHER, "baseline")
    for bar in ablation_bars(issue, ["fd", "clipkd"]):  # the gap itself is noise: gains in points, hatched
        assert bar["unit"] == "points" and bar["hatch"]
        assert bar["value"] == pytest.approx(100 * (ISSUE[bar["arm"]][0][1] - 0.327))
    results = {a: [{"seed": 0, "curve": [{"step": 4, "val": r[0][0], "test": r[0][1]}]}] for a, r in ISSUE.items()}
    written = plots(issue, results, tmp_path)
    assert all(p.stat().st_size > 0 for p in written)


# --- study YAML typos ---

def _load(tmp_path, **study):
    from clipkd.ablate.study import load_study
    from clipkd.errors import ConfigError

    raw = {"base": "b.yaml", "out": "o", "recipes": ["baseline", "clipkd"], "select": {"val": "v", "test": "t"},
           **study}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_study(tmp_path / "s.yaml")
    return str(err.value)


@pytest.mark.parametrize("study, line", [
    ({"recipies": ["fd"]}, "recipies: unknown field (did you mean `recipes`?)"),
    ({"select": {"val": "v", "test": "t", "metirc": "acc1"}},
     "select.metirc: unknown field (did you mean `select.metric`?)"),
    ({"sweeps": {"w": {"arm": "clipkd", "kye": "distill.weights.fd", "values": [1.0]}}},
     "sweeps.w.kye: unknown field (did you mean `sweeps.w.key`?)"),
    ({"sweeps": {"w": {"arm": "clipdk", "key": "distill.weights.fd", "values": [1.0]}}},
     "sweeps.w.arm: 'clipdk' is not a recipe or variant of the study (did you mean `clipkd`? known: baseline, "
     "clipkd)"),
    ({"baseline": "baselin"}, "baseline: 'baselin' is not a recipe or variant of the study (did you mean "
     "`baseline`? known: baseline, clipkd)"),
])
def test_study_typos_get_a_did_you_mean(tmp_path, study, line):
    assert line in _load(tmp_path, **study)


def test_a_teacher_below_the_baseline_gives_no_shares():
    arms = {"baseline": [(0.70, 0.70), (0.72, 0.72)], "fd": [(0.80, 0.80), (0.82, 0.82)]}
    summary = summarise(_results(arms), {"val": 0.5, "test": 0.5, "n": {"val": 1000, "test": 1000}}, "baseline")
    assert "gap_not_positive" in summary["flags"] and "gap_within_noise" not in summary["flags"]
    md = markdown(summary, "acc1")
    fd_row = next(line for line in md.splitlines() if line.startswith("| fd |"))
    assert fd_row.split("|")[5].strip() == "-" and "-45%" not in md  # (0.81 - 0.71) / (0.5 - 0.71)
    assert "The teacher does not beat baseline on test (gap -21.0 points)" in md
