"""The trainable side: ONE module holding the student encoder and every distillation head.

Everything that trains lives here (encoder, image/text projection heads, ICL and AFD scales, AFD fusion
heads), so the optimizer, DDP and checkpoints see a single module. The official code created the heads
outside the model, per rank, and never saved them; see docs/deviations.md.
"""

from __future__ import annotations

from typing import AbstractSet, Optional, Sequence, Union

import torch
from torch import nn

from clipkd.embeddings import (
    NEEDS_AFD,
    NEEDS_BIAS,
    NEEDS_ICL_SCALE,
    NEEDS_PROJECTION,
    REQUIREMENTS,
    Embeddings,
    StudentOutput,
    TextBatch,
)
from clipkd.models.encoders import INIT_LOGIT_SCALE, ClipEncoder, clamped_scale, normalize


def _log_scale(shape: tuple[int, ...] = ()) -> nn.Parameter:
    return nn.Parameter(torch.full(shape, INIT_LOGIT_SCALE) if shape else torch.tensor(INIT_LOGIT_SCALE))


def _as_dims(teacher_dim: Union[int, Sequence[int]]) -> tuple[int, ...]:
    """``(d,)`` for one size, a tuple for a sequence of sizes; each must be a positive integer."""
    dims = tuple(int(d) for d in teacher_dim) if isinstance(teacher_dim, Sequence) else (int(teacher_dim),)
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"teacher_dim must be a positive integer or a non-empty sequence of them, got {teacher_dim}")
    return dims


def _linear_pair(d_in: int, d_out: int, wanted: bool) -> tuple[Optional[nn.Linear], Optional[nn.Linear]]:
    """An (image, text) pair of ``Linear(d_in, d_out)`` heads, created in that order, or ``(None, None)``."""
    if not wanted:
        return None, None
    return nn.Linear(d_in, d_out), nn.Linear(d_in, d_out)


def _module_list(heads: list[Optional[nn.Module]]) -> Optional[nn.ModuleList]:
    """Per-teacher heads, ``nn.Identity`` where a teacher needs none; None when no teacher needs one."""
    if all(h is None for h in heads):
        return None
    return nn.ModuleList([nn.Identity() if h is None else h for h in heads])


