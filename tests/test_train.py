"""`clipkd train` end to end on tiny generated data: formats, checkpoints, exact resume, logging."""

import json
import shutil

import pytest
import torch
import yaml

from clipkd.cli import main
from clipkd.config import load_config
from clipkd.engine.checkpoint import list_checkpoints
from clipkd.engine.logger import read_metrics
from clipkd.commands.train import make_trainer


def base_overrides(run_dir, data_dir, fmt="webdataset", **extra):
    train = str(data_dir / "wds" / "shard-{00000..00002}.tar") if fmt == "webdataset" else str(data_dir / "csv" / "data.csv")
    items = {
        "run_dir": str(run_dir), "seed": 0, "device": "cpu",
        "teacher.model": "clipkd-tiny-teacher", "student.model": "clipkd-tiny-vit",
        "data.format": fmt, "data.train": train, "data.batch_size": 16, "data.workers": 0,
        "data.shuffle_buffer": 20, "optim.warmup_steps": 2, "optim.steps": 4,
        "checkpoint.every_steps": 2, "checkpoint.keep_last": 10, "logging.every_steps": 1,
        "logging.progress": False, "logging.tensorboard": False,
    }
    items.update(extra)
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in items.items()]


@pytest.mark.parametrize("fmt", ["webdataset", "csv"])
def test_cli_train_writes_checkpoint_logs_and_config(fmt, data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = base_overrides(run, data_dir, fmt, **{"logging.tensorboard": True})
    assert main(["train", *args]) == 0
    assert "done: step 4" in capsys.readouterr().out
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000002", "step_00000004"]
    assert {f.name for f in ckpts[-1].iterdir()} == {"student.safetensors", "train_state.pt", "config.yaml", "checksums.json"}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["student"]["model"] == "clipkd-tiny-vit" and saved["distill"]["recipe"] == "clipkd"
    rows = read_metrics(run, "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "task", "crd", "icl", "fd", "lr", "logit_scale", "icl_scale", "samples_per_s", "skipped"):
        assert f"train/{key}" in rows[-1], key
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())


def _fit(overrides, resume=None):
    return make_trainer(load_config(None, overrides), resume=resume).fit()


@pytest.mark.parametrize("fmt, recipe, workers", [("webdataset", "mfd", 2), ("csv", "clipkd", 0)])
def test_resume_continues_exactly(fmt, recipe, workers, data_dir, tmp_path):
    """Interrupted at step 3 (mid-epoch, odd batch for 2 workers), resumed: same losses, across an epoch."""
    extra = {"distill.recipe": recipe, "data.workers": workers, "optim.steps": 7, "checkpoint.every_steps": 3}
    full = _fit(base_overrides(tmp_path / "full", data_dir, fmt, **extra))
    assert len(full.history) == 7
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_00000003", part / "checkpoints" / "step_00000003")
    resumed = _fit(base_overrides(part, data_dir, fmt, **extra), resume="latest")
    assert resumed.step == 7 and len(resumed.history) == 4
    for a, b in zip(full.history[3:], resumed.history):
        assert a == b  # bit-exact on CPU
    fa = torch.load(tmp_path / "full" / "checkpoints" / "step_00000007" / "train_state.pt", weights_only=True)
    fb = torch.load(part / "checkpoints" / "step_00000007" / "train_state.pt", weights_only=True)
    assert fa["ranks"][0]["position"] == fb["ranks"][0]["position"]


def test_resume_latest_without_checkpoint_starts_fresh(data_dir, tmp_path):
    result = _fit(base_overrides(tmp_path / "r", data_dir, **{"optim.steps": 1}), resume="latest")
    assert result.step == 1


def test_resume_bad_path_is_clear(data_dir, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope"), *base_overrides(tmp_path / "r", data_dir)]) == 2
    assert "not a clipkd checkpoint folder" in capsys.readouterr().err


def test_checkpoints_keep_last_and_no_temp_left(data_dir, tmp_path):
    run = tmp_path / "k"
    _fit(base_overrides(run, data_dir, **{"optim.steps": 5, "checkpoint.every_steps": 1, "checkpoint.keep_last": 2}))
    assert [p.name for p in list_checkpoints(run)] == ["step_00000004", "step_00000005"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]


def test_saved_student_loads_as_open_clip_encoder(data_dir, tmp_path):
    from clipkd.models import create_open_clip_encoder

    run = tmp_path / "s"
    trainer = make_trainer(load_config(None, base_overrides(run, data_dir, **{"optim.steps": 2})))
    trainer.fit()
    enc = create_open_clip_encoder("clipkd-tiny-vit", pretrained=str(list_checkpoints(run)[-1] / "student.safetensors"))
    images = torch.randn(2, 3, 32, 32)
    trainer.student.eval()
    torch.testing.assert_close(enc.eval().encode_image(images), trainer.student.encoder.encode_image(images))


def test_tsv_with_custom_columns_and_separator(data_dir, tmp_path):
    tsv = data_dir / "tsv" / "data.tsv"
    text = tsv.read_text().replace("filepath\ttitle", "img\tcaption", 1)
    custom = tmp_path / "custom.tsv"
    custom.write_text(text)
    extra = {"data.train": str(custom), "data.csv_separator": "\"\\t\"", "data.csv_img_key": "img",
             "data.csv_caption_key": "caption", "data.root": str(data_dir / "tsv"), "optim.steps": 2}
    assert _fit(base_overrides(tmp_path / "t", data_dir, "csv", **extra)).step == 2


def test_val_loss_hook_logs_every_n_and_at_end(data_dir, tmp_path):
    val = {"format": "csv", "train": str(data_dir / "csv" / "data.csv"), "batch_size": 8, "workers": 0}
    extra = {"eval.val_data": json.dumps(val), "eval.every_steps": 2, "eval.val_batches": 2, "optim.steps": 3}
    _fit(base_overrides(tmp_path / "v", data_dir, **extra))
    rows = read_metrics(tmp_path / "v", "eval/val")
    assert [r["step"] for r in rows] == [2, 3]
    assert {"eval/val/loss", "eval/val/task", "eval/val/fd"} <= set(rows[0])


def test_bf16_autocast_runs(data_dir, tmp_path):
    result = _fit(base_overrides(tmp_path / "b", data_dir, **{"precision": "bf16", "optim.steps": 2}))
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_student_learns_and_teacher_frozen(data_dir, tmp_path):
    trainer = make_trainer(load_config(None, base_overrides(tmp_path / "l", data_dir, **{"optim.steps": 12,
                                                                                    "distill.recipe": "fd"})))
    before = {k: v.clone() for k, v in trainer.distiller.teacher.state_dict().items()}
    result = trainer.fit()
    assert result.history[-1]["fd"] < result.history[0]["fd"]
    assert all(torch.equal(v, before[k]) for k, v in trainer.distiller.teacher.state_dict().items())


def test_same_seed_same_run(data_dir, tmp_path):
    a = _fit(base_overrides(tmp_path / "a", data_dir, **{"optim.steps": 3, "distill.recipe": "mfd"}))
    b = _fit(base_overrides(tmp_path / "b", data_dir, **{"optim.steps": 3, "distill.recipe": "mfd"}))
    assert a.history == b.history


def test_fp16_with_grad_scaler_runs(data_dir, tmp_path):
    result = _fit(base_overrides(tmp_path / "h", data_dir, **{"precision": "fp16", "optim.steps": 2}))
    assert result.step == 2


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_accumulation_under_mixed_precision(precision, data_dir, tmp_path):
    """K=2 micro-batches per step through autocast (and the fp16 grad scaler); the data advance K per step."""
    extra = {"precision": precision, "optim.steps": 2, "optim.accum_steps": 2, "data.batch_size": 8}
    trainer = make_trainer(load_config(None, base_overrides(tmp_path / precision, data_dir, **extra)))
    result = trainer.fit()
    assert result.step == 2 and trainer.rank_state.position.batches == 4
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)


def test_one_loader_serves_every_epoch(data_dir, tmp_path, monkeypatch):
    """The loader's workers live as long as the run: 3 epochs, one loader (a new loader per epoch paused every
    epoch start for the workers' start-up, benchmarks/epoch_start.py), and the position says the epoch."""
    import clipkd.engine.trainer as trainer_module

    made = []
    real = trainer_module.make_loader
    monkeypatch.setattr(trainer_module, "make_loader", lambda *a, **k: made.append(1) or real(*a, **k))
    extra = {"data.workers": 2, "data.batch_size": 16, "optim.steps": 15, "checkpoint.every_steps": 15}
    trainer = make_trainer(load_config(None, base_overrides(tmp_path / "run", data_dir, "webdataset", **extra)))
    assert trainer.stream.batches_per_epoch == 6  # 96 pairs / (16 x 2 splits) = 3 per split
    trainer.fit()
    assert len(made) == 1
    assert trainer.rank_state.position.epoch == 2 and trainer.rank_state.position.batches == 3
