"""CPU thread choice (busy laptops) and fp16 overflow steps counted without PyTorch's scheduler warning."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from clipkd.config import load_config
from clipkd.engine.logger import read_metrics
from clipkd.runtime.threads import _cgroup_quota, choose_threads, set_thread_environment, usable_cores
from clipkd.commands.train import make_trainer
from test_train import base_overrides


@pytest.mark.parametrize("requested, procs, cores, env, expected", [
    (None, 1, 2, {}, 2),
    (None, 1, 16, {}, 16),
    (None, 2, 16, {}, 8),              # two processes on this machine share its cores
    (None, 3, 2, {}, 1),               # never below one
    (None, 1, 2, {"OMP_NUM_THREADS": "3"}, 3),   # the environment wins over the choice
    (2, 1, 16, {"OMP_NUM_THREADS": "3"}, 2),     # the config wins over both
    (None, 1, 4, {"OMP_NUM_THREADS": "junk"}, 4),
])
def test_choose_threads(requested, procs, cores, env, expected):
    assert choose_threads(requested, procs, cores=cores, environ=env)[0] == expected


def test_cgroup_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    assert _cgroup_quota(tmp_path / "missing") is None


def test_wait_policy_keeps_the_users_choice():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_thread_environment(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    env = {}
    set_thread_environment(env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("threads, expected", [(1, 1), (None, None)])
def test_trainer_sets_the_threads(threads, expected, data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    extra = {"optim.steps": 1, **({"threads": threads} if threads else {})}
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        make_trainer(load_config(None, base_overrides(tmp_path / "r", data_dir, **extra)))
        want = expected or usable_cores()
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(saved)


def test_cli_sets_passive_wait_before_torch_loads(tmp_path):
    """`clipkd` sets OMP_WAIT_POLICY before torch is imported (OpenMP reads it once, when it loads)."""
    code = ("import os, sys\n"
            "from clipkd.cli import main\n"
            "try:\n    main(['train', '--nproc', '0'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["PASSIVE", "False"]


def test_fp16_overflow_steps_are_counted_without_scheduler_warning(data_dir, tmp_path):
    """Steps whose scaled gradients overflow: no update, the scale halves, the schedule advances, no warning."""
    over = base_overrides(tmp_path / "r", data_dir, **{"precision": "fp16", "optim.steps": 3,
                                                        "checkpoint.every_steps": 3})
    trainer = make_trainer(load_config(None, over))
    trainer.scaler.load_state_dict({"scale": 1e38, "growth_factor": 2.0, "backoff_factor": 0.5,
                                    "growth_interval": 2000, "_growth_tracker": 0})
    before = {k: v.clone() for k, v in trainer.student.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trainer.fit()
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert result.fp16_overflow_steps == 3 and result.nonfinite_steps == 0
    assert trainer.scaler.get_scale() == pytest.approx(1e38 * 0.5 ** 3, rel=1e-6)  # float32 scale
    assert trainer.scheduler.last_epoch == 3
    for name, tensor in trainer.student.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    rows = read_metrics(tmp_path / "r", "train")
    assert [r["train/fp16_overflow_steps"] for r in rows] == [1, 2, 3]
    state = torch.load(tmp_path / "r" / "checkpoints" / "step_00000003" / "train_state.pt", weights_only=True)
    assert state["fp16_overflows"] == 3
