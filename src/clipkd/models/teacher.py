"""The frozen teacher: no parameter trains, always in eval mode, forward without autograd."""

from __future__ import annotations

import torch
from torch import nn

from clipkd.models.encoders import ClipEncoder, Embeddings, TextBatch


class FrozenTeacher(nn.Module):
    """Wraps a :class:`ClipEncoder` so it can only be used as a fixed target.

    * every parameter has ``requires_grad=False`` from construction on;
    * ``.train()`` is ignored: the teacher stays in ``eval()`` (dropout off, BatchNorm statistics frozen),
      whatever the training loop calls on it;
    * the forward runs under ``torch.no_grad()``. Not ``inference_mode``: its outputs are saved for the
      student's backward (e.g. ``s_img @ t_txt^T``), which inference tensors may not be.
    """

    def __init__(self, encoder: ClipEncoder):
        super().__init__()
        self.encoder = encoder
        encoder.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Ignored on purpose: the teacher never leaves eval mode."""
        return super().train(False)

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor, text: TextBatch) -> Embeddings:
        """Normalised teacher embeddings and the teacher's (fixed) scale multiplier."""
        return self.encoder.embed(images, text)
