"""Checks on model names, model configs and checkpoints that allocate no weights (for the preflight).

* :func:`checkpoint_shapes` reads a checkpoint's tensor names and shapes: the safetensors header, or
  ``torch.load(map_location="meta", mmap=True)``; the same unwrapping as the real loader.
* :func:`expected_shapes` builds an open_clip architecture under ``torch.device("meta")`` (no memory, no
  initialisation) and returns its state dict's shapes; ``None`` when that is not possible offline (towers
  from Hugging Face ``transformers`` need their config from the hub) or for the composite LiT teacher.
* :func:`fit_problem` compares the two the way :func:`~clipkd.models.open_clip_adapter.load_weights` loads.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Optional, Union

import torch

from clipkd.models.state_dict import unwrap_state_dict

log = logging.getLogger(__name__)

Shapes = dict[str, tuple[int, ...]]
RESIZABLE = ("visual.positional_embedding",)  # interpolated to the model's grid when loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def checkpoint_shapes(path: Union[str, Path]) -> Shapes:
    """Tensor names and shapes of a checkpoint in any layout the loader accepts; ``ValueError`` if unreadable."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                obj: object = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        else:
            try:
                obj = torch.load(path, map_location="meta", weights_only=True, mmap=True)
            except RuntimeError as exc:  # files from the legacy (non-zip) torch.save cannot be memory-mapped
                if "mmap" not in str(exc):
                    raise
                obj = torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"cannot read checkpoint {path}: not a PyTorch file of plain tensors "
                         "(torch.load with weights_only=True refused it)") from None
    except Exception as exc:  # header or zip errors: all mean "not a readable checkpoint"
        raise ValueError(f"cannot read checkpoint {path}: {_first_line(exc)}") from None
    state = unwrap_state_dict(obj, source=str(path))
    return {k: tuple(v.shape) for k, v in state.items()}


def model_config_problem(path: Union[str, Path]) -> Optional[str]:
    """Why a model-config JSON cannot be used (not JSON, not an open_clip config), or None."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return f"{path} is not valid JSON ({exc})"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path}: {_first_line(exc)}"
    model_cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict):
        return f"{path} is not an open_clip model config (expected a JSON object)"
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    return f"{path} is not an open_clip model config (missing {missing})" if missing else None


class ArchitectureError(ValueError):
    """The model config names an architecture open_clip cannot build."""


def expected_shapes(model: str) -> Optional[Shapes]:
    """The state-dict shapes of an open_clip architecture, built on the meta device; None if not checkable.

    Raises :class:`ArchitectureError` when the config itself is unusable (a wrong key or value).
    """
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    from clipkd.models.factory import COMPOSITE_MODELS
    from clipkd.models.open_clip_adapter import _resolve_model_name

    if model in COMPOSITE_MODELS or model.startswith(("hf-hub:", "local-dir:")):
        return None
    cfg = open_clip.get_model_config(_resolve_model_name(model))
    if cfg is None:
        return None
    cfg = dict(cfg)
    if "hf_model_name" in cfg.get("text_cfg", {}):
        return None  # the text tower's architecture comes from the hub
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"] = {**cfg["vision_cfg"], "timm_model_pretrained": False}
    custom = cfg.pop("custom_text", False)
    if "multimodal_cfg" in cfg:
        from open_clip.coca_model import CoCa as cls
    else:
        cls = CustomTextCLIP if custom else CLIP
    try:
        with torch.device("meta"):
            built = cls(**cfg)
    except TypeError as exc:
        if "argument" not in str(exc):  # not a constructor-signature mismatch: leave it to the real build
            log.debug("no pre-build shape check for %s: %s", model, exc)
            return None
        raise ArchitectureError(f"open_clip cannot build it: {_first_line(exc)}") from None
    except Exception as exc:  # e.g. a library that cannot initialise on the meta device: the load checks it
        log.debug("no pre-build shape check for %s: %s", model, exc)
        return None
    return {k: tuple(v.shape) for k, v in built.state_dict().items()}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def fit_problem(expected: Shapes, found: Shapes) -> Optional[str]:
    """Why ``found`` (a checkpoint) does not load into ``expected`` (an architecture), or None."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [f"{k} {list(found[k])} vs {list(expected[k])}" for k in expected
                  if k in found and found[k] != expected[k] and k not in RESIZABLE
                  and not (k == "logit_scale" and _numel(found[k]) == _numel(expected[k]))]
    if not (missing or unexpected or mismatched):
        return None
    parts = [f"{label} {len(keys)}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
             for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs model)",
                                                                                  mismatched)) if keys]
    return "; ".join(parts)


def hub_offline() -> bool:
    """Whether Hugging Face downloads are switched off (``HF_HUB_OFFLINE``)."""
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
        return os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def pretrained_tag_problem(model: str, tag: str, option: str = "pretrained") -> Optional[str]:
    """Why the open_clip pretrained tag ``tag`` of ``model`` cannot be used, or None.

    The weights are fetched now (from the local cache, else the hub): the model build that follows finds them
    cached. ``option`` says how the user passes a local checkpoint instead.
    """
    import open_clip

    from clipkd.models.open_clip_adapter import _resolve_model_name

    if model.startswith(("hf-hub:", "local-dir:")):
        return None
    name = _resolve_model_name(model)
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(name)
        return f"'{tag}' is neither a checkpoint file nor a pretrained tag of {model} (tags: {known or 'none'})"
    try:
        open_clip.download_pretrained(cfg)
    except Exception as exc:  # hub errors, URL errors, OSError: the weights are not reachable
        why = "HF_HUB_OFFLINE is set" if hub_offline() else _first_line(exc)
        return (f"cannot get the pretrained weights '{tag}' of {model}: the hub is unreachable ({why}) and they "
                f"are not in the local cache; download them once with network access, or pass a local checkpoint "
                f"file as {option}")
    return None
