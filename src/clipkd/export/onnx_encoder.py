"""An exported pair of ONNX encoders behind clipkd's :class:`ClipEncoder` interface, run by onnxruntime.

The benchmarks of ``clipkd eval`` (and the latency measurements of the card) then run the exported files exactly
as they run a PyTorch model; preprocessing and tokenizer are the student's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from clipkd.export.onnx_export import IMAGE_INPUT, run_session, session
from clipkd.models.encoders import ClipEncoder, TextBatch
from clipkd.models.encoders import normalize as l2_normalize


class OnnxEncoder(ClipEncoder):
    """``image``/``text`` ONNX files (any variant: float32, int8, fp16) with ``like``'s preprocessing and tokenizer."""

    def __init__(self, image_file: Path, text_file: Path, like: ClipEncoder, threads: Optional[int] = None):
        super().__init__()
        self.image_session, self.text_session = session(image_file, threads), session(text_file, threads)
        self.name = f"{getattr(like, 'name', type(like).__name__)} ({Path(image_file).name})"
        self.embed_dim, self.image_size = like.embed_dim, like.image_size
        self.preprocess_train = self.preprocess_val = like.preprocess_val
        self.tokenizer = like.tokenizer
        self.logit_scale = torch.nn.Parameter(like.logit_scale.detach().clone(), requires_grad=False)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The exported graph's (always normalised) image embeddings."""
        return run_session(self.image_session, {IMAGE_INPUT: images.float().cpu()})

    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        """The exported graph's (always normalised) text embeddings."""
        feed = {"text": text} if isinstance(text, torch.Tensor) else {k: text[k] for k in text}
        return run_session(self.text_session, {k: v.cpu() for k, v in feed.items()})


class DriftRecorder(ClipEncoder):
    """Runs a variant and its float32 reference side by side; returns the variant's embeddings and records the
    cosine between the two for every image and caption embedded (the variant's *drift*)."""

    def __init__(self, variant: ClipEncoder, reference: ClipEncoder):
        super().__init__()
        self.variant, self.reference = variant, reference
        for key in ("name", "embed_dim", "image_size", "preprocess_train", "preprocess_val", "tokenizer"):
            setattr(self, key, getattr(variant, key))
        self.logit_scale = variant.logit_scale
        self.cosines: dict[str, list[torch.Tensor]] = {"image": [], "text": []}

    def _record(self, side: str, got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        self.cosines[side].append((l2_normalize(got.double()) * l2_normalize(ref.double())).sum(-1))
        return got

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._record("image", self.variant.encode_image(images), self.reference.encode_image(images))

    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        return self._record("text", self.variant.encode_text(text), self.reference.encode_text(text))

    def mean_cosine(self) -> dict[str, float]:
        """Mean cosine to the reference per side over everything recorded."""
        return {side: float(torch.cat(c).mean()) for side, c in self.cosines.items() if c}
