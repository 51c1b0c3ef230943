"""Resume rules: config changes are refused by name, a run folder holds one run, the log matches the checkpoint."""

import pytest

from clipkd.cli import main
from clipkd.engine import checkpoint as ckpt
from clipkd.engine.logger import read_metrics
from test_train import base_overrides


def _train(run, data_dir, *flags, **extra):
    return main(["train", *flags, *base_overrides(run, data_dir, **extra)])


def test_changed_config_is_refused_naming_each_key(data_dir, tmp_path, capsys, caplog):
    run = tmp_path / "r"
    assert _train(run, data_dir, **{"optim.steps": 2}) == 0
    changed = {"optim.steps": 2, "optim.lr": 5e-4, "data.batch_size": 8, "distill.recipe": "fd"}
    assert _train(run, data_dir, "--resume", "latest", **changed) == 2
    err = capsys.readouterr().err
    for line in ("optim.lr: 0.001 -> 0.0005", "data.batch_size: 16 -> 8", "distill.recipe: 'clipkd' -> 'fd'",
                 "--allow-config-change"):
        assert line in err
    harmless = {"optim.steps": 2, "logging.every_steps": 5, "checkpoint.keep_last": 1, "logging.tensorboard": True}
    assert _train(run, data_dir, "--resume", "latest", **harmless) == 0
    more = {"optim.steps": 3, "optim.lr": 5e-4}
    assert _train(run, data_dir, "--resume", "latest", "--allow-config-change", **more) == 0
    assert "optim.lr: 0.001 -> 0.0005" in caplog.text and "--allow-config-change" in caplog.text
    assert ckpt.list_checkpoints(run)[-1].name == "step_00000003"


def test_folder_holding_a_run_is_refused_then_overwrite_moves_it_aside(data_dir, tmp_path, capsys):
    run = tmp_path / "vit"
    assert _train(run, data_dir, **{"optim.steps": 4}) == 0
    assert _train(run, data_dir, **{"optim.steps": 2}) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert [p.name for p in ckpt.list_checkpoints(run)][-1] == "step_00000004"  # untouched
    assert _train(run, data_dir, "--overwrite", **{"optim.steps": 2}) == 0
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000002"]
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2]
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("vit.replaced-")]
    assert len(aside) == 1 and ckpt.list_checkpoints(aside[0])[-1].name == "step_00000004"
    assert _train(run, data_dir, "--overwrite", "--resume", "latest", **{"optim.steps": 2}) == 2


def test_resume_from_older_checkpoint_forgets_the_abandoned_future(data_dir, tmp_path, caplog):
    """--resume step_2 while step_4 exists: step_4 moves aside, later rows are dropped (also in TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    extra = {"optim.steps": 4, "checkpoint.keep_last": 1, "logging.tensorboard": True}
    assert _train(run, data_dir, **extra) == 0
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000004"]
    older = tmp_path / "step_00000002"  # an older checkpoint of the same run, kept elsewhere
    assert _train(tmp_path / "twin", data_dir, **{**extra, "checkpoint.keep_last": 5}) == 0
    (tmp_path / "twin" / "checkpoints" / older.name).rename(older)
    assert _train(run, data_dir, "--resume", str(older), **extra) == 0
    assert "moved 1 newer checkpoint(s) aside" in caplog.text
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000004"]  # the new write survived pruning
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3, 4]
    abandoned = list((run / "checkpoints" / ckpt.ABANDONED_DIR).glob("*/step_00000004"))
    assert len(abandoned) == 1
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["truncate"])
def test_resume_latest_falls_back_past_a_corrupt_checkpoint(damage, data_dir, tmp_path, caplog):
    run = tmp_path / "r"
    assert _train(run, data_dir, **{"optim.steps": 4}) == 0
    state = ckpt.list_checkpoints(run)[-1] / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])
    assert _train(run, data_dir, "--resume", "latest", **{"optim.steps": 4}) == 0
    assert "skipping corrupt checkpoint" in caplog.text and str(state) in caplog.text
    assert [r["step"] for r in read_metrics(run, "train")] == [1, 2, 3, 4]
    ckpt.verify_checkpoint(ckpt.list_checkpoints(run)[-1])


def test_a_checkpoint_from_before_data_decode_resumes_as_a_full_decode(data_dir, tmp_path, capsys):
    """A config saved before ``data.decode`` existed decoded every pixel: resumed with the new default (reduced) the
    change is named (``'full' -> 'reduced'``, not a key that cannot be set back), and ``data.decode=full`` resumes it
    as it was."""
    import json

    import yaml

    from clipkd.files import sha256_file

    run = tmp_path / "r"
    assert _train(run, data_dir, **{"optim.steps": 2, "data.decode": "full"}) == 0
    saved = ckpt.list_checkpoints(run)[-1] / "config.yaml"
    older = yaml.safe_load(saved.read_text())
    del older["data"]["decode"]  # as a clipkd from before the key wrote it
    saved.write_text(yaml.safe_dump(older, sort_keys=False))
    sums_file = saved.parent / ckpt.CHECKSUM_FILE  # its checksum, as that clipkd recorded it
    sums = json.loads(sums_file.read_text())
    sums[saved.name] = {"sha256": sha256_file(saved), "bytes": saved.stat().st_size}
    sums_file.write_text(json.dumps(sums))
    assert _train(run, data_dir, "--resume", "latest", **{"optim.steps": 2}) == 2
    err = capsys.readouterr().err
    assert "data.decode: 'full' -> 'reduced'" in err and "optim" not in err
    assert _train(run, data_dir, "--resume", "latest", **{"optim.steps": 2, "data.decode": "full"}) == 0
    assert "done: step 2" in capsys.readouterr().out
