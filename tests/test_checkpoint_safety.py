"""Checkpoints never run planted code, never lose the newest write, and refuse corrupt files by name."""

import os
import re
from pathlib import Path

import pytest
import torch

from clipkd.cli import main
from clipkd.engine import checkpoint as ckpt
from test_train import base_overrides

SRC = Path(__file__).parent.parent / "src" / "clipkd"


class _Planted:
    """Unpickling this object creates a file: the side effect a malicious checkpoint would have."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _tiny_state(extra=None) -> dict:
    return {"step": 1, "ranks": [{"rng": torch.get_rng_state()}], **(extra or {})}


def _save(run: Path, step: int, keep_last: int = 3, state=None) -> Path:
    return ckpt.save_checkpoint(run, step, torch.nn.Linear(2, 2), state or _tiny_state(), "seed: 0\n", keep_last)


def _names(run: Path) -> list[str]:
    return [p.name for p in ckpt.list_checkpoints(run)]


def test_planted_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = _save(tmp_path / "run", 1, state=_tiny_state({"payload": _Planted(marker)}))
    assert not marker.exists()
    with pytest.raises(ckpt.UnsafeCheckpointError, match="refused"):
        ckpt.load_state(path)
    assert not marker.exists()


def test_planted_pickle_through_cli_resume(tmp_path, data_dir, capsys):
    marker = tmp_path / "pwned"
    path = _save(tmp_path / "elsewhere", 1, state=_tiny_state({"payload": _Planted(marker)}))
    args = ["train", "--resume", str(path), "--allow-config-change", *base_overrides(tmp_path / "r", data_dir)]
    assert main(args) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists()


def test_no_unsafe_loaders_in_clipkd():
    """Nothing in clipkd unpickles arbitrary objects or loads YAML without the safe loader."""
    bad = re.compile(r"weights_only\s*=\s*False|pickle\.loads?\(|yaml\.load\(|yaml\.unsafe_load|Loader=yaml\.Loader")
    hits = [f"{p}:{i}" for p in SRC.rglob("*.py") for i, line in enumerate(p.read_text().splitlines(), 1)
            if bad.search(line)]
    assert hits == []


def test_training_state_round_trips_with_weights_only(tmp_path, data_dir):
    """A real run's train_state.pt holds only what weights_only=True accepts (RNG states included)."""
    assert main(["train", *base_overrides(tmp_path / "r", data_dir, **{"optim.steps": 1})]) == 0
    last = ckpt.list_checkpoints(tmp_path / "r")[-1]
    state = torch.load(last / ckpt.STATE_FILE, weights_only=True)
    assert state["step"] == 1 and set(state["ranks"][0]["rng"]) == {"torch", "python", "numpy", "cuda"}


def test_resume_from_older_keeps_new_write_and_moves_newer_aside(tmp_path):
    run = tmp_path / "run"
    for step in (4, 9):
        _save(run, step, keep_last=2)
    moved = ckpt.abandon_after(run, 4)
    assert [p.name for p in moved] == ["step_00000009"] and moved[0].is_dir()
    written = _save(run, 5, keep_last=2)
    assert written.is_dir() and _names(run) == ["step_00000004", "step_00000005"]
    assert ckpt.resolve_resume("latest", run) == written


def test_prune_never_deletes_the_checkpoint_just_written(tmp_path):
    run = tmp_path / "run"
    for step in (7, 8, 9):
        _save(run, step, keep_last=3)
    written = _save(run, 2, keep_last=1)  # lower step than the others: still the one kept
    assert _names(run) == ["step_00000002"] and written.is_dir()


def test_replacing_a_step_keeps_old_or_new_on_disk(tmp_path, monkeypatch):
    """Crash between moving the old folder aside and moving the new one in: the old one is restored at start."""
    run = tmp_path / "run"
    first = _save(run, 3)
    original = (first / ckpt.STUDENT_FILE).read_bytes()
    real_replace = os.replace

    def crash_on_second(src, dst):
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        _save(run, 3)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    on_disk = [p.name for p in (run / "checkpoints").iterdir()]
    assert any(n.startswith(".old-step_00000003") for n in on_disk)  # the old one is on disk, aside
    done = ckpt.clean_leftovers(run)
    assert "restored step_00000003" in done and any(d.startswith("removed .tmp-") for d in done)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003"]
    assert (run / "checkpoints" / "step_00000003" / ckpt.STUDENT_FILE).read_bytes() == original
    ckpt.verify_checkpoint(run / "checkpoints" / "step_00000003")


def test_leftover_temp_folders_are_cleaned_at_start(tmp_path, data_dir):
    run = tmp_path / "r"
    assert main(["train", *base_overrides(run, data_dir, **{"optim.steps": 2})]) == 0
    stale = run / "checkpoints" / ".tmp-step_00000004-12345"
    stale.mkdir()
    (stale / ckpt.STUDENT_FILE).write_bytes(b"half")
    assert main(["train", "--resume", "latest", *base_overrides(run, data_dir, **{"optim.steps": 2})]) == 0
    assert not stale.exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_checkpoint_is_named_and_latest_falls_back(damage, tmp_path, caplog):
    run = tmp_path / "run"
    good = _save(run, 1)
    bad = _save(run, 2)
    target = bad / ckpt.STATE_FILE
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    else:
        target.unlink()
    with pytest.raises(ckpt.CorruptCheckpointError, match=re.escape(str(target))):
        ckpt.verify_checkpoint(bad)
    if damage != "delete":
        with pytest.raises(ckpt.CorruptCheckpointError, match="train_state.pt"):
            ckpt.resolve_resume(str(bad), run)
    assert ckpt.resolve_resume("latest", run) == good
    assert "skipping corrupt checkpoint" in caplog.text
