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


def test_views_made_on_the_gpu_match_the_cpus():
    """The GPU's float filters against the CPU's 8-bit ones (and so PIL's, ``tests/test_device_views.py``): within
    1 level of 255, and the regions are copied to the GPU once, as 8-bit pixels."""
    import random

    import numpy as np

    from clipkd.data.decode import open_image
    from clipkd.data.synthetic import natural_jpeg
    from clipkd.data.tensor_views import PackedImages, TensorPreprocess, render

    rng = random.Random(0)
    image = np.asarray(open_image(natural_jpeg(640, 480, seed=1)))
    boxes = [(rng.randrange(0, 200), rng.randrange(0, 200), rng.randrange(100, 280), rng.randrange(100, 440))
             for _ in range(16)]
    packed = PackedImages.pack([torch.from_numpy(image[t:t + h, l:l + w].copy()) for t, l, h, w in boxes],
                               [b[2:] for b in boxes])
    pre = TensorPreprocess(224, 224, "bicubic", (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    on_gpu = packed.to("cuda")
    assert on_gpu.data.dtype == torch.uint8 and on_gpu.data.is_cuda
    got, want = render(on_gpu, pre).cpu(), render(packed, pre)
    levels = (got - want).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    assert levels.max() <= 1.0 + 1e-3 and levels.mean() < 0.05


def test_a_training_step_syncs_with_the_host_once(data_dir, tmp_path):
    """``torch.cuda.set_sync_debug_mode``: a bf16 step of every term, with views made on the GPU from the stream's
    8-bit regions, synchronises with the host once (the values and the ranks' agreement, read together)."""
    import warnings

    cfg = config(tmp_path / "sync", data_dir, device="cuda", precision="bf16", **{"optim.steps": 4,
                                                                                 "data.preprocess": "device"})
    from clipkd.data.stream import DataPosition

    trainer = make_trainer(cfg)
    trainer.stream.start(DataPosition(), endless=True)
    batches = [b for b, _ in zip(iter(trainer.stream), range(4))]
    trainer.train_step([batches[0][0]])  # warm-up: allocations, cuBLAS handles
    torch.cuda.synchronize()
    counts = []
    for batch, _ in batches[1:]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_step([batch])
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts == [1, 1, 1]


def test_the_loader_pins_batches_for_a_gpu(data_dir, tmp_path):
    """With a CUDA device the loader hands over page-locked batches (the regions' one buffer included), so the copy
    to the GPU can overlap with the step."""
    from clipkd.data.stream import DataPosition, make_loader

    trainer = make_trainer(config(tmp_path / "pin", data_dir, device="cuda", **{"data.preprocess": "device"}))
    trainer.stream.start(DataPosition())
    batch, _ = next(iter(make_loader(trainer.stream, 0, 0, pin_memory=True)))
    assert batch.student_images.images.data.is_pinned() and batch.student_text.is_pinned()
    assert batch.teacher_images.images is batch.student_images.images
