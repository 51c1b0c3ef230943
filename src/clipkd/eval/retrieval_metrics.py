"""Image-text retrieval recall@K, computed in chunks of queries.

Conventions:

* embeddings are L2-normalised, so the similarity is the dot product;
* ``text_to_image[t]`` is the index of caption ``t``'s image; an image may have several captions
  and every image must have at least one;
* a query's rank is the number of *wrong* candidates scoring at least as high as its best correct candidate
  *up to rounding* (see below), so ties count against the query (pessimistic ranking); the query succeeds at K
  when ``rank < K``. A collapsed tower (every caption, or every image, the same embedding) therefore
  scores chance level, R@K = 1 only when fewer than K wrong candidates exist, and an identical caption
  of another image is not a hit;
* **ties up to rounding** (:func:`tie_tolerance`): scores are computed in float64 whatever the inputs' dtype, and
  a wrong candidate ties with the right one when ``s_wrong >= s_right - tol``, where
  ``tol = (TIE_ULPS * u_in + D * u_64) * |q| * max_c |c|``: ``u_in`` is the unit roundoff of the inputs' dtype
  (float32: 2^-24; bfloat16: 2^-8), ``u_64 = 2^-53``, ``D`` the embedding width, ``|q|`` the query's norm and
  ``max_c |c|`` the largest candidate norm. The first term covers inputs that differ by up to ``TIE_ULPS / 4``
  units in the last place per element on each side (so two embeddings that are equal up to their own dtype's
  rounding tie); the second is a worst-case bound on float64's own summation error over ``D`` products. Ties
  then do not depend on the BLAS kernel that scores them (AVX2 or AVX-512): exact copies of a row score apart by
  1e-16 in float64 and 1e-8 in float32 on some kernels, far inside ``tol`` (float32 unit vectors: 4.8e-7). The
  tolerance does not cover an encoder's own compute noise (one input embedded at two batch positions, in TF32 or
  bf16, can differ by more): :func:`clipkd.eval.retrieval.embed_captions` embeds each distinct caption once;
* only a ``[chunk, max(I, T)]`` block of scores exists at any time, so 5k images x 25k captions
  fit easily; the block is float64 on the inputs' device.

The keys match what clip_benchmark writes: ``image_retrieval_recall@K`` is text -> image,
``text_retrieval_recall@K`` is image -> text.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["retrieval_recall", "first_caption_only", "tie_tolerance", "TIE_ULPS"]

TIE_ULPS = 8
"""Units of the inputs' rounding within which two scores are one: 2 ulps per element on each side."""


def tie_tolerance(dtype: torch.dtype, dim: int) -> float:
    """The score difference, per unit of ``|q| * max_c |c|``, within which two float64 scores of ``dtype``
    embeddings of width ``dim`` count as equal: ``TIE_ULPS * u(dtype) + dim * u(float64)``."""
    return TIE_ULPS * torch.finfo(dtype).eps / 2 + dim * torch.finfo(torch.float64).eps / 2


