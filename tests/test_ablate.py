"""`clipkd ablate`: a tiny study end to end, resumed without re-running finished runs, and its refusals."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from clipkd.cli import main

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 40),
           "purple": (130, 40, 160), "black": (15, 15, 15), "white": (240, 240, 240), "orange": (240, 140, 20)}


def _folder(root, seed):
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.clip(np.array(rgb) + rng.integers(-30, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def write_base(root, teacher: dict, steps: int) -> dict:
    """A study's base config in ``root/base.yaml``: tiny student, 32 CSV pairs, colour-folder benchmarks val and
    test; returns it."""
    from clipkd.data.synthetic import write_csv

    benches = [{"name": name, "task": "zeroshot", "format": "folder", "path": _folder(root / name, seed),
                "batch_size": 8} for name, seed in (("val", 1), ("test", 2))]
    base = {"teacher": teacher, "student": {"model": "clipkd-tiny-vit"},
            "data": {"format": "csv", "train": write_csv(root / "pairs", 32, size=40), "batch_size": 16,
                     "workers": 0},
            "optim": {"steps": steps, "warmup_steps": 1}, "checkpoint": {"every_steps": steps},
            "logging": {"every_steps": 1, "progress": False, "tensorboard": False},
            "eval": {"benchmarks": benches}, "run_dir": "unused", "device": "cpu"}
    (root / "base.yaml").write_text(yaml.safe_dump(base))
    return base


@pytest.fixture(scope="module")
def study_dir(module_tmp):
    root = module_tmp("study")
    write_base(root, {"model": "clipkd-tiny-teacher"}, steps=4)
    return root


def _study(root, **extra):
    study = {"base": "base.yaml", "out": "out", "recipes": ["baseline", "fd"], "seeds": [0], "curve_points": 2,
             "select": {"val": "val", "test": "test"}, **extra}
    path = root / f"study-{len(extra)}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_study_runs_resumes_and_reports(study_dir, monkeypatch, capsys):
    import clipkd.ablate.runs as runs

    assert main(["ablate", "-c", str(_study(study_dir))]) == 0
    out = study_dir / "out"
    data = json.loads((out / "ablation.json").read_text())
    summary, results = data["summary"], data["runs"]
    assert list(summary["arms"]) == ["baseline", "fd"] and summary["best_on_val"] == "fd"
    for arm in ("baseline", "fd"):
        (run,) = results[arm]
        assert [p["step"] for p in run["curve"]] == [2, 4]  # curve_points 2 over 4 steps
        logged = [json.loads(line) for line in (out / "runs" / f"{arm}-seed0" / "metrics.jsonl").open()]
        assert run["test"] == [r for r in logged if "eval/test/acc1" in r][-1]["eval/test/acc1"]
    teacher = json.loads((out / "teacher.json").read_text())["scores"]
    base, fd = results["baseline"][0]["test"], results["fd"][0]["test"]
    expected = (fd - base) / (teacher["test"] - base) if teacher["test"] != base else None
    assert summary["arms"]["fd"]["share"] == pytest.approx(expected)
    assert summary["arms"]["fd"]["paper_share"] == pytest.approx((34.23 - 30.55) / (36.99 - 30.55))
    md = (out / "ablation.md").read_text()
    assert "| fd |" in md and "| baseline |" in md and "57%" in md  # the paper's share of FD
    for name in ("ablation.png", "curves.png"):
        assert (out / name).stat().st_size > 0

    trained = []
    monkeypatch.setattr(runs, "train", lambda cfg: trained.append(cfg.run_dir) or pytest.fail("re-trained"))
    assert main(["ablate", "-c", str(_study(study_dir))]) == 0  # everything finished: nothing trains
    assert json.loads((out / "ablation.json").read_text())["runs"] == results
    monkeypatch.undo()
    real = runs.train
    monkeypatch.setattr(runs, "train", lambda cfg: trained.append(cfg.run_dir) or real(cfg))
    assert main(["ablate", "-c", str(_study(study_dir, variants={"fd-notask": {
        "distill.weights": {"fd": 2000}}}))]) == 0
    assert [p.rsplit("/", 1)[-1] for p in trained] == ["fd-notask-seed0"]  # only the new arm


@pytest.mark.parametrize("extra, message", [
    ({"select": {"val": "test", "test": "test"}}, "select.val and select.test name the same benchmark"),
    ({"recipes": ["baseline", "fdd"]}, "fdd"),
    ({"sweeps": {"w": {"arm": "nope", "key": "distill.weights.fd", "values": [1]}}}, "sweeps.w.arm"),
    ({"select": {"val": "val", "test": "imagenet"}}, "'imagenet' not among the base config's eval.benchmarks"),
    ({"variants": {"bad": {"optim.lrr": 1}}}, "run bad-seed0"),
    ({"variants": {"v": {"distill.recipe": "fd", "distill.teacher_cache": "no-cache"}}}, "run v-seed0: invalid config"),
    ({"variants": {"v": {"optim.lr": 2e-3}}, "sweeps": {"w": {"arm": "v", "key": "distill.weights.fd",
                                                            "values": [1.0]}}}, "names no recipe and no distill.weights"),
    ({"sweeps": {"w": {"arm": "fd", "key": "distill.teacher_cache", "values": ["a/k4", "b/k4"]}}},
     "two arms are named 'w=k4'"),
    ({"recipes": ["baseline", "gd"], "sweeps": {"w": {"arm": "gd", "key": "distill.weights.fd", "values": [1.0]}}},
     "whose GD weight follows the global batch"),
])
def test_study_refusals(study_dir, extra, message, capsys):
    assert main(["ablate", "-c", str(_study(study_dir, **extra)), "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_a_weight_sweep_on_a_recipe_keeps_the_recipes_other_terms(study_dir):
    """FD's recipe is task 1 + FD 2000 (the paper's weights): a sweep value replaces the FD weight alone, and the
    fd arm itself sits at 2000 in the sweep's table."""
    from clipkd.ablate.runs import plan, run_config, sweep_points
    from clipkd.ablate.study import StudyConfig, arms

    study = StudyConfig.model_validate({"base": "b.yaml", "out": "o", "recipes": ["fd", "gd"], "select": {
        "val": "v", "test": "t"}, "sweeps": {"w": {"arm": "fd", "key": "distill.weights.fd", "values": [500.0]},
                                             "g": {"arm": "gd", "key": "distill.weights.gd", "values": [10.0]}}})
    found = {a.name: a.overrides for a in arms(study)}
    assert found["w=500"] == {"distill.recipe": "fd", "distill.weights": {"task": 1.0, "fd": 500.0}}
    assert found["g=10"] == {"distill.recipe": "gd", "distill.weights": {"task": 1.0, "gd": 10.0}}
    base = yaml.safe_load((study_dir / "base.yaml").read_text())
    planned = [(spec, run_config(study, base, spec)) for spec in plan(study)]
    points = sweep_points(study, planned)
    assert points["w"]["points"] == [(500.0, "w=500"), (2000.0, "fd")]
    assert points["g"]["points"] == [(10.0, "g=10")]  # no teacher cache: the GD weight's teacher dim is not known


