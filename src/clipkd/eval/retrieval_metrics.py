"""Image-text retrieval recall@K, computed in chunks of queries.

Conventions:

* embeddings are L2-normalised, so the similarity is the dot product;
* ``text_to_image[t]`` is the index of caption ``t``'s image; an image may have several captions
  and every image must have at least one;
* a query's rank is the number of *wrong* candidates scoring at least as high as (``>=``) its best
  correct candidate, so ties count against the query (pessimistic ranking); the query succeeds at K
  when ``rank < K``. A collapsed tower (every caption, or every image, the same embedding) therefore
  scores chance level, R@K = 1 only when fewer than K wrong candidates exist, and an identical caption
  of another image is not a hit;
* only a ``[chunk, max(I, T)]`` block of scores exists at any time, so 5k images x 25k captions
  fit easily; bfloat16/float16 inputs are computed in float32 (float64 stays float64) on the
  inputs' device.

The keys match what clip_benchmark writes: ``image_retrieval_recall@K`` is text -> image,
``text_retrieval_recall@K`` is image -> text.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["retrieval_recall", "first_caption_only"]


def _compute_dtype(*xs: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 are upcast)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


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


def _text_to_image_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, chunk: int) -> Tensor:
    """Wrong images scoring ``>=`` each caption's own image, ``[T]``."""
    ranks = []
    for start in range(0, text_emb.shape[0], chunk):
        scores = text_emb[start:start + chunk] @ image_emb.T  # [c, I]
        own = scores.gather(1, text_to_image[start:start + chunk, None])  # [c, 1]
        ranks.append((scores >= own).sum(dim=1) - 1)  # the own image itself always counts once
    return torch.cat(ranks)


def _image_to_text_ranks(image_emb: Tensor, text_emb: Tensor, text_to_image: Tensor, chunk: int) -> Tensor:
    """Other images' captions scoring ``>=`` each image's best-scoring own caption, ``[I]``."""
    ranks = []
    for start in range(0, image_emb.shape[0], chunk):
        scores = image_emb[start:start + chunk] @ text_emb.T  # [c, T]
        ids = torch.arange(start, start + scores.shape[0], device=scores.device)
        own = text_to_image[None, :] == ids[:, None]  # [c, T]
        best_own = scores.masked_fill(~own, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append(((scores >= best_own) & ~own).sum(dim=1))
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
    dtype = _compute_dtype(image_emb, text_emb)
    image_emb = image_emb.detach().to(dtype)
    text_emb = text_emb.detach().to(device=image_emb.device, dtype=dtype)
    t2i = text_to_image.detach().to(device=image_emb.device, dtype=torch.long)

    t2i_ranks = _text_to_image_ranks(image_emb, text_emb, t2i, int(chunk))
    i2t_ranks = _image_to_text_ranks(image_emb, text_emb, t2i, int(chunk))
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
