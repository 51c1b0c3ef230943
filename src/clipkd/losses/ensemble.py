"""Teacher ensembles: how every loss term combines T frozen teachers.

Layout (shared with the student and the wiring code):

* the teachers' embeddings are ONE :class:`~clipkd.embeddings.Embeddings`: ``img``/``txt`` are
  ``[N, sum_t D_t]``, the per-teacher L2-normalised embeddings concatenated along dim 1 in teacher order,
  and ``scale`` is ``[T]``, the teachers' multipliers (one teacher: ``[N, D]`` and a 0-d or ``[1]`` scale);
* the student's ``img_proj``/``txt_proj`` and ``afd_img``/``afd_txt`` are concatenated the same way
  (block t has teacher t's size), ``icl_scale`` and ``afd_scale`` are ``[T]``;
* teacher t has weight ``w_t > 0``, ``sum_t w_t = 1``.

With ``S = s * I_s T_s^T`` (the student's own embeddings and scale), ``P_t`` the student's projection to
teacher t's size and ``I_t, T_t, s_t`` teacher t's embeddings and multiplier, the terms are:

* task: unchanged (student only);
* siglip: unchanged (student only);
* sigmoid CRD: ``p = sum_t w_t p_t`` with ``p_t`` teacher t's pairwise match probabilities
  (:func:`~clipkd.losses.functional.sigmoid_teacher_probs`: ``sigmoid(s_t I_t T_t^T + b_t)`` for a sigmoid
  teacher, the mean of its two softmax directions for a softmax one), ``L = BCE(S + b, p)`` with the student's own
  ``S`` and bias ``b`` (a mixture of Bernoulli probabilities is one; a softmax and a sigmoid teacher mix);
* CRD: ``p = sum_t w_t softmax(s_t I_t T_t^T)``, ``p' = sum_t w_t softmax(s_t T_t I_t^T)`` (row-wise);
  ``L = 1/2 [KL(p || softmax(S)) + KL(p' || softmax(S^T))]`` (the mixture of the teachers' distributions
  replaces the single teacher's; computed in log space, ``log p = logsumexp_t(log w_t + log softmax_t)``);
* FD:  ``L = sum_t w_t [mean((P_t(I_s) - I_t)^2) + mean((P_t(T_s) - T_t)^2)]``;
* ICL: ``L = sum_t w_t icl(P_t(I_s), P_t(T_s), I_t, T_t, c_t)``, ``c_t`` teacher t's learned ICL scale;
* GD:  ``L = sum_t w_t gd(P_t(I_s), P_t(T_s), s, I_t, T_t, s_t)``;
* AFD: ``L = sum_t w_t clip_loss(F_t(I), F_t(T), a_t)``, ``F_t = normalise(phi_t([P_t(student); teacher_t]))``.

A one-teacher ensemble computes exactly what the single-teacher formulas of :mod:`.functional` compute.

Per-teacher values (:func:`per_teacher_terms`, logged as ``<term>/t<i>`` beside each term): every term that uses
the teachers, computed with teacher t alone, unweighted: the single-teacher formula on teacher t's block of
each per-teacher field (``P_t``, ``F_t``, ``c_t``, ``a_t``, ``I_t``, ``T_t``, ``s_t``). FD, ICL, GD and AFD are
then ``sum_t w_t * <term>/t<i>``; CRD is not (its target is the mixture of the teachers' distributions, not one
teacher's), and its ``crd/t<i>`` is CRD against teacher t alone. Diagnostics: no gradient flows through them.
"""

from __future__ import annotations

import copy
import math
import operator
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence

import torch

from clipkd.embeddings import NEEDS_TEACHER, Embeddings
from clipkd.losses import functional as LF
from clipkd.losses.functional import Scale, full_precision

__all__ = ["Ensemble", "SINGLE", "teacher_slices", "per_teacher_terms", "crd_loss", "sigmoid_crd_loss", "fd_loss",
           "icl_loss", "gd_loss", "afd_loss"]

WEIGHT_SUM_TOL = 1e-6