def test_an_arm_that_names_a_recipe_trains_that_recipe_even_when_the_base_sets_weights(study_dir):
    """The demo's base trains its chosen weights (``distill.weights``): the ``baseline`` arm must still train the
    task loss alone and the ``crd`` arm CRD's own weights, not the base's; a variant's own weights are kept."""
    from clipkd.ablate.runs import plan, run_config
    from clipkd.ablate.study import StudyConfig

    base = yaml.safe_load((study_dir / "base.yaml").read_text())
    base["distill"] = {"recipe": "clipkd", "weights": {"task": 1.0, "fd": 500.0}}
    study = StudyConfig.model_validate({"base": "b.yaml", "out": "o", "recipes": ["baseline", "crd"], "variants": {
        "mine": {"distill.recipe": "fd", "distill.weights": {"task": 1.0, "fd": 250.0}},
        "seed-only": {"optim.lr": 0.002}}, "select": {"val": "v", "test": "t"}})
    cfgs = {spec.arm.name: run_config(study, base, spec) for spec in plan(study)}
    assert cfgs["baseline"].distill.active_terms() == ["task"]
    assert cfgs["crd"].distill.weights is None and cfgs["crd"].distill.recipe == "crd"
    assert cfgs["mine"].distill.weights == {"task": 1.0, "fd": 250.0}
    assert cfgs["seed-only"].distill.weights == {"task": 1.0, "fd": 500.0}  # no recipe named: the base's run
    base["distill"]["mask_ratio"] = 0.25
    study = StudyConfig.model_validate({"base": "b.yaml", "out": "o", "recipes": ["mfd"], "variants": {
        "one-weight": {"distill.recipe": "fd", "distill.weights.fd": 250.0}}, "select": {"val": "v", "test": "t"}})
    cfgs = {spec.arm.name: run_config(study, base, spec) for spec in plan(study)}
    assert cfgs["mfd"].distill.mask_ratio is None and cfgs["mfd"].distill.weights is None  # mfd's own 0.75
    assert cfgs["one-weight"].distill.weights == {"task": 1.0, "fd": 250.0}  # one weight set on the base's


