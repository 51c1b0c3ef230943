"""Recipe `baseline` trains the student alone: no teacher section needed, no teacher built, loaded or moved."""

import json
import logging
import shutil

import pytest
import torch

import clipkd.build.models as builders
from clipkd.cli import main
from clipkd.config import load_config
from clipkd.distill import build_distiller
from clipkd.engine.checkpoint import list_checkpoints
from clipkd.commands.train import make_trainer
from conftest import STUDENT, TEACHER, make_encoder, random_batch
from test_train import base_overrides


def teacherless(run_dir, data_dir, **extra):
    """The tiny training config of test_train.py without its teacher section."""
    return [o for o in base_overrides(run_dir, data_dir, **extra) if not o.startswith("teacher.")]


@pytest.fixture
def no_teacher_built(monkeypatch):
    """Any attempt to build the teacher (the tiny teacher model, or anything asked for as a teacher) fails."""
    real = builders.create_encoder

    def create_encoder(name, *args, role="model", **kwargs):
        if role == "teacher" or name == TEACHER:
            raise AssertionError(f"the teacher {name} was built")
        return real(name, *args, role=role, **kwargs)

    monkeypatch.setattr(builders, "create_encoder", create_encoder)


def test_baseline_trains_without_teacher_section(data_dir, tmp_path, no_teacher_built):
    cfg = load_config(None, teacherless(tmp_path / "b", data_dir, **{"distill.recipe": "baseline"}))
    assert cfg.teacher is None
    trainer = make_trainer(cfg)
    assert trainer.distiller.teacher is None
    result = trainer.fit()
    assert result.step == 4 and all(set(h) == {"loss", "task"} for h in result.history)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
    assert result.history[-1]["task"] < result.history[0]["task"]  # it learns (same batches would be noisier)
    saved = load_config(tmp_path / "b" / "config.yaml")  # the saved config loads again (teacher: null)
    assert saved.teacher is None and saved.distill.recipe == "baseline"


def test_baseline_ignores_a_teacher_section(data_dir, tmp_path, no_teacher_built, caplog):
    """A teacher section (and teacher cache) given with recipe baseline: not checked, built, loaded; logged once."""
    caplog.set_level(logging.INFO)
    overrides = base_overrides(tmp_path / "i", data_dir, **{"distill.recipe": "baseline", "optim.steps": 2,
                                                           "teacher.pretrained": str(tmp_path / "missing.pt")})
    result = make_trainer(load_config(None, overrides)).fit()  # the missing teacher checkpoint is not even checked
    assert result.step == 2
    notes = [r.getMessage() for r in caplog.records if "no teacher is built" in r.getMessage()]
    assert len(notes) == 1 and "'baseline'" in notes[0] and TEACHER in notes[0]


def test_baseline_student_starts_as_with_a_teacher(data_dir, tmp_path):
    """The student's initial weights depend on the seed alone, built with a teacher or without."""
    alone = builders.build_distiller_from_config(
        load_config(None, teacherless(tmp_path / "a", data_dir, **{"distill.recipe": "baseline"})))
    taught = builders.build_distiller_from_config(load_config(None, base_overrides(tmp_path / "t", data_dir)))
    assert alone.teacher is None and taught.teacher is not None
    a, t = alone.student.encoder.state_dict(), taught.student.encoder.state_dict()
    assert a.keys() == t.keys() and all(torch.equal(a[k], t[k]) for k in a)


def test_teacherless_resume_is_exact(data_dir, tmp_path, no_teacher_built):
    extra = {"distill.recipe": "baseline", "optim.steps": 5, "checkpoint.every_steps": 2}
    full = make_trainer(load_config(None, teacherless(tmp_path / "full", data_dir, **extra))).fit()
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000002", part / "checkpoints" / "step_00000002")
    resumed = make_trainer(load_config(None, teacherless(part, data_dir, **extra)), resume="latest").fit()
    assert resumed.step == 5 and resumed.history == full.history[2:]
    files = {f.name for f in list_checkpoints(part)[-1].iterdir()}
    assert files == {"student.safetensors", "train_state.pt", "config.yaml", "checksums.json"}


