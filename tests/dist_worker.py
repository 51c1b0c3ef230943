"""Helpers for the distributed tests, and the worker that torchrun starts in them.

Every scenario takes one optimizer step on the same global batch of ``GLOBAL`` samples, cut into the
micro-batches of each process, and records every term's value and the student's parameters after the step.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py OUT DATA
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

from clipkd.config import load_config
from clipkd.data.batch import DistillBatch
from clipkd.runtime.distributed import DistEnv, init_distributed, shutdown
from clipkd.engine.trainer import Trainer
from clipkd.commands.train import make_trainer
from test_train import base_overrides

GLOBAL = 16
ALL_TERMS = {"task": 1.0, "crd": 1.0, "fd": 2000.0, "icl": 1.0, "gd": 1000.0, "afd": 1.0}
SIGMOID_TERMS = {"siglip": 1.0, "sigmoid_crd": 1.0, "fd": 2000.0, "icl": 1.0, "afd": 1.0}
SIGMOID = {"student": "clipkd-tiny-siglip", "teacher": "clipkd-tiny-siglip", "distill.weights": SIGMOID_TERMS}
"""A sigmoid student distilled from a sigmoid teacher, with every term that applies to it."""
WORDS = ["red", "blue", "green", "circle", "square", "small", "large", "a", "photo", "of", "two", "left"]


def config(run_dir, data_dir, accum: int = 1, teacher: str = "clipkd-tiny-teacher", mask_ratio: float = 0.0,
           student: str = "clipkd-tiny-vit", **extra):
    """A one-step run with every term active; ``data_dir`` as the ``data_dir`` test fixture lays it out."""
    items = {"teacher.model": teacher, "student.model": student, "distill.weights": extra.pop("distill.weights",
             ALL_TERMS), "distill.mask_ratio": mask_ratio, "data.batch_size": 4, "optim.warmup_steps": 0, "optim.steps": 1,
             "optim.accum_steps": accum, **extra}
    return load_config(None, base_overrides(run_dir, Path(data_dir), **items))


def global_batch(trainer: Trainer, n: int = GLOBAL, seed: int = 123) -> DistillBatch:
    """The same random batch on every process: each side's image size and tokenizer."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    captions = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))) for _ in range(n)]
    s_enc, t_enc = trainer.distiller.student.encoder, trainer.distiller.teacher.encoder
    s_img = torch.randn((n, 3, *s_enc.image_size), generator=g)
    t_img = torch.randn((n, 3, *t_enc.image_size), generator=g)
    return DistillBatch(s_img, s_enc.tokenizer(captions), t_img, t_enc.tokenizer(captions),
                        keys=[str(i) for i in range(n)])


def rows(batch: DistillBatch, start: int, stop: int) -> DistillBatch:
    cut = lambda x: x[start:stop]  # noqa: E731
    text = lambda t: cut(t) if isinstance(t, torch.Tensor) else {k: cut(v) for k, v in t.items()}  # noqa: E731
    return DistillBatch(cut(batch.student_images), text(batch.student_text), cut(batch.teacher_images),
                        text(batch.teacher_text), batch.keys[start:stop])


def one_step(trainer: Trainer, env: DistEnv) -> dict:
    """This rank's share of the global batch, as ``accum_steps`` micro-batches; one optimizer step."""
    batch = global_batch(trainer)
    per_rank = len(batch) // env.world_size
    micro = per_rank // trainer.accum
    start = env.rank * per_rank
    micro_batches = [rows(batch, start + k * micro, start + (k + 1) * micro).to(trainer.device)
                     for k in range(trainer.accum)]
    # AdamW's first update hardly depends on the gradient's scale: compare the raw gradients too
    trainer.grad_step(micro_batches, trainer.mask_gen)
    grads = {k: p.grad.clone() for k, p in trainer.student.named_parameters() if p.grad is not None}
    values = trainer.train_step(micro_batches)
    params = {k: v.detach().clone() for k, v in trainer.student.state_dict().items()}
    return {"values": values, "params": params, "grads": grads}


def main(out: str, data_dir: str) -> None:
    env = init_distributed("cpu")
    results = {}
    for accum in (1, 2):
        cfg = config(Path(out) / f"run-{accum}", data_dir, accum=accum)
        results[accum] = one_step(make_trainer(cfg, env=env), env)
        cfg = config(Path(out) / f"sigmoid-{accum}", data_dir, accum=accum, **SIGMOID)
        results[f"sigmoid-{accum}"] = one_step(make_trainer(cfg, env=env), env)
    if env.is_main:
        torch.save(results, Path(out) / "dist.pt")
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:3])