def test_paths_in_variants_and_sweeps_are_relative_to_the_study_file(tmp_path, monkeypatch):
    from clipkd.ablate.study import arms, load_study

    folder = tmp_path / "studies"
    folder.mkdir()
    (folder / "s.yaml").write_text(yaml.safe_dump({
        "base": "b.yaml", "out": "o", "recipes": ["baseline"], "select": {"val": "v", "test": "t"},
        "variants": {"k16": {"distill.teacher_cache": "../caches/k16", "optim.lr": 0.002}},
        "sweeps": {"cache": {"arm": "k16", "key": "distill.teacher_cache", "values": ["../caches/k8"]}}}))
    monkeypatch.chdir(tmp_path / "..")
    found = {a.name: a.overrides for a in arms(load_study(folder / "s.yaml"))}
    assert found["k16"] == {"distill.teacher_cache": str(tmp_path / "caches" / "k16"), "optim.lr": 0.002}
    assert found["cache=k8"]["distill.teacher_cache"] == str(tmp_path / "caches" / "k8")


def test_summary_against_numpy():
    """Means, sample standard deviations, gains, shares of the gap, costs and the val choice, recomputed with
    numpy from hand-made results (the test scores differ from the val ones on purpose)."""
    from clipkd.ablate.report import summarise

    runs = {"baseline": [(0.70, 0.72, 100.0), (0.74, 0.70, 110.0)], "fd": [(0.80, 0.76, 50.0), (0.78, 0.78, 60.0)],
            "crd": [(0.82, 0.71, 100.0), (0.60, 0.73, 100.0)]}
    results = {arm: [{"seed": i, "val": v, "test": t, "samples_per_s": sps} for i, (v, t, sps) in enumerate(rows)]
               for arm, rows in runs.items()}
    summary = summarise(results, {"val": 0.85, "test": 0.81}, "baseline")
    base = np.mean([0.72, 0.70])
    for arm, rows in runs.items():
        row, test = summary["arms"][arm], np.array([t for _, t, _ in rows])
        assert row["test"] == pytest.approx(test.mean()) and row["test_std"] == pytest.approx(test.std(ddof=1))
        assert row["gain"] == pytest.approx(test.mean() - base)
        assert row["share"] == pytest.approx((test.mean() - base) / (0.81 - base))
        assert row["cost"] == pytest.approx(110.0 / np.max([sps for _, _, sps in rows]))  # fastest runs
    assert summary["best_on_val"] == "fd"  # crd's val mean 0.71 < fd's 0.79, whatever their test scores
    assert summary["arms"]["crd"]["paper_share"] == pytest.approx((31.94 - 30.55) / (36.99 - 30.55))


def test_a_stopped_run_is_not_a_result_and_the_study_continues_from_it(study_dir, monkeypatch, capsys):
    """SIGTERM during a run: it checkpoints and stops (the trainer's rule); the study stops too, writes no result
    for it, and the next invocation trains it to the end. A run whose evaluations end early is not collected."""
    import clipkd.ablate.runs as runs
    from clipkd.ablate.study import load_study
    from clipkd.errors import ConfigError

    path = _study(study_dir, out="stopped")
    real = runs.train

    def stopped_half_way(cfg):  # trains half of the steps, as a pre-empted run has, and reports the signal
        real(cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"steps": 2})}))
        return runs.Outcome("SIGTERM", complete=False)

    monkeypatch.setattr(runs, "train", stopped_half_way)
    assert main(["ablate", "-c", str(path)]) == 0
    assert "study stopped by SIGTERM during baseline-seed0" in capsys.readouterr().out
    out = study_dir / "stopped"
    assert not (out / "runs" / "baseline-seed0" / "result.json").exists() and not (out / "ablation.json").exists()
    study = load_study(path)
    spec = runs.plan(study)[0]
    with pytest.raises(ConfigError, match="last evaluation is at step 2, not at the end"):
        runs.collect(study, spec, runs.run_config(study, yaml.safe_load((study_dir / "base.yaml").read_text()),
                                                  spec))
    monkeypatch.setattr(runs, "train", real)
    assert main(["ablate", "-c", str(path)]) == 0
    result = json.loads((out / "runs" / "baseline-seed0" / "result.json").read_text())
    assert result["curve"][-1]["step"] == 4


def _sigterm_during_final_evaluation(monkeypatch) -> None:
    """Every run sends itself SIGTERM as its final evaluation starts (the trainer's handler hears it)."""
    import os
    import signal

    from clipkd.engine.trainer import Trainer

    real = Trainer._maybe_eval

    def signalled(self, logger, final=False):
        if final:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, logger, final=final)

    monkeypatch.setattr(Trainer, "_maybe_eval", signalled)


