"""Reading model weights from the checkpoint layouts people actually have.

Accepted: a bare state dict; ``{"state_dict": ...}`` (the CLIP-KD teachers), ``{"model": ...}``; keys
prefixed ``module.`` (DDP) or ``_orig_mod.`` (torch.compile); a ``.safetensors`` file; and clipkd's own
student checkpoints, whose encoder keys sit under ``encoder.model.``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Union

import torch

WRAPPER_KEYS = ("state_dict", "model", "student")
STRIP_PREFIXES = ("module.", "_orig_mod.")
CLIPKD_ENCODER_PREFIX = "encoder.model."


def read_state_dict(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """Load a checkpoint file and return a flat ``{name: tensor}`` mapping (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Peel wrapper dicts and framework prefixes off a loaded checkpoint object."""
    while isinstance(obj, Mapping) and not _is_tensor_map(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            raise ValueError(f"{source}: no state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict, got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in STRIP_PREFIXES:
        state = _strip_prefix(state, prefix)
    if any(k.startswith(CLIPKD_ENCODER_PREFIX) for k in state):
        state = {k[len(CLIPKD_ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(CLIPKD_ENCODER_PREFIX)}
    return state


def _is_tensor_map(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state
