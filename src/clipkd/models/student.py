"""The trainable side: ONE module holding the student encoder and every distillation head.

Everything that trains lives here (encoder, image/text projection heads, ICL and AFD scales, AFD fusion
heads), so the optimizer, DDP and checkpoints see a single module. The official code created the heads
outside the model, per rank, and never saved them; see README "Deviations".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AbstractSet, Optional

import torch
from torch import nn

from clipkd.models.encoders import INIT_LOGIT_SCALE, ClipEncoder, Embeddings, TextBatch, clamped_scale, normalize

# What a loss term may need from the student besides its own embeddings.
NEEDS_TEACHER = "teacher"
NEEDS_PROJECTION = "projection"
NEEDS_ICL_SCALE = "icl_scale"
NEEDS_AFD = "afd"
REQUIREMENTS = frozenset({NEEDS_TEACHER, NEEDS_PROJECTION, NEEDS_ICL_SCALE, NEEDS_AFD})


@dataclass
class StudentOutput(Embeddings):
    """The student's embeddings for one batch.

    ``img``/``txt``/``scale``: the student's own normalised embeddings and logit-scale multiplier.
    ``img_proj``/``txt_proj``: projected to the teacher's size and re-normalised (the same tensors as
    ``img``/``txt`` when the sizes match). ``afd_img``/``afd_txt``: fused with the teacher (AFD only).
    """

    img_proj: Optional[torch.Tensor] = None
    txt_proj: Optional[torch.Tensor] = None
    icl_scale: Optional[torch.Tensor] = None
    afd_img: Optional[torch.Tensor] = None
    afd_txt: Optional[torch.Tensor] = None
    afd_scale: Optional[torch.Tensor] = None

    def map(self, fn):  # type: ignore[override]
        """Apply ``fn`` to every per-sample tensor that is set; scales are kept."""
        wrapped = lambda t: None if t is None else fn(t)  # noqa: E731
        return super().map(wrapped)


def _log_scale() -> nn.Parameter:
    return nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))


class DistillStudent(nn.Module):
    """Student encoder plus the heads the active loss terms need.

    Args:
        encoder: the student :class:`ClipEncoder` (trainable).
        teacher_dim: the teacher's embedding size ``d_t``.
        needs: union of the active terms' requirements (see ``REQUIREMENTS``); heads nothing needs are not
            created, so DDP never sees unused parameters.
    """

    def __init__(self, encoder: ClipEncoder, teacher_dim: int, needs: AbstractSet[str] = frozenset()):
        super().__init__()
        unknown = set(needs) - REQUIREMENTS
        if unknown:
            raise ValueError(f"unknown student requirements: {sorted(unknown)}")
        self.encoder = encoder
        self.teacher_dim = int(teacher_dim)
        self.needs = frozenset(needs)
        d_s, d_t = encoder.embed_dim, self.teacher_dim
        project = bool(self.needs & {NEEDS_PROJECTION, NEEDS_AFD}) and d_s != d_t
        self.proj_img = nn.Linear(d_s, d_t) if project else None
        self.proj_txt = nn.Linear(d_s, d_t) if project else None
        self.icl_logit_scale = _log_scale() if NEEDS_ICL_SCALE in self.needs else None
        self.afd_fuse_img = nn.Linear(2 * d_t, d_t) if NEEDS_AFD in self.needs else None
        self.afd_fuse_txt = nn.Linear(2 * d_t, d_t) if NEEDS_AFD in self.needs else None
        self.afd_logit_scale = _log_scale() if NEEDS_AFD in self.needs else None

    def forward(
        self,
        images: torch.Tensor,
        text: TextBatch,
        teacher: Optional[Embeddings] = None,
        mask_ratio: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> StudentOutput:
        """Embed a batch. With ``mask_ratio > 0`` the image tower sees masked images (MFD).

        ``teacher`` is required when AFD is active: its embeddings enter the fusion heads.
        """
        enc = self.encoder
        img = enc.encode_image_masked(images, mask_ratio, generator) if mask_ratio > 0 else enc.encode_image(images)
        out = StudentOutput(img=img, txt=enc.encode_text(text), scale=enc.scale())
        out.img_proj, out.txt_proj = self._project(out.img, self.proj_img), self._project(out.txt, self.proj_txt)
        if self.icl_logit_scale is not None:
            out.icl_scale = clamped_scale(self.icl_logit_scale)
        if self.afd_logit_scale is not None:
            self._fuse(out, teacher)
        return out

    @staticmethod
    def _project(x: torch.Tensor, head: Optional[nn.Linear]) -> torch.Tensor:
        return x if head is None else normalize(head(x))

    def _fuse(self, out: StudentOutput, teacher: Optional[Embeddings]) -> None:
        if teacher is None:
            raise ValueError("AFD needs the teacher's embeddings: pass teacher= to the student forward")
        out.afd_img = normalize(self.afd_fuse_img(torch.cat([out.img_proj, teacher.img.to(out.img_proj)], dim=1)))
        out.afd_txt = normalize(self.afd_fuse_txt(torch.cat([out.txt_proj, teacher.txt.to(out.txt_proj)], dim=1)))
        out.afd_scale = clamped_scale(self.afd_logit_scale)
