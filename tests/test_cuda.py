"""CUDA paths (skipped without a GPU): exact accumulation, DDP over NCCL, training with bf16 and resume.

Run on a GPU machine with `pytest tests/test_cuda.py` (see benchmarks/gpu_session.sh).
"""

import datetime
import socket

import pytest
import torch
import torch.distributed as dist

from clipkd.cli import main as cli_main
from clipkd.engine.checkpoint import list_checkpoints
from clipkd.runtime.distributed import DistEnv
from clipkd.engine.logger import read_metrics
from clipkd.commands.train import make_trainer
from dist_worker import config, one_step
from test_train import base_overrides

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def full_fp32():
    """Exactness checks need real fp32 (cuDNN convolutions default to TF32)."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _close(a: dict, b: dict, tol: float = 1e-4) -> None:
    for name in a["values"]:
        assert a["values"][name] == pytest.approx(b["values"][name], rel=tol, abs=tol), name
    for name, g in a["grads"].items():
        scale = b["grads"][name].abs().max().item()
        torch.testing.assert_close(g, b["grads"][name], rtol=tol, atol=tol * max(scale, 1e-3), msg=name)


def test_accumulation_equals_one_big_batch_on_cuda(data_dir, tmp_path):
    ref = one_step(make_trainer(config(tmp_path / "a", data_dir, device="cuda")), DistEnv())
    acc = one_step(make_trainer(config(tmp_path / "b", data_dir, accum=4, device="cuda")), DistEnv())
    assert ref["grads"]["encoder.model.logit_scale"].is_cuda
    _close(acc, ref)


class _GroupOfOne(DistEnv):
    """World size 1 that still goes through DDP and the NCCL all-gather (one GPU cannot host two ranks)."""

    @property
    def active(self) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_and_nccl_gather_path(data_dir, tmp_path):
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(minutes=2))
    try:
        trainer = make_trainer(config(tmp_path / "ddp", data_dir, accum=2, device="cuda"), env=_GroupOfOne())
        assert isinstance(trainer.student_fn, torch.nn.parallel.DistributedDataParallel)
        got = one_step(trainer, trainer.env)
    finally:
        dist.destroy_process_group()
    ref = one_step(make_trainer(config(tmp_path / "ref", data_dir, device="cuda")), DistEnv())
    _close(got, ref)


def test_cli_train_bf16_accumulation_and_resume_on_cuda(data_dir, tmp_path):
    run = tmp_path / "run"
    args = base_overrides(run, data_dir, **{"device": "cuda", "precision": "bf16", "distill.recipe": "mfd",
                                            "data.batch_size": 8, "data.workers": 1, "optim.warmup_steps": 1,
                                            "optim.accum_steps": 2})
    assert cli_main(["train", *args, "optim.steps=2"]) == 0
    assert cli_main(["train", "--resume", "latest", *args, "optim.steps=4"]) == 0
    assert [p.name for p in list_checkpoints(run)][-1] == "step_00000004"
    rows = read_metrics(run, "train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows)
