"""An exported pair of ONNX encoders behind clipkd's :class:`ClipEncoder` interface, run by onnxruntime.

The benchmarks of ``clipkd eval`` (and the latency measurements of the card) then run the exported files exactly
as they run a PyTorch model; preprocessing and tokenizer are the student's own.

A variant's *drift* (:class:`DriftRecorder`) is measured one input at a time: every image and caption runs alone
(a batch of one) through the variant and through the float32 reference. That is what a single query sees in
deployment, and it makes the figure independent of how an evaluation happens to batch its inputs: onnxruntime's
dynamic int8 quantisation picks each activation's scale per tensor at run time, so within a batch an image's
int8 embedding depends on the other images (up to 0.003 per coordinate between batches of 4 and of 9 on the test
student). Measured on this machine, the intra-op thread count changes no output (1 to 8 threads, batch 1 or 6;
float32, int8, fp16); both sides get the same preprocessed tensors (the student's own transform); the cosine is
computed on re-normalised embeddings (the fp16 variant's are unit vectors only to within 5e-4). The figure is
that of this machine's kernels: onnxruntime picks its int8 and fp16 kernels by CPU (AVX2, AVX-512, VNNI), so
another CPU can give a slightly different drift (and ``ATEN_CPU_CAPABILITY`` does not change onnxruntime's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from clipkd.embeddings import TextBatch
from clipkd.export.onnx_export import IMAGE_INPUT, run_session, session
from clipkd.models.encoders import ClipEncoder
from clipkd.models.encoders import normalize as l2_normalize


def _rows(batch: TextBatch) -> list[TextBatch]:
    """Each input of a batch alone (a batch of one): the rows of a tensor, or of every tensor of a mapping."""
    if isinstance(batch, torch.Tensor):
        return [batch[i:i + 1] for i in range(batch.shape[0])]
    n = next(iter(batch.values())).shape[0]
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]


class OnnxEncoder(ClipEncoder):
    """``image``/``text`` ONNX files (any variant: float32, int8, fp16) with ``like``'s preprocessing and tokenizer.

    ``per_input``: run every image and caption alone (batch of one), so an embedding never depends on the other
    inputs of its batch (see the module docstring); the default runs each batch as one call."""

    def __init__(self, image_file: Path, text_file: Path, like: ClipEncoder, threads: Optional[int] = None,
                 per_input: bool = False):
        super().__init__()
        self.image_session, self.text_session = session(image_file, threads), session(text_file, threads)
        self.name = f"{getattr(like, 'name', type(like).__name__)} ({Path(image_file).name})"
        self.embed_dim, self.image_size = like.embed_dim, like.image_size
        self.preprocess_train = self.preprocess_val = like.preprocess_val
        self.tokenizer = like.tokenizer
        self.logit_scale = torch.nn.Parameter(like.logit_scale.detach().clone(), requires_grad=False)
        if like.bias() is not None:  # a sigmoid model keeps its bias (the logits, not the ranking, depend on it)
            self.logit_bias = torch.nn.Parameter(like.bias().detach().clone(), requires_grad=False)
        self.per_input = per_input

    def _run(self, sess, feed: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feed = {k: v.cpu() for k, v in feed.items()}
        rows = _rows(feed) if self.per_input else []
        return torch.cat([run_session(sess, row) for row in rows]) if rows else run_session(sess, feed)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """The exported graph's (always normalised) image embeddings."""
        return self._run(self.image_session, {IMAGE_INPUT: images.float()})

    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        """The exported graph's (always normalised) text embeddings."""
        feed = {"text": text} if isinstance(text, torch.Tensor) else {k: text[k] for k in text}
        return self._run(self.text_session, feed)


class DriftRecorder(ClipEncoder):
    """Runs a variant and its float32 reference side by side, each input alone (a batch of one, whatever batch
    it is called with); returns the variant's embeddings and records the cosine between the two for every image
    and caption embedded (the variant's *drift*). Accuracy measured through the recorder is per input too."""

    def __init__(self, variant: ClipEncoder, reference: ClipEncoder):
        super().__init__()
        self.variant, self.reference = variant, reference
        for key in ("name", "embed_dim", "image_size", "preprocess_train", "preprocess_val", "tokenizer"):
            setattr(self, key, getattr(variant, key))
        self.logit_scale = variant.logit_scale
        if variant.bias() is not None:
            self.logit_bias = variant.bias()
        self.cosines: dict[str, list[torch.Tensor]] = {"image": [], "text": []}

    def _compare(self, side: str, encode: Callable[[ClipEncoder, TextBatch], torch.Tensor],
                 batch: TextBatch) -> torch.Tensor:
        rows = _rows(batch)
        if not rows:
            return encode(self.variant, batch)
        got = torch.cat([encode(self.variant, row) for row in rows])
        ref = torch.cat([encode(self.reference, row) for row in rows])
        self.cosines[side].append((l2_normalize(got.double()) * l2_normalize(ref.double())).sum(-1))
        return got

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self._compare("image", lambda enc, rows: enc.encode_image(rows), images)

    def encode_text(self, text: TextBatch, normalize: bool = True) -> torch.Tensor:
        return self._compare("text", lambda enc, rows: enc.encode_text(rows), text)

    def mean_cosine(self) -> dict[str, float]:
        """Mean cosine to the reference per side over everything recorded."""
        return {side: float(torch.cat(c).mean()) for side, c in self.cosines.items() if c}
