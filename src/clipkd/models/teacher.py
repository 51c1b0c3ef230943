"""The frozen teacher: no parameter trains, always in eval mode, forward without autograd."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from clipkd.embeddings import Embeddings, TextBatch
from clipkd.models.encoders import ClipEncoder


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


class TeacherEnsemble(nn.Module):
    """Several frozen teachers used as one: each embeds its own view (its own preprocessing and tokenizer) and
    their embeddings are joined as :func:`clipkd.embeddings.join_teachers` lays them out (``img``/``txt``
    concatenated in teacher order, ``scale`` [T])."""

    def __init__(self, encoders: Sequence[ClipEncoder]):
        super().__init__()
        if len(encoders) < 2:
            raise ValueError("an ensemble needs at least two teachers (use FrozenTeacher for one)")
        self.members = nn.ModuleList(e if isinstance(e, FrozenTeacher) else FrozenTeacher(e) for e in encoders)
        super().train(False)

    def train(self, mode: bool = True) -> "TeacherEnsemble":
        """Ignored on purpose: every teacher stays in eval mode."""
        return super().train(False)

    @property
    def encoders(self) -> list[ClipEncoder]:
        return [m.encoder for m in self.members]

    @property
    def embed_dims(self) -> list[int]:
        return [m.embed_dim for m in self.members]

    @torch.no_grad()
    def forward(self, images: Sequence[torch.Tensor], text: Sequence[TextBatch]) -> Embeddings:
        """Teacher ``t`` embeds ``images[t]`` and ``text[t]``; the embeddings joined."""
        from clipkd.embeddings import join_teachers

        return join_teachers([m(i, t) for m, i, t in zip(self.members, images, text)])