def test_a_signal_during_a_runs_final_evaluation_stops_the_study(study_dir, monkeypatch, capsys):
    """SIGTERM while the first run's final evaluation runs: the trainer's handler heard it, so the run (complete:
    its result is collected) must still report it, and the study stops instead of training the next run (it went
    on to it)."""
    _sigterm_during_final_evaluation(monkeypatch)
    path = _study(study_dir, out="signalled", runs=str(study_dir / "signalled-runs"))
    assert main(["ablate", "-c", str(path)]) == 0
    assert "SIGTERM during baseline-seed0" in capsys.readouterr().out
    assert (study_dir / "signalled-runs" / "baseline-seed0" / "result.json").is_file()  # complete: its result stands
    assert not (study_dir / "signalled-runs" / "fd-seed0").exists()


def test_clipkd_train_says_done_when_the_signal_came_during_the_final_evaluation(study_dir, monkeypatch, capsys):
    """The run is complete (its last checkpoint and evaluation written): `clipkd train` must not tell the user to
    resume it."""
    _sigterm_during_final_evaluation(monkeypatch)
    run = study_dir / "train-signalled"
    assert main(["train", "-c", str(study_dir / "base.yaml"), f"run_dir={run}"]) == 0
    out = capsys.readouterr().out
    assert "done: step 4" in out and "SIGTERM came during the final evaluation" in out and "--resume" not in out


def test_a_run_trained_with_another_config_is_trained_again_and_studies_share_runs(study_dir, monkeypatch, capsys):
    """A finished run counts only while its config still gives the study's result: a changed base (here the
    learning rate) or other benchmarks retrain it (the old folder moved aside), a changed evaluation cadence does
    not. A second study naming the same ``runs`` folder reuses the runs they share and reports on its own."""
    import clipkd.ablate.runs as runs

    base = yaml.safe_load((study_dir / "base.yaml").read_text())
    (study_dir / "base-lr.yaml").write_text(yaml.safe_dump(base))
    path = _study(study_dir, base="base-lr.yaml", out="shared", recipes=["baseline"])
    assert main(["ablate", "-c", str(path)]) == 0
    pool = study_dir / "shared" / "runs"
    first = json.loads((pool / "baseline-seed0" / "result.json").read_text())

    trained = []
    real = runs.train
    monkeypatch.setattr(runs, "train", lambda cfg, fresh=False: trained.append(fresh) or real(cfg, fresh))
    path.write_text(path.read_text().replace("curve_points: 2", "curve_points: 4"))  # cadence only: kept
    assert main(["ablate", "-c", str(path)]) == 0 and trained == []
    capsys.readouterr()

    (study_dir / "base-lr.yaml").write_text(yaml.safe_dump({**base, "optim": {**base["optim"], "lr": 1e-2}}))
    assert main(["ablate", "-c", str(path), "--dry-run"]) == 0
    assert "baseline-seed0: to train again (trained with another config: optim.lr: 0.001 -> 0.01)" in \
        capsys.readouterr().out
    assert main(["ablate", "-c", str(path)]) == 0 and trained == [True]
    assert yaml.safe_load((pool / "baseline-seed0" / "config.yaml").read_text())["optim"]["lr"] == 1e-2
    (aside,) = pool.glob("baseline-seed0.replaced-*")
    assert json.loads((aside / "result.json").read_text()) == first

    other = _study(study_dir, base="base-lr.yaml", out="other", runs="shared/runs", recipes=["baseline", "fd"])
    assert main(["ablate", "-c", str(other)]) == 0 and trained == [True, False]  # fd alone is new
    assert json.loads((study_dir / "other" / "ablation.json").read_text())["runs"]["baseline"] == \
        json.loads((study_dir / "shared" / "ablation.json").read_text())["runs"]["baseline"]
    assert (pool / "fd-seed0" / "result.json").is_file() and not (study_dir / "other" / "runs").exists()


