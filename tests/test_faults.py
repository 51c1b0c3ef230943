"""Faults: kill -9 at any moment, pre-emption signals, non-finite steps. Nothing is lost; resumes are exact."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipkd.config import load_config
from clipkd.engine import checkpoint as ckpt
from clipkd.runtime.distributed import torchrun_command
from clipkd.engine.logger import read_metrics
from clipkd.engine.trainer import Trainer
from clipkd.commands.train import make_trainer
from clipkd.errors import TrainingDiverged
from test_train import base_overrides

HARNESS = Path(__file__).parent / "kill_harness.py"
STEPS = 8
LOSS_KEYS = ("train/loss", "train/task", "train/crd", "train/icl", "train/fd", "train/lr")


def _overrides(run: Path, data_dir: Path) -> list[str]:
    return base_overrides(run, data_dir, **{"optim.steps": STEPS, "checkpoint.every_steps": 3, "data.workers": 2,
                                            "data.batch_size": 8})


def _harness(point: str, n: int, run: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(HARNESS), point, str(n), *extra, *_overrides(run, data_dir)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, as a job under Slurm has
    out, err = proc.communicate(timeout=300)
    done = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    done.pgid = proc.pid
    return done


def _outcome(run: Path) -> tuple[dict, list]:
    final = ckpt.list_checkpoints(run)[-1]
    assert final.name == f"step_{STEPS:08d}"
    rows = [{k: r[k] for k in LOSS_KEYS} | {"step": r["step"]} for r in read_metrics(run, "train")]
    return load_file(str(final / ckpt.STUDENT_FILE)), rows


@pytest.fixture(scope="module")
def unbroken(data_dir, module_tmp):
    run = module_tmp("unbroken") / "run"
    done = _harness("none", 0, run, data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return _outcome(run)


def _assert_same_as_unbroken(run: Path, unbroken) -> None:
    weights, rows = _outcome(run)
    ref_weights, ref_rows = unbroken
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # each step logged exactly once
    assert rows == ref_rows
    assert weights.keys() == ref_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, ref_weights[name]), name  # bit-identical on CPU


def _no_process_left(pgid: int, wait: float = 5.0) -> bool:
    """True once no process of the group is left (polled for up to ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("point, n", [("step", 5), ("in-write", 2), ("before-rename", 1)])
def test_kill9_then_resume_is_bit_identical(point, n, data_dir, tmp_path, unbroken):
    run = tmp_path / "run"
    killed = _harness(point, n, run, data_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _no_process_left(killed.pgid)  # its loader workers left with it
    leftovers = [p.name for p in (run / "checkpoints").iterdir()] if (run / "checkpoints").exists() else []
    if point != "step":
        assert any(name.startswith(".tmp-") for name in leftovers)  # really killed inside the write
    resumed = _harness("none", 0, run, data_dir, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    _assert_same_as_unbroken(run, unbroken)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_preemption_signal_checkpoints_and_exits_0(sig, data_dir, tmp_path, unbroken):
    run = tmp_path / "run"
    # sent to the whole process group, loader workers included, after step 4's ranks agreed to go on: the
    # run finishes the step in progress (5), checkpoints it and exits 0
    stopped = _harness(sig, 4, run, data_dir)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert f"stopped by {sig} at step 5" in stopped.stdout
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000003", "step_00000005"]
    assert _no_process_left(stopped.pgid)  # no loader worker outlived the run
    resumed = _harness("none", 0, run, data_dir, "--resume", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_as_unbroken(run, unbroken)


def test_second_signal_exits_at_once(data_dir, tmp_path):
    run = tmp_path / "run"
    done = _harness("SIGTERM-twice", 4, run, data_dir)
    assert done.returncode == -signal.SIGTERM
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step_00000003"]  # no checkpoint at step 4


# -- non-finite steps -----------------------------------------------------------------------------------------
def _poisoning(trainer: Trainer, bad_calls: set[int], what: str = "grad"):
    """Make the gradient (or the loss and gradient) of the given calls of the step (1-based) non-finite."""
    real = trainer.grad_step
    calls = {"n": 0}

    def step(batches, generator):
        out = real(batches, generator)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            next(p for p in trainer.student.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
            if what == "loss":
                out = {**out, "loss": torch.tensor(float("nan"))}
        return out

    trainer.grad_step = step


def _snapshot(trainer: Trainer):
    return ({k: v.clone() for k, v in trainer.student.state_dict().items()},
            {k: {n: t.clone() for n, t in s.items() if torch.is_tensor(t)}
             for k, s in trainer.optimizer.state_dict()["state"].items()})


@pytest.mark.parametrize("precision, what", [("fp32", "grad"), ("bf16", "loss"), ("fp16", "loss")])
def test_nonfinite_step_is_skipped_without_any_change(precision, what, data_dir, tmp_path):
    over = base_overrides(tmp_path / "r", data_dir, **{"optim.steps": 4, "distill.recipe": "fd",
                                                        "precision": precision})
    trainer = make_trainer(load_config(None, over))
    _poisoning(trainer, {3}, what)
    seen = []
    real_step = trainer.train_step

    def recording(batches):
        before, scale = _snapshot(trainer), trainer.scaler.get_scale() if trainer.scaler.is_enabled() else None
        values = real_step(batches)
        seen.append((trainer.agreed.nonfinite, before, _snapshot(trainer), trainer.scheduler.last_epoch,
                     scale, trainer.scaler.get_scale() if scale is not None else None))
        return values

    trainer.train_step = recording
    result = trainer.fit()
    assert result.step == 4 and result.nonfinite_steps == 1 and len(seen) == 5
    bad, before, after, _, scale_before, scale_after = seen[2]
    assert bad and not any(s[0] for i, s in enumerate(seen) if i != 2)
    for name, tensor in before[0].items():
        assert torch.equal(tensor, after[0][name]), name
    for key, state in before[1].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, after[1][key][name])
    assert seen[2][3] == seen[1][3]  # the schedule did not advance
    assert scale_before == scale_after  # nor did the grad scaler (fp16) back off
    rows = read_metrics(tmp_path / "r", "train")
    assert rows[-1]["train/nonfinite_steps"] == 1


def test_consecutive_nonfinite_steps_stop_with_last_good_checkpoint(data_dir, tmp_path):
    over = base_overrides(tmp_path / "r", data_dir, **{"optim.steps": 20, "optim.max_nonfinite_steps": 3,
                                                        "checkpoint.every_steps": 2})
    trainer = make_trainer(load_config(None, over))
    _poisoning(trainer, set(range(4, 100)))
    with pytest.raises(TrainingDiverged, match=r"3 consecutive .*optim.max_nonfinite_steps=3.*step_00000002"):
        trainer.fit()
    latest = ckpt.resolve_resume("latest", tmp_path / "r")
    assert latest.name == "step_00000002"
    ckpt.verify_checkpoint(latest)


def test_nonfinite_on_one_rank_skips_the_step_on_every_rank(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = torchrun_command(2, [str(Path(__file__).parent / "fault_worker.py"), str(tmp_path), str(data_dir)])
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = torch.load(tmp_path / "faults.pt", weights_only=True)
    assert [r["steps"] for r in ranks] == [3, 3] and [r["nonfinite"] for r in ranks] == [1, 1]
    for r in ranks:
        assert len(r["params"]) == 4  # 4 step attempts, the second skipped
        for name, tensor in r["params"][1].items():
            assert torch.equal(tensor, r["params"][0][name]), name  # nothing changed on the skipped step
    for name, tensor in ranks[0]["params"][-1].items():
        assert torch.equal(tensor, ranks[1]["params"][-1][name]), name  # ranks still agree
