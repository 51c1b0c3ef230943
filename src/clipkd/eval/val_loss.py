"""The held-out loss and teacher-student diagnostics: an evaluation hook (:class:`ValLossHook`) that the trainer
calls every ``eval.every_steps`` (built from a config by :func:`clipkd.build.hooks.val_loss_hook`) and that
``clipkd eval --diagnostics`` runs alone."""

from __future__ import annotations

from collections import defaultdict

import torch

from clipkd.data.heldout import HeldOutPairs
from clipkd.distill import Distiller
from clipkd.embeddings import NEEDS_TEACHER, StudentOutput
from clipkd.eval.diagnostics import linear_cka, mean_cosine, similarity_kl
from clipkd.models.encoders import eval_mode


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


def _student_and_losses(distiller: Distiller, batch, t) -> tuple[StudentOutput, dict[str, torch.Tensor]]:
    """The student's embeddings and the loss terms of a held-out batch. Without the teacher's embeddings although a
    term needs them (reinforced data: held-out pairs have none) only the student's own embeddings (AFD's heads take
    the teacher's) and only the terms that need no teacher, e.g. ``task``, without a total."""
    if t is not None or not distiller.loss.needs_teacher:
        s = distiller.student(batch.student_images, batch.student_text, t, 0.0)
        return s, {**distiller.loss(s, t), **distiller.per_teacher(s, t)}  # an ensemble: each teacher's terms too
    enc = distiller.student.encoder
    s = StudentOutput(img=enc.encode_image(batch.student_images), txt=enc.encode_text(batch.student_text),
                      scale=enc.scale(), bias=enc.bias())
    return s, {n: term(s, None) for n, term in distiller.loss.terms.items() if NEEDS_TEACHER not in term.needs}


class ValLossHook:
    """On held-out pairs (no masking, no augmentation): every active loss term and the total, plus the
    teacher-student diagnostics of :func:`embedding_diagnostics`, ``pairs`` (held-out pairs evaluated) and
    ``skipped`` (unusable held-out records).

    The student runs in eval mode (BatchNorm running statistics, no dropout) whatever mode it is in; its
    previous mode is restored afterwards. Each held-out pair is seen exactly once, in the source's order,
    the last batch partial (:class:`~clipkd.data.heldout.HeldOutPairs`). A loss term's value is its mean over
    batches weighted by batch size (``sum_b n_b * term_b / sum_b n_b``); contrastive terms still depend on the
    held-out batch size, since each batch is its own set of negatives. The diagnostics are computed once on
    all pairs' embeddings, so they do not depend on it.
    """

    name = "val"

    def __init__(self, pairs: HeldOutPairs, device: torch.device):
        self.pairs, self.device = pairs, device

    @torch.no_grad()
    def __call__(self, distiller: Distiller, step: int) -> dict[str, float]:
        with eval_mode(distiller.student):
            return self._evaluate(distiller)

    def _evaluate(self, distiller: Distiller) -> dict[str, float]:
        sums: dict[str, float] = defaultdict(float)
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        scales: tuple[float, float] = (0.0, 0.0)
        for batch in self.pairs:
            batch = batch.to(self.device)
            t = distiller.teacher(batch.teacher_images, batch.teacher_text) if distiller.teacher is not None else None
            s, values = _student_and_losses(distiller, batch, t)
            for k, v in values.items():
                sums[k] += float(v) * len(batch)
            if t is not None and t.scale.dim() == 0:  # the diagnostics compare with one teacher: none otherwise
                for k, v in {"s_img": s.img, "s_txt": s.txt, "s_img_proj": s.img_proj, "s_txt_proj": s.txt_proj,
                             "t_img": t.img, "t_txt": t.txt}.items():
                    parts[k].append(v.float().cpu())
                scales = (float(s.scale), float(t.scale))
        count = self.pairs.pairs
        metrics = {k: v / count for k, v in sums.items()} if count else {}
        if count and parts:
            metrics.update(embedding_diagnostics({k: torch.cat(v) for k, v in parts.items()}, *scales))
        metrics["pairs"] = float(count)
        metrics["skipped"] = float(sum(self.pairs.skipped.values()))
        return metrics
