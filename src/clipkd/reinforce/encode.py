"""Teacher forward passes over prepared rows, and a sidecar's arrays assembled batch by batch."""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import torch

from clipkd.data.views import collate_text
from clipkd.models.encoders import ClipEncoder
from clipkd.reinforce.fingerprint import FINGERPRINT_BYTES
from clipkd.reinforce.format import bias_field, image_field, scale_field, text_field
from clipkd.reinforce.rows import PreparedRow


def _to(tokens, device: torch.device):
    return tokens.to(device) if isinstance(tokens, torch.Tensor) else {k: v.to(device) for k, v in tokens.items()}


@torch.no_grad()
def encode_rows(rows: Sequence[PreparedRow], teachers: Sequence[ClipEncoder], device: torch.device
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per teacher: normalised image embeddings [b, K, D] and text embeddings [b, D] (fp32, CPU) of the usable
    ``rows`` in order (b of them). Teachers must be in eval mode.

    On a CPU the b x K views go through the image tower ``len(rows)`` at a time: one pass of all of them ran at
    half the speed per image (the demo teacher at K=16, ``benchmarks/teacher_forward.py``); other devices take
    them in one pass."""
    usable = [r for r in rows if r.reason is None]
    out = []
    for t, teacher in enumerate(teachers):
        if not usable:
            out.append((torch.zeros(0), torch.zeros(0)))
            continue
        views = torch.cat([r.images[t] for r in usable])
        per_pass = len(rows) if device.type == "cpu" else len(views)
        img = torch.cat([teacher.encode_image(chunk.to(device), normalize=True) for chunk in views.split(per_pass)])
        img = img.float().cpu()
        txt = teacher.encode_text(_to(collate_text([r.tokens[t] for r in usable]), device), normalize=True)
        out.append((img.view(len(usable), -1, img.shape[-1]), txt.float().cpu()))
    return out


class SidecarArrays:
    """Collects a sidecar's rows in order: unusable rows get usable 0, zero crops and zero embeddings."""

    def __init__(self, views: int, dims: Sequence[int], dtype: torch.dtype):
        self.views, self.dims, self.dtype = views, list(dims), dtype
        self.parts: list[dict[str, torch.Tensor]] = []
        self.reasons: Counter[str] = Counter()

    def add(self, rows: Sequence[PreparedRow], embeddings: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append ``rows`` with their :func:`encode_rows` output."""
        n, k = len(rows), self.views
        ok = torch.tensor([r.reason is None for r in rows], dtype=torch.bool)
        part = {"fingerprint": torch.tensor([list(r.fingerprint) for r in rows], dtype=torch.uint8).view(n, -1),
                "usable": ok.to(torch.uint8), "crop": torch.zeros(n, k, 4, dtype=torch.int32)}
        if ok.any():
            part["crop"][ok] = torch.tensor([r.crops for r in rows if r.reason is None], dtype=torch.int32)
        for t, (img, txt) in enumerate(embeddings):
            part[image_field(t)] = torch.zeros(n, k, self.dims[t], dtype=self.dtype)
            part[text_field(t)] = torch.zeros(n, self.dims[t], dtype=self.dtype)
            if ok.any():
                part[image_field(t)][ok], part[text_field(t)][ok] = img.to(self.dtype), txt.to(self.dtype)
        self.parts.append(part)
        self.reasons.update(r.reason for r in rows if r.reason is not None)

    def count(self, reason: str) -> None:
        """A problem that is not a row (e.g. a broken shard's ``shard_error``)."""
        self.reasons[reason] += 1

    def tensors(self, scales: Sequence[float], biases: Sequence[Optional[float]] = ()) -> dict[str, torch.Tensor]:
        """All fields of the sidecar, rows in the order they were added; each teacher's scale and, for a sigmoid
        teacher (a bias that is not None), its logit bias."""
        empty = {"fingerprint": torch.zeros(0, FINGERPRINT_BYTES, dtype=torch.uint8),
                 "usable": torch.zeros(0, dtype=torch.uint8), "crop": torch.zeros(0, self.views, 4, dtype=torch.int32)}
        for t, d in enumerate(self.dims):
            empty[image_field(t)] = torch.zeros(0, self.views, d, dtype=self.dtype)
            empty[text_field(t)] = torch.zeros(0, d, dtype=self.dtype)
        out = {k: torch.cat([v, *(p[k] for p in self.parts)]) for k, v in empty.items()}
        out.update({scale_field(t): torch.tensor([s], dtype=torch.float32) for t, s in enumerate(scales)})
        out.update({bias_field(t): torch.tensor([b], dtype=torch.float32)
                    for t, b in enumerate(biases) if b is not None})
        return out
