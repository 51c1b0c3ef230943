"""``preprocess.json``: how a runtime turns an image into the image encoder's input, without PyTorch.

open_clip models: their own preprocessing config (size, resize mode, interpolation, mean/std, fill colour).
Other encoders: read from their evaluation transform (torchvision Resize, CenterCrop, ToTensor, Normalize).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipkd.errors import ExportError
from clipkd.models.encoders import ClipEncoder

STEPS = {
    "shortest": "resize the shorter side to size (keeping the aspect ratio), then centre-crop to size",
    "longest": "resize the longer side to size (keeping the aspect ratio), then pad to size with fill_color",
    "squash": "resize to size exactly (aspect ratio not kept)",
}


def _from_open_clip(encoder: ClipEncoder) -> dict[str, Any] | None:
    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "visual"):
        return None
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    size = cfg.get("size", encoder.image_size)
    return {"size": [size, size] if isinstance(size, int) else list(size), "mode": cfg.get("mode", "RGB"),
            "resize_mode": cfg.get("resize_mode", "shortest"), "interpolation": cfg.get("interpolation", "bicubic"),
            "mean": list(cfg["mean"]), "std": list(cfg["std"]), "fill_color": cfg.get("fill_color", 0)}


def _from_transform(encoder: ClipEncoder) -> dict[str, Any]:
    from torchvision import transforms as T

    steps = getattr(encoder.preprocess_val, "transforms", None)
    if steps is None:
        raise ExportError(f"cannot describe the preprocessing of {type(encoder).__name__} (not a torchvision Compose)")
    spec: dict[str, Any] = {"mode": "RGB", "resize_mode": "shortest", "fill_color": 0}
    for step in steps:
        if isinstance(step, T.Resize):
            spec["interpolation"] = step.interpolation.value
        elif isinstance(step, T.CenterCrop):
            spec["size"] = list(step.size)
        elif isinstance(step, T.Normalize):
            spec["mean"], spec["std"] = list(step.mean), list(step.std)
        elif not isinstance(step, (T.ToTensor, T.PILToTensor, T.ConvertImageDtype)) and callable(step):
            if getattr(step, "__name__", "") != "_convert_to_rgb":
                raise ExportError(f"cannot describe the preprocessing step {step!r} of {type(encoder).__name__}")
    missing = {"size", "interpolation", "mean", "std"} - spec.keys()
    if missing:
        raise ExportError(f"the preprocessing of {type(encoder).__name__} lacks {sorted(missing)}")
    return spec


def preprocess_spec(encoder: ClipEncoder) -> dict[str, Any]:
    """The image preprocessing of ``encoder`` as plain values, with one sentence per step for a runtime."""
    spec = _from_open_clip(encoder) or _from_transform(encoder)
    spec["steps"] = [
        f"convert to {spec['mode']}",
        STEPS.get(spec["resize_mode"], spec["resize_mode"]) + f" (size {spec['size']} as [height, width], "
        f"{spec['interpolation']} interpolation)",
        "scale pixel values to [0, 1], then per channel subtract mean and divide by std",
        "layout NCHW, float32; input 'image' of image_encoder.onnx",
    ]
    return spec


def write_preprocess(encoder: ClipEncoder, path: Path) -> Path:
    """Write :func:`preprocess_spec` as JSON; return ``path``."""
    from clipkd.files import write_json

    write_json(path, preprocess_spec(encoder))
    return path