def _check_ks(ks: Sequence[int]) -> list[int]:
    """Validate ``ks`` (positive ints) and drop duplicates, keeping their order."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or int(k) != k or k < 1:
            raise ValueError(f"every K must be a positive integer, got {k!r}")
        if int(k) not in out:
            out.append(int(k))
    if not out:
        raise ValueError("ks must not be empty")
    return out


def _check_inputs(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, chunk: int) -> None:
    if image_emb.ndim != 2 or text_emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D, got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"embedding widths differ: images {image_emb.shape[1]}, texts {text_emb.shape[1]}")
    n_img, n_txt = image_emb.shape[0], text_emb.shape[0]
    if n_img == 0 or n_txt == 0:
        raise ValueError("need at least one image and one caption")
    if text_to_image.shape != (n_txt,) or text_to_image.dtype.is_floating_point:
        raise ValueError(f"text_to_image must be an integer tensor of shape ({n_txt},), "
                         f"got {text_to_image.dtype} {tuple(text_to_image.shape)}")
    if int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n_img:
        raise ValueError(f"text_to_image values must lie in [0, {n_img})")
    if torch.bincount(text_to_image.long(), minlength=n_img).eq(0).any():
        raise ValueError("every image needs at least one caption")
    if not (torch.isfinite(image_emb).all() and torch.isfinite(text_emb).all()):
        raise ValueError("embeddings contain NaN or Inf")
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")


def _ranks(queries: Tensor, candidates: Tensor, own_mask, tol: float, chunk: int) -> Tensor:
    """Per query, the wrong candidates scoring within ``tol * |q| * max|c|`` of (or above) its best own one.

    ``own_mask(start, stop, n)`` is the ``[stop - start, n]`` boolean mask of each query's own candidates."""
    scale = tol * candidates.norm(dim=1).max()
    ranks = []
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk]
        scores = q @ candidates.T  # [c, N], float64
        own = own_mask(start, start + q.shape[0], candidates.shape[0])
        best_own = scores.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)
        margin = scale * q.norm(dim=1, keepdim=True)
        ranks.append(((scores >= best_own - margin) & ~own).sum(dim=1))
    return torch.cat(ranks)


@torch.no_grad()
def retrieval_recall(
    image_emb: Tensor,
    text_emb: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@K both ways plus ``mean_recall``, as fractions in [0, 1].

    ``image_emb`` is ``[I, D]``, ``text_emb`` is ``[T, D]``, ``text_to_image`` is ``[T]``.
    Queries are processed ``chunk`` at a time (peak extra memory ``O(chunk * max(I, T))``).
    """
    _check_inputs(image_emb, text_emb, text_to_image, chunk)
    ks = _check_ks(ks)
    in_dtype = torch.promote_types(image_emb.dtype, text_emb.dtype)
    tol = tie_tolerance(in_dtype, image_emb.shape[1])
    image_emb = image_emb.detach().to(torch.float64)
    text_emb = text_emb.detach().to(device=image_emb.device, dtype=torch.float64)
    t2i = text_to_image.detach().to(device=image_emb.device, dtype=torch.long)

    def own_image(start: int, stop: int, n: int) -> Tensor:  # caption t's own image: text_to_image[t]
        return t2i[start:stop, None] == torch.arange(n, device=t2i.device)[None, :]

    def own_captions(start: int, stop: int, n: int) -> Tensor:  # image i's own captions
        return t2i[None, :] == torch.arange(start, stop, device=t2i.device)[:, None]

    t2i_ranks = _ranks(text_emb, image_emb, own_image, tol, int(chunk))
    i2t_ranks = _ranks(image_emb, text_emb, own_captions, tol, int(chunk))
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_retrieval_recall@{k}"] = (t2i_ranks < k).double().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (i2t_ranks < k).double().mean().item()
    metrics["mean_recall"] = sum(metrics.values()) / len(metrics)
    return metrics


def first_caption_only(text_to_image: Tensor) -> Tensor:
    """Indices (into the caption list) of each image's first caption, in image order.

    The image count is ``text_to_image.max() + 1``; every image must have a caption. Used for the
    official CLIP-KD protocol, which keeps one caption per image: afterwards the kept captions'
    ``text_to_image`` is ``arange(num_images)``.
    """
    if text_to_image.ndim != 1 or text_to_image.numel() == 0 or text_to_image.dtype.is_floating_point:
        raise ValueError("text_to_image must be a non-empty 1-D integer tensor")
    t2i = text_to_image.long()
    if int(t2i.min()) < 0:
        raise ValueError("text_to_image values must be >= 0")
    n_txt, n_img = t2i.numel(), int(t2i.max()) + 1
    positions = torch.arange(n_txt, device=t2i.device)
    first = torch.full((n_img,), n_txt, dtype=torch.long, device=t2i.device)
    first = first.scatter_reduce(0, t2i, positions, reduce="amin")
    if first.eq(n_txt).any():
        missing = torch.nonzero(first.eq(n_txt)).flatten()[:5].tolist()
        raise ValueError(f"images without a caption, e.g. {missing}")
    return first