def test_a_sweep_is_reported_by_value_with_its_arm_at_the_recipes_own_value(study_dir):
    """The MFD mask sweep's table and plot hold each value's results and the mfd arm itself at the paper's 0.75."""
    path = _study(study_dir, out="sweep", recipes=["baseline", "mfd"],
                  sweeps={"mfd-mask": {"arm": "mfd", "key": "distill.mask_ratio", "values": [0.25]}})
    assert main(["ablate", "-c", str(path)]) == 0
    out = study_dir / "sweep"
    summary = json.loads((out / "ablation.json").read_text())["summary"]
    sweep = summary["sweeps"]["mfd-mask"]
    assert sweep["key"] == "distill.mask_ratio" and [(p["value"], p["arm"]) for p in sweep["points"]] == [
        (0.25, "mfd-mask=0.25"), (0.75, "mfd")]
    for p in sweep["points"]:
        result = json.loads((out / "runs" / f"{p['arm']}-seed0" / "result.json").read_text())
        assert (p["val"], p["test"]) == (result["val"], result["test"])
    md = (out / "ablation.md").read_text()
    assert "### Sweep `mfd-mask`: `distill.mask_ratio` on `mfd`" in md and "| 0.75 (the arm) |" in md
    assert (out / "sweeps.png").stat().st_size > 0


def test_report_only_summarises_the_finished_runs_and_trains_nothing(study_dir, monkeypatch, capsys):
    import clipkd.ablate.runs as runs

    def both():
        return _study(study_dir, out="partial", recipes=["baseline", "fd"])

    monkeypatch.setattr(runs, "train", lambda cfg, fresh=False: pytest.fail("trained"))
    assert main(["ablate", "-c", str(both()), "--report-only"]) == 2  # no baseline run yet
    assert "no finished run of the baseline 'baseline'" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["ablate", "-c", str(_study(study_dir, out="partial", recipes=["baseline"]))]) == 0
    monkeypatch.setattr(runs, "train", lambda cfg, fresh=False: pytest.fail("trained"))
    assert main(["ablate", "-c", str(both()), "--report-only"]) == 0
    out = study_dir / "partial"
    assert list(json.loads((out / "ablation.json").read_text())["summary"]["arms"]) == ["baseline"]
    assert "**Partial: 1 of 2 runs not finished** (fd-seed0)" in (out / "ablation.md").read_text()
    assert not (out / "runs" / "fd-seed0").exists()


def test_a_log_axis_sweep_is_labelled_at_its_values(tmp_path):
    """FD weights 250..8000 on a log axis: the ticks are the swept values (a log grid's minor labels, 3x10^2 and
    4x10^2, overlapped each other)."""
    from matplotlib.figure import Figure

    from clipkd.ablate.report import _sweep_plot

    values = [250.0, 500.0, 8000.0, 2000.0]  # the arm's own value last, as sweep_points adds it
    points = [{"value": v, "val": 0.8, "test": 0.79} for v in values]
    summary = {"teacher": {"test": 0.85}, "baseline": "baseline", "arms": {"baseline": {"test": 0.78}},
               "sweeps": {"fd-weight": {"key": "distill.weights.fd", "arm": "fd", "points": points}}}
    figures = []
    _sweep_plot(summary, tmp_path / "sweeps.png", lambda **kw: figures.append(Figure(**kw)) or figures[-1])
    ax = figures[0].axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["250", "500", "8000", "2000"]
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]


def test_a_sweep_over_paths_is_tabled_and_plotted_by_folder_name(tmp_path):
    """A sweep over teacher caches (values are folders) has no numeric axis: the table and the plot name each
    folder by its last part (the %g format and a log axis of the numeric sweeps raised on them)."""
    from clipkd.ablate.report import markdown, plots

    def row(v, t):
        return {"seeds": [0], "val": v, "val_std": 0.0, "test": t, "test_std": 0.0, "gain": t - 0.7,
                "share": (t - 0.7) / 0.1, "paper_share": None, "cost": 1.0}

    arms = {"baseline": row(0.7, 0.7), "cache=k8": row(0.76, 0.75), "cache=k16": row(0.78, 0.77)}
    points = [{"value": f"/data/{k}", "arm": f"cache={k}", "val": arms[f"cache={k}"]["val"],
               "test": arms[f"cache={k}"]["test"], "share": arms[f"cache={k}"]["share"], "seeds": [0]}
              for k in ("k16", "k8")]
    summary = {"teacher": {"val": 0.8, "test": 0.8}, "baseline": "baseline", "gap": 0.1, "arms": arms,
               "best_on_val": "cache=k16",
               "sweeps": {"cache": {"key": "distill.teacher_cache", "arm": "baseline", "points": points}}}
    md = markdown(summary, "acc1")
    assert "| k16 | 78.0 | 77.0 | 70% | 1 |" in md and "| k8 | 76.0 | 75.0 | 50% | 1 |" in md
    results = {a: [{"seed": 0, "curve": [{"step": 4, "val": r["val"], "test": r["test"]}]}] for a, r in arms.items()}
    assert (tmp_path / "sweeps.png") in plots(summary, results, tmp_path)
    assert (tmp_path / "sweeps.png").stat().st_size > 0