def test_baseline_resume_after_dropping_its_unused_teacher_section(data_dir, tmp_path, no_teacher_built):
    """A baseline run's teacher section plays no part: removing it on resume is not a breaking config change."""
    extra = {"distill.recipe": "baseline", "optim.steps": 3, "checkpoint.every_steps": 2}
    first = make_trainer(load_config(None, base_overrides(tmp_path / "r", data_dir, **extra))).fit()
    step2 = str(tmp_path / "r" / "checkpoints" / "step_00000002")
    resumed = make_trainer(load_config(None, teacherless(tmp_path / "r", data_dir, **extra)), resume=step2).fit()
    assert resumed.step == 3 and resumed.history == first.history[2:]


def test_distillation_recipe_without_teacher_is_a_config_error(data_dir, tmp_path, capsys):
    assert main(["train", *teacherless(tmp_path / "c", data_dir)]) == 2  # recipe clipkd (the default)
    err = capsys.readouterr().err
    assert err.startswith("clipkd: error: invalid config:")
    line = next(x.strip() for x in err.splitlines() if x.strip().startswith("teacher:"))
    assert "the loss terms crd, icl, fd of distill.recipe 'clipkd' need a teacher" in line
    assert "distill.recipe: baseline" in line
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("extra, ok, words", [
    ({"distill.weights": '{"task": 1.0, "fd": 0.0}'}, True, []),
    ({"distill.weights": '{"task": 1.0, "fd": 3.0}'}, False, ["loss term fd of distill.weights needs a teacher"]),
    ({"distill.recipe": "gd"}, False, ["gd of distill.recipe 'gd'"]),
    ({"distill.recipe": "baseline", "distill.teacher_cache": "c.safetensors", "data.crop_scale": "null"}, False,
     ["distill.teacher_cache", "remove distill.teacher_cache"]),
])
def test_which_configs_need_a_teacher(extra, ok, words, data_dir, tmp_path, capsys):
    overrides = teacherless(tmp_path / "w", data_dir, **{"optim.steps": 1, **extra})
    code = main(["train", *overrides])
    err = capsys.readouterr().err
    assert (code == 0) == ok, err
    for w in words:
        assert w in err


def test_teacherless_terms_match_the_registry():
    from clipkd.config import TEACHERLESS_TERMS
    from clipkd.losses.terms import TERMS
    from clipkd.embeddings import NEEDS_TEACHER

    assert {name for name, cls in TERMS.items() if NEEDS_TEACHER not in cls.needs} == set(TEACHERLESS_TERMS)


def test_build_distiller_without_teacher(student_encoder, teacher_encoder):
    d = build_distiller(student_encoder, None, {"task": 1.0})
    assert d.teacher is None and d.view_encoders == (student_encoder, student_encoder)
    batch = random_batch(student_encoder, student_encoder)
    assert d.teacher_for(batch) is None
    out = d(batch)
    assert set(out) == {"loss", "task"} and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="fd need a teacher"):
        build_distiller(make_encoder(STUDENT), None, {"task": 1.0, "fd": 1.0})
    with pytest.raises(ValueError, match="no teacher"):
        d.teacher_embeddings(batch)


def test_baseline_with_held_out_pairs_reports_losses_without_diagnostics(data_dir, tmp_path, no_teacher_built):
    """The val hook of a teacherless run: the task loss on held-out pairs, no teacher-student diagnostics."""
    val = {"format": "csv", "train": str(data_dir / "csv" / "data.csv"), "batch_size": 16, "workers": 0}
    over = teacherless(tmp_path / "v", data_dir, **{"distill.recipe": "baseline", "optim.steps": 2,
                                                    "eval.val_data": val})
    make_trainer(load_config(None, over)).fit()
    rows = [r for r in (json.loads(line) for line in (tmp_path / "v" / "metrics.jsonl").read_text().splitlines())
            if "eval/val/pairs" in r]
    assert rows and rows[-1]["eval/val/pairs"] == 64.0
    assert {k.split("/")[-1] for k in rows[-1]} == {"step", "loss", "task", "pairs", "skipped"}


def test_eval_refuses_teacher_side_and_diagnostics_of_a_teacherless_run(data_dir, tmp_path, capsys):
    run = tmp_path / "t"
    over = teacherless(run, data_dir, **{"distill.recipe": "baseline", "optim.steps": 2})
    assert main(["train", *over]) == 0
    capsys.readouterr()
    folder = data_dir / "csv"
    assert main(["eval", "--run", str(run), "--side", "teacher", "--retrieval", f"csv:{folder / 'data.csv'}",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--side teacher: run" in capsys.readouterr().err.strip().splitlines()[-1]
    assert main(["eval", "--run", str(run), "--diagnostics", "--pairs", f"csv:{folder / 'data.csv'}",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained without one" in err[0]