@dataclass(frozen=True)
class Ensemble:
    """T teachers' weights and embedding sizes; splits concatenated tensors and combines per-teacher values.

    ``dims`` may be None for one teacher (its size is whatever the tensors have).
    """

    weights: tuple[float, ...] = (1.0,)
    dims: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        _check_weights(self.weights)
        if self.dims is None:
            if len(self.weights) != 1:
                raise ValueError(f"an ensemble of {len(self.weights)} teachers needs their embedding sizes")
        else:
            _check_dims(self.dims)
            if len(self.dims) != len(self.weights):
                raise ValueError(f"{len(self.dims)} teacher dims but {len(self.weights)} teacher weights")

    @classmethod
    def create(cls, dims: Optional[Sequence[int]] = None, weights: Optional[Sequence[float]] = None) -> "Ensemble":
        """From optional sizes and weights; no weights means equal weights ``1/T``."""
        if weights is None:
            t = 1 if dims is None else len(dims)
            weights = [1.0 / t] * t if t > 0 else []
        return cls(tuple(float(w) for w in weights), None if dims is None else _as_dims(dims))

    @property
    def size(self) -> int:
        """The number of teachers T."""
        return len(self.weights)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Teacher-ordered blocks of a concatenated ``[N, sum_t D_t]`` tensor (one teacher: ``(x,)`` itself)."""
        width = x.shape[-1]
        if self.size == 1:
            if self.dims is not None and width != self.dims[0]:
                raise ValueError(f"expected embeddings of size {self.dims[0]}, got {width}")
            return (x,)
        if width != sum(self.dims):
            raise ValueError(f"expected concatenated embeddings of size {sum(self.dims)} = "
                             f"{' + '.join(map(str, self.dims))}, got {width}")
        return tuple(torch.split(x, list(self.dims), dim=-1))

    def scales(self, scale: Scale) -> list[Scale]:
        """Per-teacher multipliers of a ``[T]`` tensor (one teacher: the scale itself, 0-d or ``[1]``)."""
        numel = scale.numel() if isinstance(scale, torch.Tensor) else 1
        if numel != self.size or (self.size > 1 and scale.ndim != 1):
            raise ValueError(f"expected one scale per teacher (shape [{self.size}]), got "
                             f"{tuple(scale.shape) if isinstance(scale, torch.Tensor) else 'a number'}")
        return [scale] if self.size == 1 else list(scale.unbind(0))

    def biases(self, bias: Optional[torch.Tensor]) -> list[Optional[torch.Tensor]]:
        """Per-teacher logit biases of a ``[T]`` tensor (NaN: a teacher without one), or ``[None] * T`` for None."""
        if bias is None:
            return [None] * self.size
        return self.scales(bias)

    def combine(self, values: Sequence[torch.Tensor]) -> torch.Tensor:
        """``sum_t w_t * values[t]`` (one teacher: ``values[0]`` unchanged)."""
        if self.size == 1:
            return values[0]
        return sum(w * v for w, v in zip(self.weights, values))

    def mix_log_probs(self, log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``log sum_t w_t exp(log_probs[t])``: the log of the weighted mixture of row distributions."""
        if self.size == 1:
            return log_probs[0]
        stacked = torch.stack(list(log_probs))
        log_w = torch.tensor(self.weights, dtype=stacked.dtype, device=stacked.device).log()
        return torch.logsumexp(stacked + log_w.view(-1, *([1] * (stacked.ndim - 1))), dim=0)


def _check_weights(weights: tuple[float, ...]) -> None:
    if not weights:
        raise ValueError("an ensemble needs at least one teacher")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(f"teacher weights must be finite and > 0, got {list(weights)}")
    if abs(math.fsum(weights) - 1.0) > WEIGHT_SUM_TOL:
        raise ValueError(f"teacher weights must sum to 1 (within {WEIGHT_SUM_TOL}), got {list(weights)} "
                         f"(sum {math.fsum(weights)})")


