"""Which device a process computes on."""

from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. CUDA means GPU ``local_rank`` (one GPU per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
