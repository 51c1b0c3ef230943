"""What one optimizer step yields and agrees on, and the mixed-precision context it runs in."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    nonfinite_steps: int = 0
    fp16_overflow_steps: int = 0
    stopped_by: Optional[str] = None  # the signal that asked the run to stop, if any (this rank's, or another's)
    complete: bool = False  # trained to the end with its final evaluation (a signal may still have come during it)


@dataclass
class StepAgreement:
    """What all ranks agree on after computing a step's gradients (one all-reduce)."""

    nonfinite: bool
    stop: bool
    bad_records: int
    consumed: int


def autocast(device: torch.device, precision: str):
    """The mixed-precision context of ``precision`` (fp32: none)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def logged_scalars(student: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   fp16_overflows: int) -> dict[str, float]:
    """What a logging step records besides the losses: learning rate, the learned scales (one per teacher of an
    ensemble) and, under fp16, the loss scale and the overflowed steps."""
    s = student
    out = {"lr": optimizer.param_groups[0]["lr"], "logit_scale": s.encoder.scale().item()}
    if s.encoder.bias() is not None:
        out["logit_bias"] = s.encoder.bias().item()
    for name in ("icl_logit_scale", "afd_logit_scale"):
        for prefix in ("", "ensemble_"):  # an ensemble: one scale per teacher
            p = getattr(s, prefix + name, None)
            if p is None:
                continue
            values = p.detach().exp().reshape(-1).tolist()
            key = name.replace("_logit", "")
            out.update({key: values[0]} if p.dim() == 0 else {f"{key}_{i}": v for i, v in enumerate(values)})
    if scaler.is_enabled():
        out.update(loss_scale=scaler.get_scale(), fp16_overflow_steps=fp16_overflows)
    return out