def _as_dims(dims: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(operator.index(d) for d in dims)
    except TypeError:
        raise ValueError(f"teacher dims must be positive integers, got {list(dims)}") from None


def _check_dims(dims: tuple[int, ...]) -> None:
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise ValueError(f"teacher dims must be positive integers, got {list(dims)}")


SINGLE = Ensemble()
"""One teacher of any size: every term computes exactly the single-teacher formula."""


STUDENT_BLOCKS = ("img_proj", "txt_proj", "afd_img", "afd_txt")
"""The student's per-teacher ``[N, sum_t D_t]`` fields (the ensemble layout)."""
STUDENT_SCALES = ("icl_scale", "afd_scale")
"""The student's per-teacher ``[T]`` scales."""


def teacher_slices(ens: Ensemble, student: Any, teacher: Embeddings) -> list[tuple[Any, Embeddings]]:
    """Per teacher t: (the student's outputs, the teacher's embeddings) as a run with teacher t alone has them:
    teacher t's block of every per-teacher field and its element of every per-teacher scale; the student's own
    ``img``/``txt``/``scale`` unchanged."""
    parts: dict[str, Sequence[Any]] = {}
    for name in STUDENT_BLOCKS + STUDENT_SCALES:
        value = getattr(student, name, None)
        if value is not None:
            parts[name] = ens.split(value) if name in STUDENT_BLOCKS else ens.scales(value)
    img, txt, scale = ens.split(teacher.img), ens.split(teacher.txt), ens.scales(teacher.scale)
    bias = ens.biases(teacher.bias)
    return [(replace(student, **{k: v[i] for k, v in parts.items()}),
             replace(teacher, img=img[i], txt=txt[i], scale=scale[i], bias=bias[i]))
            for i in range(ens.size)]


def per_teacher_terms(ens: Ensemble, terms: Mapping[str, Any], student: Any, teacher: Optional[Embeddings]
                      ) -> dict[str, torch.Tensor]:
    """``{"<term>/t<i>": value}``: each term of ``terms`` that uses the teachers (``NEEDS_TEACHER`` in ``needs``),
    computed with teacher i alone (a copy of the term set to one teacher, on :func:`teacher_slices`); detached,
    without a graph. Empty for one teacher (the term itself is that teacher's) or without teacher embeddings."""
    users = {name: term for name, term in terms.items() if NEEDS_TEACHER in term.needs}
    if ens.size == 1 or teacher is None or not users:
        return {}
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for i, (s, t) in enumerate(teacher_slices(ens, student, teacher)):
            for name, term in users.items():
                alone = copy.copy(term)  # the same term (and any state it holds), combining one teacher
                alone.ensemble = SINGLE
                out[f"{name}/t{i}"] = alone(s, t).detach()
    return out


def _blocks(ens: Ensemble, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """Per teacher t, the t-th block of each tensor."""
    return list(zip(*(ens.split(x) for x in tensors)))


@full_precision
def crd_loss(
    ens: Ensemble,
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: Scale,
) -> torch.Tensor:
    """CRD against the weighted mixture of the teachers' similarity distributions (see module docstring)."""
    s_img, s_txt, t_img, t_txt = LF._prep(s_img, s_txt, *LF._teacher(t_img, t_txt))  # one dtype for all
    per_teacher = [LF.crd_teacher_log_probs(ti, tt, sc)
                   for (ti, tt), sc in zip(_blocks(ens, t_img, t_txt), ens.scales(t_scale))]
    log_p_i2t = ens.mix_log_probs([p[0] for p in per_teacher])
    log_p_t2i = ens.mix_log_probs([p[1] for p in per_teacher])
    return LF.crd_loss_from_log_probs(s_img, s_txt, s_scale, log_p_i2t, log_p_t2i)


@full_precision
def sigmoid_crd_loss(
    ens: Ensemble,
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    s_bias: Scale,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: Scale,
    t_bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """Sigmoid CRD against the weighted mixture of the teachers' pairwise match probabilities (module docstring)."""
    s_img, s_txt, t_img, t_txt = LF._prep(s_img, s_txt, *LF._teacher(t_img, t_txt))  # one dtype for all
    blocks = _blocks(ens, t_img, t_txt)
    p = ens.combine([LF.sigmoid_teacher_probs(ti, tt, sc, b)
                     for (ti, tt), sc, b in zip(blocks, ens.scales(t_scale), ens.biases(t_bias))])
    return LF.sigmoid_crd_loss_from_probs(s_img, s_txt, s_scale, s_bias, p)


@full_precision
def fd_loss(
    ens: Ensemble, s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor
) -> torch.Tensor:
    """``sum_t w_t fd(P_t(I_s), P_t(T_s), I_t, T_t)``."""
    return ens.combine([LF.fd_loss(*b) for b in _blocks(ens, s_img, s_txt, t_img, t_txt)])


@full_precision
def icl_loss(
    ens: Ensemble,
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    scale: Scale,
) -> torch.Tensor:
    """``sum_t w_t icl(P_t(I_s), P_t(T_s), I_t, T_t, c_t)`` with ``scale = [c_1 .. c_T]``."""
    blocks = _blocks(ens, s_img, s_txt, t_img, t_txt)
    return ens.combine([LF.icl_loss(*b, c) for b, c in zip(blocks, ens.scales(scale))])


@full_precision
def gd_loss(
    ens: Ensemble,
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: Scale,
) -> torch.Tensor:
    """``sum_t w_t gd(P_t(I_s), P_t(T_s), s, I_t, T_t, s_t)``: the student's own scale against each teacher's."""
    blocks = _blocks(ens, s_img, s_txt, t_img, t_txt)
    return ens.combine([LF.gd_loss(si, st, s_scale, ti, tt, sc)
                        for (si, st, ti, tt), sc in zip(blocks, ens.scales(t_scale))])


@full_precision
def afd_loss(ens: Ensemble, fused_img: torch.Tensor, fused_txt: torch.Tensor, scale: Scale) -> torch.Tensor:
    """``sum_t w_t clip_loss(F_t(I), F_t(T), a_t)`` on each teacher's fused block, ``scale = [a_1 .. a_T]``."""
    blocks = _blocks(ens, fused_img, fused_txt)
    return ens.combine([LF.afd_loss(*b, a) for b, a in zip(blocks, ens.scales(scale))])
