"""Config -> the evaluation hooks of a run: its benchmarks and its held-out loss + diagnostics."""

from __future__ import annotations

from typing import Optional

import torch

from clipkd.build.data import build_source
from clipkd.config import DataConfig, TrainConfig
from clipkd.data.heldout import HeldOutPairs
from clipkd.data.views import PairedViews
from clipkd.distill import Distiller
from clipkd.eval.runner import BenchmarkHook
from clipkd.eval.val_loss import ValLossHook


def val_loss_hook(dc: DataConfig, distiller: Distiller, device: torch.device,
                  max_batches: Optional[int] = None) -> ValLossHook:
    """Held-out pairs from a data section: ``dc.batch_size`` pairs per batch, at most ``max_batches`` batches
    (None: all), each side's un-augmented preprocessing and tokenizer."""
    views = PairedViews(*distiller.view_encoders, None)
    return ValLossHook(HeldOutPairs(build_source(dc), views, dc.batch_size, max_batches, dc.max_image_pixels), device)


def eval_hooks(cfg: TrainConfig, distiller: Distiller, device: torch.device) -> list:
    """The hooks ``cfg.eval`` asks for: one per benchmark, then the held-out loss when ``eval.val_data`` is set."""
    ec = cfg.eval
    hooks: list = [BenchmarkHook(spec, device) for spec in ec.benchmarks]
    if ec.val_data is not None:
        hooks.append(val_loss_hook(ec.val_data, distiller, device, ec.val_batches))
    return hooks
