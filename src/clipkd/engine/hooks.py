"""Evaluation hooks: called every ``eval.every_steps`` and at the end; their metrics are logged as ``eval/*``.

A hook is any callable ``hook(distiller, step) -> {name: value}`` with a ``name``. The trainer puts the
student in eval mode around the call and back to train mode after. Zero-shot and retrieval benchmarks
(:class:`clipkd.eval.runner.BenchmarkHook`) and the held-out loss + diagnostics below plug in here.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

import torch

from clipkd.data.stream import DataPosition, DistillStream, make_loader
from clipkd.distill import Distiller
from clipkd.eval.diagnostics import linear_cka, mean_cosine, similarity_kl


class EvalHook(Protocol):
    name: str

    def __call__(self, distiller: Distiller, step: int) -> dict[str, float]: ...


def embedding_diagnostics(parts: dict[str, torch.Tensor], s_scale: float, t_scale: float) -> dict[str, float]:
    """How close the student got to the teacher on held-out pairs.

    ``image_cosine``/``text_cosine``: mean teacher-student cosine after the student's projection heads (only
    when they map to the teacher's size); ``image_cka``/``text_cka``: linear CKA of the student's own
    embeddings against the teacher's; ``similarity_kl``: KL(teacher || student) of the image->text
    similarity distributions, each with its own scale.
    """
    out = {"image_cka": linear_cka(parts["s_img"], parts["t_img"]),
           "text_cka": linear_cka(parts["s_txt"], parts["t_txt"]),
           "similarity_kl": similarity_kl(parts["s_img"], parts["s_txt"], s_scale,
                                          parts["t_img"], parts["t_txt"], t_scale)}
    if parts["s_img_proj"].shape[1] == parts["t_img"].shape[1]:
        out["image_cosine"] = mean_cosine(parts["s_img_proj"], parts["t_img"])
        out["text_cosine"] = mean_cosine(parts["s_txt_proj"], parts["t_txt"])
    return out


class ValLossHook:
    """On held-out pairs (no masking, no augmentation): the mean of every active loss term and the total,
    plus the teacher-student diagnostics of :func:`embedding_diagnostics`."""

    name = "val"

    def __init__(self, stream: DistillStream, batches: int, device: torch.device):
        self.stream, self.batches, self.device = stream, batches, device

    @torch.no_grad()
    def __call__(self, distiller: Distiller, step: int) -> dict[str, float]:
        self.stream.start(DataPosition())  # the same held-out batches every time
        sums: dict[str, float] = defaultdict(float)
        parts: dict[str, list] = defaultdict(list)
        count = 0
        for batch, _ in make_loader(self.stream, self.stream.workers if self.stream.workers > 1 else 0):
            batch = batch.to(self.device)
            t = distiller.teacher(batch.teacher_images, batch.teacher_text)
            s = distiller.student(batch.student_images, batch.student_text, t, 0.0)
            for k, v in distiller.loss(s, t).items():
                sums[k] += float(v)
            for k, v in {"s_img": s.img, "s_txt": s.txt, "s_img_proj": s.img_proj, "s_txt_proj": s.txt_proj,
                         "t_img": t.img, "t_txt": t.txt}.items():
                parts[k].append(v.float().cpu())
            count += 1
            if count >= self.batches:
                break
        metrics = {k: v / max(count, 1) for k, v in sums.items()}
        if count:
            cat = {k: torch.cat(v) for k, v in parts.items()}
            metrics.update(embedding_diagnostics(cat, float(s.scale), float(t.scale)))
        return metrics
