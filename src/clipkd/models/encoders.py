"""The one interface clipkd needs from anything CLIP-like.

An encoder maps images and tokenised text into one embedding space and carries everything needed to feed
it: its own train/eval image preprocessing, its own tokenizer, its input resolution and its embedding size.
Teacher and student are separate encoder objects, so they never have to share any of these.
"""

from __future__ import annotations

import abc
import contextlib
import math
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipkd.embeddings import Embeddings, TextBatch
from clipkd.models.masking import pixel_patch_mask


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block (BatchNorm running statistics, no dropout), its mode restored
    afterwards, also after an exception."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


Preprocess = Callable[..., torch.Tensor]
Tokenizer = Callable[[Sequence[str]], TextBatch]

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def clamped_scale(log_scale: torch.Tensor, max_log: float = MAX_LOGIT_SCALE) -> torch.Tensor:
    """``exp(min(log_scale, max_log))``: a learnable temperature applied as CLIP applies its own."""
    return log_scale.clamp(max=max_log).exp()


class ClipEncoder(nn.Module, abc.ABC):
    """Base class of every CLIP-like encoder used as teacher or student.

    Subclasses set ``embed_dim``, ``image_size`` (H, W), ``preprocess_train``, ``preprocess_val``,
    ``tokenizer`` and a ``logit_scale`` parameter (log of the multiplier), a sigmoid model also a ``logit_bias``
    parameter, and implement the two towers.
    The factories set ``untrained``: which part kept its random initialisation ("all weights", "the image
    and text heads", ...), or None when every weight was loaded.
    """

    untrained: Optional[str] = None
    embed_dim: int
    image_size: tuple[int, int]
    preprocess_train: Preprocess
    preprocess_val: Preprocess
    tokenizer: Tokenizer
    logit_scale: nn.Parameter

    @abc.abstractmethod
    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Image embeddings ``[N, embed_dim]`` of a preprocessed batch ``[N, 3, H, W]``."""

    @abc.abstractmethod
    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        """Text embeddings ``[N, embed_dim]`` of a tokenised batch."""

    def encode_image_masked(
        self, images: torch.Tensor, ratio: float, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """Normalised embeddings of masked images (MFD). Default: zero a random ``ratio`` of pixel patches.

        Towers that can drop tokens (open_clip ViTs) override this to really skip the masked compute.
        """
        if ratio <= 0:
            return self.encode_image(images)
        return self.encode_image(pixel_patch_mask(images, ratio, generator=generator))

    def tokenize(self, texts: Sequence[str]) -> TextBatch:
        """Tokenise captions with this encoder's own tokenizer."""
        return self.tokenizer(list(texts))

    def trimmed_tokens(self, text: TextBatch) -> TextBatch:
        """Tokens as this encoder's training forward needs them, cut on the host before they move to the device
        (a causal text tower: up to the last pooled position). Default: as they are."""
        return text

    def scale(self) -> torch.Tensor:
        """The logit-scale multiplier ``exp(logit_scale)``, clamped to at most 100."""
        return clamped_scale(self.logit_scale)

    def bias(self) -> Optional[torch.Tensor]:
        """The logit bias ``b`` of a sigmoid model (SigLIP: pair logit ``s * <x, y> + b``), None for a softmax CLIP
        model. An encoder has one when it holds a ``logit_bias`` parameter."""
        return getattr(self, "logit_bias", None)

    def embed(self, images: torch.Tensor, text: TextBatch) -> Embeddings:
        """Both towers at once, normalised, with the scale (and the logit bias of a sigmoid model)."""
        return Embeddings(self.encode_image(images), self.encode_text(text), self.scale(), self.bias())


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows."""
    return F.normalize(x, dim=-1)
