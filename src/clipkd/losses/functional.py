"""Pure tensor formulas of the CLIP-KD objectives (Yang et al., CVPR 2024).

Conventions shared by every function here:

* embeddings are L2-normalised, shape ``[N, D]``; row ``i`` of the image batch and row ``i``
  of the text batch form a positive pair, so the targets are ``y = arange(N)``;
* ``scale`` arguments are multipliers (``exp`` of a logit scale), a float or a 0-d tensor;
* ``CE`` is cross-entropy averaged over rows and every softmax is row-wise;
* teacher arguments never receive gradient: they are detached here;
* every formula runs with autocast off (also inside a ``torch.autocast`` region, as in the trainer) and
  low-precision inputs (bfloat16, float16) are computed in float32, float64 stays float64, so the N x N
  products and softmaxes keep their accuracy; the result has the computation dtype.

Each formula is written once; the term modules in :mod:`clipkd.losses.terms` only pick inputs.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional, TypeVar, Union

import torch
import torch.nn.functional as F

Scale = Union[float, torch.Tensor]
F_ = TypeVar("F_", bound=Callable[..., object])

__all__ = [
    "clip_loss", "crd_loss", "crd_teacher_log_probs", "crd_loss_from_log_probs", "fd_loss", "icl_loss", "gd_loss",
    "afd_loss", "contrastive_grads", "siglip_loss", "sigmoid_crd_loss", "sigmoid_crd_loss_from_probs",
    "sigmoid_teacher_probs", "own_loss",
]


def _autocast_off(devices: set[str]) -> contextlib.ExitStack:
    """A context that disables autocast on each of ``devices`` (device types without autocast are skipped)."""
    stack = contextlib.ExitStack()
    for device in sorted(devices):
        if torch.amp.is_autocast_available(device):
            stack.enter_context(torch.autocast(device, enabled=False))
    return stack


def full_precision(fn: F_) -> F_:
    """Decorator: run ``fn`` with autocast off on the devices of its tensor arguments.

    Inside ``torch.autocast`` a matmul would run in bfloat16/float16 even on float32 operands; with autocast
    off the explicit casts of :func:`_prep` decide the dtype (float32, or float64 for float64 inputs).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        devices = {a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)}
        with _autocast_off(devices):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


