"""A short end-to-end distillation run on drawn shapes: every part of the foundation, in a minute on a CPU.

`clipkd smoke` checks an installation without any download or data. The teacher is first fitted
contrastively on the same shapes for a few steps, so the student has something to learn from.
"""

from __future__ import annotations

import random
from typing import Callable, Optional

import torch
from tqdm import tqdm

from clipkd.data.batch import DistillBatch
from clipkd.data.decode import collate_views
from clipkd.data.synthetic import shape_samples
from clipkd.data.views import PairedViews
from clipkd.distill import build_distiller
from clipkd.losses.functional import own_loss
from clipkd.losses.recipes import get_recipe
from clipkd.models.encoders import ClipEncoder
from clipkd.models.open_clip_adapter import create_open_clip_encoder


def make_batch(samples: list, views: PairedViews, rng: random.Random) -> DistillBatch:
    """The trainer's paired views: one random crop per sample shared by both sides, then each side's own
    resize, normalisation and tokenizer."""
    return collate_views([views(s.image, s.caption, rng) for s in samples])


def fit_teacher(teacher: ClipEncoder, batches: list[DistillBatch], steps: int, lr: float = 1e-3) -> list[float]:
    """A few steps of the teacher's own loss (CLIP's, or SigLIP's for a sigmoid teacher), so the smoke run's teacher
    is better than random."""
    opt = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=0.1)
    losses = []
    for step in tqdm(range(steps), desc="teacher", leave=False):
        b = batches[step % len(batches)]
        loss = own_loss(teacher.encode_image(b.teacher_images), teacher.encode_text(b.teacher_text), teacher.scale(),
                        teacher.bias())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def run_smoke(
    recipe: str = "clipkd",
    student_model: str = "clipkd-tiny-vit",
    teacher_model: str = "clipkd-tiny-teacher",
    steps: int = 20,
    teacher_steps: int = 20,
    batch_size: int = 32,
    seed: int = 0,
    log: Optional[Callable[[str], None]] = print,
) -> list[dict[str, float]]:
    """Fit a tiny teacher, then distil a tiny student with ``recipe``; return each step's loss values."""
    rec = get_recipe(recipe)  # validate before any compute
    torch.manual_seed(seed)
    teacher = create_open_clip_encoder(teacher_model)
    student = create_open_clip_encoder(student_model)
    samples = list(shape_samples(batch_size * 4, seed=seed))
    views, rng = PairedViews(student, teacher, crop_scale=(0.9, 1.0)), random.Random(seed)
    batches = [make_batch(samples[i : i + batch_size], views, rng) for i in range(0, len(samples), batch_size)]
    t_losses = fit_teacher(teacher, batches, teacher_steps)
    distiller = build_distiller(student, teacher, rec.weights, rec.mask_ratio)
    opt = torch.optim.AdamW(distiller.student.parameters(), lr=1e-3, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(steps), desc=f"distil ({recipe})")
    for step in bar:
        out = distiller(batches[step % len(batches)], gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.detach().item() for k, v in out.items()})
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}")
    if log:
        log(f"teacher loss {t_losses[0]:.3f} -> {t_losses[-1]:.3f}")
        terms = ", ".join(f"{k} {history[0][k]:.4g} -> {history[-1][k]:.4g}" for k in history[0])
        log(f"student ({recipe}, {student_model} <- {teacher_model}): {terms}")
    return history
