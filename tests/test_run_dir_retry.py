"""A folder where a run trained no step is not a run: the retry of a run stopped before its first step (a check at
its first batch) just works; a folder holding a checkpoint or a logged training step is still refused."""

import shutil
from pathlib import Path

import pytest

from clipkd.cli import main
from clipkd.engine.logger import read_metrics
from clipkd.engine.run_dir import check_run_dir, holds_run
from clipkd.errors import ConfigError
from test_reinforce import build, data, overrides, weights  # noqa: F401  (module fixtures)


def _attempt(run: Path, rows: list[str]) -> None:
    """The files a run writes before its first step (config, inputs, TensorBoard), with these metrics lines."""
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    (run / "config.yaml").write_text("seed: 0\n")
    (run / "inputs.json").write_text("{}")
    (run / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))


@pytest.mark.parametrize("rows, trained", [
    ([], False),  # stopped at its first batch
    (['{"step": 0, "train/nonfinite_steps": 1.0}', '{"step": 0, "train/nonf'], False),  # no step taken; a torn row
    (['{"step": 0, "train/nonfinite_steps": 1.0}', '{"step": 1, "train/loss": 2.0}'], True),  # step 1 was trained
    (['{"step": 3, "eval/val/loss": 2.0}'], True),
])
def test_a_folder_holds_a_run_once_a_step_was_logged(tmp_path, rows, trained):
    run = tmp_path / "run"
    _attempt(run, rows)
    assert holds_run(run) is trained
    if trained:
        with pytest.raises(ConfigError, match="already holds a run"):
            check_run_dir(run, None, False)
    else:
        check_run_dir(run, None, False)


def test_a_checkpoint_is_a_run_without_any_logged_step(tmp_path):
    run = tmp_path / "run"
    _attempt(run, [])
    (run / "checkpoints" / "step_00000000").mkdir(parents=True)  # stopped by a signal before its first step
    assert holds_run(run)
    with pytest.raises(ConfigError, match=r"already holds a run \(1 checkpoint\(s\), last checkpoint step_00000000"):
        check_run_dir(run, None, False)
    assert not holds_run(tmp_path / "nothing")


def test_a_reinforced_run_stopped_at_its_first_batch_is_retried_with_the_same_command(data, weights, tmp_path,
                                                                                       capsys):
    """The issue's case: an image changed behind the CSV of a reinforced run; the fingerprint check stops the run at
    its first batch; the image restored, the same command trains."""
    source = tmp_path / "csv"
    shutil.copytree(Path(data["csv"]).parent, source)
    local = {**data, "csv": source / Path(data["csv"]).name}
    build(tmp_path / "cache", local, weights[0])
    images = sorted(p for p in (source / "images").iterdir())
    originals = {p: p.read_bytes() for p in images}
    for a, b in zip(images, images[1:] + images[:1]):  # every image now holds another one's bytes
        a.write_bytes(originals[b])
    run = tmp_path / "run"
    argv = ["train", *overrides(local, weights[0], **{
        "run_dir": str(run), "distill.teacher_cache": str(tmp_path / "cache"), "data.batch_size": 8,
        "data.workers": 0, "logging.tensorboard": True, "optim.steps": 2, "optim.warmup_steps": 1,
        "data.max_skip_fraction": 1.0, "logging.every_steps": 1})]
    assert main(argv) == 2
    assert "content differs from what the cache was built from" in capsys.readouterr().err
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()  # what the first try left
    for path, content in originals.items():
        path.write_bytes(content)
    assert main(argv) == 0, capsys.readouterr().err
    assert "done: step 2" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("run.")] == []  # nothing moved aside
    assert len(list((run / "tensorboard").iterdir())) == 1  # the first try's empty event file is gone
    assert main(argv) == 2  # now it holds a run
    assert "already holds a run (1 checkpoint(s), last checkpoint step_00000002)" in capsys.readouterr().err


def test_a_folder_in_use_by_a_run_still_going_is_refused(tmp_path):
    """Until its first logged step a run's folder is not a run, so a second process (a relaunch, a duplicated job)
    could take it over and delete its log: the running one holds a lock beside the folder, and the second is
    refused naming it; once the first ends (or dies) the folder is free. A lock held in another process, too."""
    import subprocess
    import sys

    from clipkd.engine.run_dir import lock_path, lock_run_dir

    run = tmp_path / "run"
    held = lock_run_dir(run)
    with pytest.raises(ConfigError, match=r"run_dir .*run is in use by a clipkd run still going \(pid \d+ on "):
        lock_run_dir(run)
    code = f"from clipkd.engine.run_dir import lock_run_dir\nlock_run_dir({str(run)!r})"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode != 0 and "is in use by a clipkd run still going" in other.stderr
    assert lock_path(run) == tmp_path / ".run.lock" and not list(run.glob(".*"))  # beside, not inside
    held.close()
    lock_run_dir(run).close()  # free again


def test_a_trainer_holds_its_folder_while_it_lives(data_dir, tmp_path):
    from clipkd.config import load_config
    from clipkd.commands.train import make_trainer
    from test_train import base_overrides

    cfg = load_config(None, base_overrides(tmp_path / "run", data_dir, "csv", **{"optim.steps": 1,
                                                                                  "distill.recipe": "baseline"}))
    first = make_trainer(cfg)
    with pytest.raises(ConfigError, match="is in use by a clipkd run still going"):
        make_trainer(cfg)
    first.fit()  # ends: releases
    make_trainer(cfg, resume="latest").fit()