class DistillStudent(nn.Module):
    """Student encoder plus the heads the active loss terms need.

    Args:
        encoder: the student :class:`ClipEncoder` (trainable). Its ``trim_text`` switch, where it has one, is
            turned on: in training mode a causal text tower runs only up to its pooled token
            (:mod:`clipkd.models.causal_text`); in eval mode it runs open_clip's whole forward.
        teacher_dim: the teacher's embedding size ``d_t``, or the sizes of an ensemble's teachers in teacher
            order (a sequence of one size is the same as that size).
        needs: union of the active terms' requirements (see ``REQUIREMENTS``); heads nothing needs are not
            created, so DDP never sees unused parameters.

    One teacher: ``proj_img``/``proj_txt`` (``Linear(d_s, d_t)``, only when ``d_s != d_t``),
    ``icl_logit_scale``, ``afd_fuse_img``/``afd_fuse_txt`` (``Linear(2 d_t, d_t)``), ``afd_logit_scale`` (0-d).
    T > 1 teachers: those are None and the heads are per teacher: ``ensemble_proj_img``/``ensemble_proj_txt``
    and ``ensemble_afd_fuse_img``/``ensemble_afd_fuse_txt`` (``nn.ModuleList``, item t for teacher t,
    ``nn.Identity`` for a teacher of the student's size), ``ensemble_icl_logit_scale`` and
    ``ensemble_afd_logit_scale`` (``[T]`` parameters). Creation order: projection heads (image, text per
    teacher), ICL scale, fusion heads (image, text per teacher), AFD scale.
    """

    def __init__(
        self, encoder: ClipEncoder, teacher_dim: Union[int, Sequence[int]], needs: AbstractSet[str] = frozenset()
    ):
        super().__init__()
        unknown = set(needs) - REQUIREMENTS
        if unknown:
            raise ValueError(f"unknown student requirements: {sorted(unknown)}")
        if NEEDS_BIAS in needs and encoder.bias() is None:
            raise ValueError(f"the sigmoid loss terms (siglip, sigmoid_crd) need a sigmoid student, one with a logit "
                             f"bias; {getattr(encoder, 'name', type(encoder).__name__)} has none (an open_clip model "
                             "config gets one with \"init_logit_bias\", as clipkd-tiny-siglip and the SigLIP models)")
        self.encoder = encoder
        if hasattr(encoder, "trim_text"):  # causal text towers run up to their pooled token while training only
            encoder.trim_text = True
        self._teacher_dims = _as_dims(teacher_dim)
        self.teacher_dim = self._teacher_dims[0]
        self.needs = frozenset(needs)
        d_s, dims = encoder.embed_dim, self._teacher_dims
        project = bool(self.needs & {NEEDS_PROJECTION, NEEDS_AFD})
        proj = [_linear_pair(d_s, d_t, project and d_s != d_t) for d_t in dims]
        icl = _log_scale(self._scale_shape) if NEEDS_ICL_SCALE in self.needs else None
        fuse = [_linear_pair(2 * d_t, d_t, NEEDS_AFD in self.needs) for d_t in dims]
        afd = _log_scale(self._scale_shape) if NEEDS_AFD in self.needs else None
        single = len(dims) == 1
        self.proj_img, self.proj_txt = proj[0] if single else (None, None)
        self.icl_logit_scale = icl if single else None
        self.afd_fuse_img, self.afd_fuse_txt = fuse[0] if single else (None, None)
        self.afd_logit_scale = afd if single else None
        self.ensemble_proj_img = None if single else _module_list([p[0] for p in proj])
        self.ensemble_proj_txt = None if single else _module_list([p[1] for p in proj])
        self.ensemble_icl_logit_scale = None if single else icl
        self.ensemble_afd_fuse_img = None if single else _module_list([f[0] for f in fuse])
        self.ensemble_afd_fuse_txt = None if single else _module_list([f[1] for f in fuse])
        self.ensemble_afd_logit_scale = None if single else afd

    @property
    def teacher_dims(self) -> tuple[int, ...]:
        """The embedding size of each teacher, in teacher order (one element for a single teacher)."""
        return self._teacher_dims

    @property
    def _scale_shape(self) -> tuple[int, ...]:
        return () if len(self._teacher_dims) == 1 else (len(self._teacher_dims),)

    def forward(
        self,
        images: torch.Tensor,
        text: TextBatch,
        teacher: Optional[Embeddings] = None,
        mask_ratio: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> StudentOutput:
        """Embed a batch. With ``mask_ratio > 0`` the image tower sees masked images (MFD).

        ``teacher`` is required when AFD is active: its embeddings enter the fusion heads (an ensemble's
        concatenated ``[N, sum_t D_t]`` embeddings, split here per teacher).
        """
        enc = self.encoder
        img = enc.encode_image_masked(images, mask_ratio, generator) if mask_ratio > 0 else enc.encode_image(images)
        out = StudentOutput(img=img, txt=enc.encode_text(text), scale=enc.scale(), bias=enc.bias())
        img_parts = [self._project(out.img, h) for h in self._per_teacher("proj_img")]
        txt_parts = [self._project(out.txt, h) for h in self._per_teacher("proj_txt")]
        if len(img_parts) == 1 or self.needs & {NEEDS_PROJECTION, NEEDS_AFD}:
            out.img_proj, out.txt_proj = _join(img_parts), _join(txt_parts)
        icl_logit_scale = self._per_teacher_scale("icl_logit_scale")
        if icl_logit_scale is not None:
            out.icl_scale = clamped_scale(icl_logit_scale)
        afd_logit_scale = self._per_teacher_scale("afd_logit_scale")
        if afd_logit_scale is not None:
            out.afd_img, out.afd_txt = self._fuse(img_parts, txt_parts, teacher)
            out.afd_scale = clamped_scale(afd_logit_scale)
        return out

    def _per_teacher(self, name: str) -> list[Optional[nn.Module]]:
        """Head ``name`` of each teacher (None: identity), from the single-teacher or the ensemble attribute."""
        if len(self._teacher_dims) == 1:
            return [getattr(self, name)]
        heads = getattr(self, "ensemble_" + name)
        if heads is None:
            return [None] * len(self._teacher_dims)
        return [None if isinstance(h, nn.Identity) else h for h in heads]

    def _per_teacher_scale(self, name: str) -> Optional[nn.Parameter]:
        return getattr(self, name if len(self._teacher_dims) == 1 else "ensemble_" + name)

    @staticmethod
    def _project(x: torch.Tensor, head: Optional[nn.Module]) -> torch.Tensor:
        return x if head is None else normalize(head(x))

    def _split_teacher(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(self._teacher_dims) == 1:
            return (x,)
        if x.shape[-1] != sum(self._teacher_dims):
            raise ValueError(f"teacher embeddings of size {x.shape[-1]} do not match the teachers' sizes "
                             f"{list(self._teacher_dims)} (expected their concatenation, {sum(self._teacher_dims)})")
        return tuple(torch.split(x, list(self._teacher_dims), dim=-1))

    def _fuse(
        self, img_parts: list[torch.Tensor], txt_parts: list[torch.Tensor], teacher: Optional[Embeddings]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per teacher t: ``normalise(fuse_t([proj_t; teacher_t]))``, joined in teacher order."""
        if teacher is None:
            raise ValueError("AFD needs the teacher's embeddings: pass teacher= to the student forward")
        fused = []
        for side, parts, t_emb in (("img", img_parts, teacher.img), ("txt", txt_parts, teacher.txt)):
            heads = self._per_teacher(f"afd_fuse_{side}")
            fused.append(_join([normalize(head(torch.cat([p, t.to(p)], dim=1)))
                                for head, p, t in zip(heads, parts, self._split_teacher(t_emb))]))
        return fused[0], fused[1]


def _join(parts: list[torch.Tensor]) -> torch.Tensor:
    """One teacher's tensor itself, or the teachers' blocks concatenated along dim 1."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