def _prep(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dtype = _compute_dtype(*tensors)
    return [t.to(dtype) for t in tensors]


def _teacher(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach() for t in tensors]


def _as_scale(scale: Scale, like: torch.Tensor) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        return scale.to(device=like.device, dtype=like.dtype).reshape(())
    return torch.tensor(float(scale), device=like.device, dtype=like.dtype)


def _targets(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def _two_way_ce(logits: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    y = _targets(logits.shape[0], logits.device)
    return 0.5 * (F.cross_entropy(logits, y) + F.cross_entropy(logits_t, y))


@full_precision
def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Symmetric InfoNCE, the task loss.

    ``L = 1/2 [ CE(s * img @ txt^T, y) + CE(s * txt @ img^T, y) ]``
    """
    img, txt = _prep(img, txt)
    s = _as_scale(scale, img)
    logits = s * img @ txt.T
    return _two_way_ce(logits, logits.T)


def _sigmoid_logits(img: torch.Tensor, txt: torch.Tensor, scale: Scale, bias: Scale) -> torch.Tensor:
    """``s * img @ txt^T + b``: every image-text pair's logit of a sigmoid model."""
    return _as_scale(scale, img) * img @ txt.T + _as_scale(bias, img)


@full_precision
def siglip_loss(img: torch.Tensor, txt: torch.Tensor, scale: Scale, bias: Scale) -> torch.Tensor:
    """Sigmoid task loss (SigLIP, Zhai et al. 2023): every image-text pair a binary decision.

    ``l_ij = s * <img_i, txt_j> + b``, ``z_ij = +1 if i = j else -1``;
    ``L = -1/N sum_{i,j} log sigmoid(z_ij * l_ij)`` over the N x N pairs of the (global) batch.
    """
    img, txt = _prep(img, txt)
    logits = _sigmoid_logits(img, txt, scale, bias)
    signs = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(signs * logits).sum() / logits.shape[0]


def own_loss(img: torch.Tensor, txt: torch.Tensor, scale: Scale, bias: Optional[Scale] = None) -> torch.Tensor:
    """A model's own training loss: :func:`siglip_loss` for a sigmoid model (a logit ``bias``), else
    :func:`clip_loss`."""
    return clip_loss(img, txt, scale) if bias is None else siglip_loss(img, txt, scale, bias)


@full_precision
def sigmoid_teacher_probs(
    t_img: torch.Tensor, t_txt: torch.Tensor, t_scale: Scale, t_bias: Optional[Scale]
) -> torch.Tensor:
    """A teacher's probability that each image-text pair of the batch matches, ``[N, N]``; no gradient.

    ``T = s_t * t_img @ t_txt^T``. A sigmoid teacher (logit bias ``b_t``): ``p_ij = sigmoid(T_ij + b_t)``, its own
    pairwise decision. A softmax teacher (no bias: None, or NaN in an ensemble's bias vector):
    ``p_ij = 1/2 [softmax(T)_ij + softmax(T^T)_ji]``, the mean of its image->text and text->image probabilities that
    ``j`` is ``i``'s match (a softmax model has no pairwise bias: its logits are fixed only up to a row constant).
    """
    t_img, t_txt = _prep(*_teacher(t_img, t_txt))
    logits = _as_scale(_detached(t_scale), t_img) * t_img @ t_txt.T
    if t_bias is None:
        return _softmax_pair_probs(logits)
    b = _as_scale(_detached(t_bias), t_img)
    return torch.where(torch.isnan(b), _softmax_pair_probs(logits), torch.sigmoid(logits + b))


def _softmax_pair_probs(logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.softmax(logits, dim=1) + torch.softmax(logits, dim=0))


def _detached(value: Scale) -> Scale:
    return value.detach() if isinstance(value, torch.Tensor) else value


@full_precision
def sigmoid_crd_loss_from_probs(
    s_img: torch.Tensor, s_txt: torch.Tensor, s_scale: Scale, s_bias: Scale, p: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of the student's pairwise match probabilities to given targets ``p`` ``[N, N]``.

    ``S = s_s * s_img @ s_txt^T + b_s``; ``L = -1/N sum_{i,j} [p_ij log sigmoid(S_ij) + (1 - p_ij) log
    sigmoid(-S_ij)]``. :func:`sigmoid_crd_loss` passes one teacher's probabilities, an ensemble their mixture.
    """
    s_img, s_txt, p = _prep(s_img, s_txt, p.detach())
    logits = _sigmoid_logits(s_img, s_txt, s_scale, s_bias)
    return F.binary_cross_entropy_with_logits(logits, p, reduction="sum") / logits.shape[0]


@full_precision
def sigmoid_crd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    s_bias: Scale,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: Scale,
    t_bias: Optional[Scale],
) -> torch.Tensor:
    """Relational distillation for sigmoid models: each pair's probability of matching, the student's against
    the teacher's (binary cross-entropy; the sigmoid counterpart of CRD, as MobileCLIP's ``DistillSigLipLoss``).

    ``S_ij = s_s * <s_img_i, s_txt_j> + b_s``, ``p_ij`` the teacher's match probability
    (:func:`sigmoid_teacher_probs`: ``sigmoid(s_t * <t_img_i, t_txt_j> + b_t)`` for a sigmoid teacher, the mean of
    its two softmax directions for a softmax teacher, ``t_bias`` None);
    ``L = -1/N sum_{i,j} [ p_ij log sigmoid(S_ij) + (1 - p_ij) log sigmoid(-S_ij) ]``.
    It is symmetric in images and texts (one matrix), has its minimum where ``sigmoid(S) = p`` and its gradient
    with respect to ``S_ij`` is ``(sigmoid(S_ij) - p_ij) / N``. No gradient reaches the teacher.
    """
    s_img, s_txt, t_img, t_txt = _prep(s_img, s_txt, *_teacher(t_img, t_txt))  # one dtype for both sides
    p = sigmoid_teacher_probs(t_img, t_txt, t_scale, t_bias)
    return sigmoid_crd_loss_from_probs(s_img, s_txt, s_scale, s_bias, p)


def _kl_rows(log_p: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(p || softmax(logits)) for a target given by its log-probabilities ``log_p``, summed over columns,
    averaged over rows."""
    log_q = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


@full_precision
def crd_teacher_log_probs(t_img: torch.Tensor, t_txt: torch.Tensor, t_scale: Scale) -> tuple[torch.Tensor, ...]:
    """The teacher's CRD targets as log-probabilities: ``(log softmax(T), log softmax(T^T))``, ``T = s_t *
    t_img @ t_txt^T`` (image->text rows, then text->image rows). No gradient reaches the teacher."""
    t_img, t_txt = _prep(*_teacher(t_img, t_txt))
    if isinstance(t_scale, torch.Tensor):
        t_scale = t_scale.detach()
    t_logits = _as_scale(t_scale, t_img) * t_img @ t_txt.T
    return F.log_softmax(t_logits, dim=1), F.log_softmax(t_logits.T, dim=1)


@full_precision
def crd_loss_from_log_probs(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    log_p_i2t: torch.Tensor,
    log_p_t2i: torch.Tensor,
) -> torch.Tensor:
    """CRD against given target distributions (log-probabilities, rows sum to 1 after ``exp``).

    ``S = s_s * s_img @ s_txt^T``; ``L = 1/2 [ KL(p_i2t || softmax(S)) + KL(p_t2i || softmax(S^T)) ]``.
    :func:`crd_loss` passes one teacher's distributions; an ensemble passes their weighted mixture.
    """
    log_p_i2t, log_p_t2i = _teacher(log_p_i2t, log_p_t2i)
    s_img, s_txt, log_p_i2t, log_p_t2i = _prep(s_img, s_txt, log_p_i2t, log_p_t2i)
    s_logits = _as_scale(s_scale, s_img) * s_img @ s_txt.T
    return 0.5 * (_kl_rows(log_p_i2t, s_logits) + _kl_rows(log_p_t2i, s_logits.T))


@full_precision
def crd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: Scale,
) -> torch.Tensor:
    """Contrastive relational distillation: match the teacher's image-text similarity distributions.

    ``S = s_s * s_img @ s_txt^T``, ``T = s_t * t_img @ t_txt^T``;
    ``L = 1/2 [ KL(softmax(T) || softmax(S)) + KL(softmax(T^T) || softmax(S^T)) ]``
    with KL summed over columns and averaged over rows.
    """
    s_img, s_txt, t_img, t_txt = _prep(s_img, s_txt, *_teacher(t_img, t_txt))  # one dtype for both sides
    return crd_loss_from_log_probs(s_img, s_txt, s_scale, *crd_teacher_log_probs(t_img, t_txt, t_scale))


@full_precision
def fd_loss(s_img: torch.Tensor, s_txt: torch.Tensor, t_img: torch.Tensor, t_txt: torch.Tensor) -> torch.Tensor:
    """Feature distillation: mean squared error to the teacher's embeddings.

    ``L = mean((s_img - t_img)^2) + mean((s_txt - t_txt)^2)``, means over all N*D elements.
    """
    t_img, t_txt = _teacher(t_img, t_txt)
    s_img, s_txt, t_img, t_txt = _prep(s_img, s_txt, t_img, t_txt)
    return F.mse_loss(s_img, t_img) + F.mse_loss(s_txt, t_txt)


@full_precision
def icl_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    scale: Scale,
) -> torch.Tensor:
    """Interactive contrastive learning: student anchors against the teacher's other modality.

    ``L = 1/2 [ CE(c * s_img @ t_txt^T, y) + CE(c * s_txt @ t_img^T, y) ]``
    """
    t_img, t_txt = _teacher(t_img, t_txt)
    s_img, s_txt, t_img, t_txt = _prep(s_img, s_txt, t_img, t_txt)
    c = _as_scale(scale, s_img)
    return _two_way_ce(c * s_img @ t_txt.T, c * s_txt @ t_img.T)


@full_precision
def contrastive_grads(img: torch.Tensor, txt: torch.Tensor, scale: Scale) -> tuple[torch.Tensor, ...]:
    """Closed-form gradients of the two halves of the contrastive loss w.r.t. the embeddings.

    With ``V = img``, ``T = txt``, ``P = softmax(s V T^T)``, ``Q = softmax(s T V^T)``:
    ``G1 = s/N (P - I) T`` (dL_i2t/dV), ``G2 = s/N (P - I)^T V`` (dL_i2t/dT),
    ``G3 = s/N (Q - I) V`` (dL_t2i/dT), ``G4 = s/N (Q - I)^T T`` (dL_t2i/dV).
    Computed as ``s/N (P T - T)`` etc.: the only N x N tensors are the logits, P and Q (O(N^2 + N*D) memory).
    """
    img, txt = _prep(img, txt)
    scale = _as_scale(scale, img)
    c = scale / img.shape[0]
    logits = scale * img @ txt.T
    p = torch.softmax(logits, dim=1)
    q = torch.softmax(logits.T, dim=1)
    return (c * (p @ txt - txt), c * (p.T @ img - img), c * (q @ img - img), c * (q.T @ txt - txt))


@full_precision
def gd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: Scale,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: Scale,
) -> torch.Tensor:
    """Gradient distillation: match the teacher's contrastive gradients w.r.t. its embeddings.

    ``L = sum_k mean((G_k(student) - G_k(teacher))^2)`` for the four closed-form gradients
    ``G_k`` of :func:`contrastive_grads`, each computed with that model's own scale.
    Differentiable for the student; never builds an N x D x N tensor.
    """
    t_img, t_txt = _teacher(t_img, t_txt)
    s_img, s_txt, t_img, t_txt = _prep(s_img, s_txt, t_img, t_txt)
    if isinstance(t_scale, torch.Tensor):
        t_scale = t_scale.detach()
    g_s = contrastive_grads(s_img, s_txt, _as_scale(s_scale, s_img))
    with torch.no_grad():
        g_t = contrastive_grads(t_img, t_txt, _as_scale(t_scale, t_img))
    return sum(F.mse_loss(a, b) for a, b in zip(g_s, g_t))


@full_precision
def afd_loss(fused_img: torch.Tensor, fused_txt: torch.Tensor, scale: Scale) -> torch.Tensor:
    """Augmented feature distillation: the task loss on teacher-augmented (fused) embeddings.

    ``fused = normalise(phi([proj(student); teacher]))`` is built by the student's fusion heads;
    ``L = clip_loss(fused_img, fused_txt, c)``.
    """
    return clip_loss(fused_img, fused_txt, scale)
