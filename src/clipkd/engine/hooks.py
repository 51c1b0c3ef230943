"""Evaluation hooks: called every ``eval.every_steps`` and at the end; their metrics are logged as ``eval/*``.

A hook is any callable ``hook(distiller, step) -> {name: value}`` with a ``name``. The trainer puts the
student in eval mode around the call and back to train mode after. Zero-shot and retrieval hooks plug in here.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Protocol

import torch

from clipkd.data.stream import DataPosition, DistillStream, make_loader
from clipkd.distill import Distiller


class EvalHook(Protocol):
    name: str

    def __call__(self, distiller: Distiller, step: int) -> dict[str, float]: ...


class ValLossHook:
    """Mean of every active loss term (and the total) on held-out pairs, without masking or augmentation."""

    name = "val"

    def __init__(self, stream: DistillStream, batches: int, device: torch.device):
        self.stream, self.batches, self.device = stream, batches, device

    @torch.no_grad()
    def __call__(self, distiller: Distiller, step: int) -> dict[str, float]:
        plain = dataclasses.replace(distiller, mask_ratio=0.0)
        self.stream.start(DataPosition())  # the same held-out batches every time
        sums: dict[str, float] = defaultdict(float)
        count = 0
        for batch, _ in make_loader(self.stream, self.stream.workers if self.stream.workers > 1 else 0):
            out = plain(batch.to(self.device))
            for k, v in out.items():
                sums[k] += float(v)
            count += 1
            if count >= self.batches:
                break
        return {k: v / max(count, 1) for k, v in sums.items()}
