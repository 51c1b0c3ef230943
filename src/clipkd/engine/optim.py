"""AdamW with CLIP's parameter groups, and the per-step warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


def _no_decay(name: str, p: torch.Tensor) -> bool:
    """Gains, biases and logit scales get no weight decay (open_clip's rule: ndim < 2 or norm/bias/scale)."""
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


# Devices with torch's fused (one kernel for all parameters) AdamW; elsewhere the per-tensor loops.
FUSED_DEVICES = ("cpu", "cuda")


def create_optimizer(module: nn.Module, lr: float, weight_decay: float, betas: Sequence[float], eps: float,
                     fused: Optional[bool] = None):
    """AdamW over the module's trainable parameters, weight decay only on matrices/kernels.

    ``fused=None``: fused when every parameter is a float tensor on a CPU or CUDA device, the same update in one
    kernel (``benchmarks/student_step.py`` measures it); ``False``: torch's unfused implementation.
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if not _no_decay(n, p)]
    rest = [p for n, p in named if _no_decay(n, p)]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    if fused is None:
        fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for _, p in named)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused or None)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def create_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    """A per-step LambdaLR implementing :func:`warmup_cosine`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup, total))


def clamp_logit_scales(module: nn.Module, max_log: float = math.log(100.0)) -> None:
    """Keep every learnable log-scale in [0, log 100] (the student's, ICL's, AFD's), as CLIP does."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("logit_scale"):
                p.clamp_(0.0, max_log)
