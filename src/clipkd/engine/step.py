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
    stopped_by: Optional[str] = None  # the signal that pre-empted the run, if any


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
