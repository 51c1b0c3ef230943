"""Student-vs-teacher representation diagnostics: cosine, linear CKA, similarity-matrix KL.

All functions are pure, take ``[N, D]`` tensors whose row ``i`` describes the same sample for
both models, run without gradient on the inputs' device and return Python floats.
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mean_cosine", "linear_cka", "similarity_kl", "distillation_diagnostics"]

Scale = Union[float, Tensor]


def _float_dtype(*xs: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def _check_rows(name: str, a: Tensor, b: Tensor) -> None:
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"{name}: inputs must be 2-D, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0] or a.shape[0] == 0:
        raise ValueError(f"{name}: need the same non-zero number of rows, got {a.shape[0]} and {b.shape[0]}")


@torch.no_grad()
def mean_cosine(a: Tensor, b: Tensor) -> float:
    """Mean over rows of ``cos(a_i, b_i)``; rows are L2-normalised here. Needs equal widths."""
    _check_rows("mean_cosine", a, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"mean_cosine: widths differ ({a.shape[1]} vs {b.shape[1]})")
    dtype = _float_dtype(a, b)
    a = F.normalize(a.detach().to(dtype), dim=1)
    b = F.normalize(b.detach().to(device=a.device, dtype=dtype), dim=1)
    return (a * b).sum(dim=1).mean().item()


@torch.no_grad()
def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) between ``x [N, D1]`` and ``y [N, D2]``, in float64.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``. Invariant
    to orthogonal transforms and isotropic scaling; NaN when either input is constant over rows.
    """
    _check_rows("linear_cka", x, y)
    x = x.detach().to(torch.float64)
    y = y.detach().to(device=x.device, dtype=torch.float64)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm_x = torch.linalg.matrix_norm(x.T @ x)
    norm_y = torch.linalg.matrix_norm(y.T @ y)
    denom = (norm_x * norm_y).item()
    return (cross.item() / denom) if denom > 0 else float("nan")


def _as_float(scale: Scale) -> float:
    return float(scale.detach().item()) if isinstance(scale, Tensor) else float(scale)


@torch.no_grad()
def similarity_kl(
    s_img: Tensor, s_txt: Tensor, s_scale: Scale,
    t_img: Tensor, t_txt: Tensor, t_scale: Scale,
    chunk: int = 1024,
) -> float:
    """Mean over image rows of ``KL(softmax(t_scale t_img t_txt^T) || softmax(s_scale s_img s_txt^T))``.

    Image -> text distributions with the teacher as the target; embeddings are used as given
    (pass L2-normalised ones). Rows are processed ``chunk`` at a time, so only ``[chunk, M]``
    logits exist; float64 inputs stay float64, anything else is computed in float32.
    """
    _check_rows("similarity_kl (images)", s_img, t_img)
    _check_rows("similarity_kl (texts)", s_txt, t_txt)
    if s_img.shape[1] != s_txt.shape[1] or t_img.shape[1] != t_txt.shape[1]:
        raise ValueError("similarity_kl: image and text widths must match within each model")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    dtype = _float_dtype(s_img, s_txt, t_img, t_txt)
    device = s_img.device
    s_txt = s_txt.detach().to(device=device, dtype=dtype)
    t_txt = t_txt.detach().to(device=device, dtype=dtype)
    s_scale, t_scale = _as_float(s_scale), _as_float(t_scale)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, s_img.shape[0], int(chunk)):
        s_rows = s_img[start:start + chunk].detach().to(device=device, dtype=dtype)
        t_rows = t_img[start:start + chunk].detach().to(device=device, dtype=dtype)
        log_q = F.log_softmax(s_scale * (s_rows @ s_txt.T), dim=1)
        log_p = F.log_softmax(t_scale * (t_rows @ t_txt.T), dim=1)
        total += F.kl_div(log_q, log_p, reduction="sum", log_target=True).to(torch.float64)
    return (total / s_img.shape[0]).item()


@torch.no_grad()
def distillation_diagnostics(
    s_img: Tensor, s_txt: Tensor, s_scale: Scale,
    s_img_proj: Tensor, s_txt_proj: Tensor,
    t_img: Tensor, t_txt: Tensor, t_scale: Scale,
) -> dict[str, float]:
    """How close the student is to the teacher on one set of paired samples.

    ``image_cosine``/``text_cosine`` compare the student's embeddings projected to the teacher's
    width with the teacher's; ``image_cka``/``text_cka`` compare the student's own embeddings;
    ``similarity_kl`` compares the image -> text similarity distributions (own embeddings and
    scales).
    """
    return {
        "image_cosine": mean_cosine(s_img_proj, t_img),
        "text_cosine": mean_cosine(s_txt_proj, t_txt),
        "image_cka": linear_cka(s_img, t_img),
        "text_cka": linear_cka(s_txt, t_txt),
        "similarity_kl": similarity_kl(s_img, s_txt, s_scale, t_img, t_txt, t_scale),
    }
