"""Input masking for masked feature distillation (MFD).

Two mechanisms, chosen by the image tower:

* open_clip ViTs: :class:`TokenDrop` removes ``floor(r * L)`` of the ``L`` patch tokens of every sample
  (a fresh random subset per sample) right after the position embeddings, so the transformer really runs
  on fewer tokens and the compute falls with ``r``;
* any other tower: :func:`pixel_patch_mask` zeroes a random ``floor(r * P)`` of the ``P`` pixel patches.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
from torch import nn


def _random_keep(batch: int, length: int, keep: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
    """Sorted indices of ``keep`` random positions out of ``length``, independently per row: ``[batch, keep]``."""
    noise = torch.rand(batch, length, generator=generator, device=generator.device if generator else "cpu")
    idx = noise.argsort(dim=1, stable=True)[:, :keep]  # stable: equal draws ordered by position on every CPU
    return idx.sort(dim=1).values.to(device)


def num_masked(ratio: float, length: int) -> int:
    """``floor(ratio * length)``, leaving at least one token/patch visible."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return min(int(math.floor(ratio * length)), length - 1)


class TokenDrop(nn.Module):
    """Drop a fixed ratio of patch tokens per sample; the class token (first) always stays."""

    def __init__(self, ratio: float, generator: Optional[torch.Generator] = None, prefix_tokens: int = 1):
        super().__init__()
        self.ratio = ratio
        self.generator = generator
        self.prefix_tokens = prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, patches = x[:, : self.prefix_tokens], x[:, self.prefix_tokens :]
        n, length, width = patches.shape
        keep = length - num_masked(self.ratio, length)
        idx = _random_keep(n, length, keep, self.generator, x.device)
        kept = patches.gather(1, idx.unsqueeze(-1).expand(n, keep, width))
        return torch.cat([prefix, kept], dim=1)


@contextlib.contextmanager
def vit_token_drop(visual: nn.Module, ratio: float, generator: Optional[torch.Generator] = None) -> Iterator[None]:
    """Temporarily route an open_clip ``VisionTransformer``'s patch-dropout slot through :class:`TokenDrop`.

    open_clip applies ``visual.patch_dropout`` after the position embeddings and before ``ln_pre``: exactly
    where MFD masks. The original module is restored on exit, also on error.
    """
    original = visual.patch_dropout
    visual.patch_dropout = TokenDrop(ratio, generator)
    try:
        yield
    finally:
        visual.patch_dropout = original


def default_patch_size(height: int, width: int) -> int:
    """Mask patch for non-ViT towers: 16 px (ViT-B/16's patch) or a 1/8 of the image side if smaller."""
    return max(1, min(16, min(height, width) // 8))


def pixel_patch_mask(
    images: torch.Tensor,
    ratio: float,
    patch: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Zero a random ``floor(ratio * P)`` of the ``P`` square pixel patches of each image ``[N, C, H, W]``."""
    n, _, h, w = images.shape
    p = patch or default_patch_size(h, w)
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    total = gh * gw
    masked = num_masked(ratio, total)
    if masked == 0:
        return images
    noise = torch.rand(n, total, generator=generator, device=generator.device if generator else "cpu")
    drop = noise.argsort(dim=1, stable=True)[:, :masked]  # stable: ties ordered by position on every CPU
    keep = torch.ones(n, total, dtype=images.dtype, device=drop.device).scatter_(1, drop, 0.0).to(images.device)
    grid = keep.view(n, 1, gh, gw).repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    return images * grid[:, :, :h, :w]
