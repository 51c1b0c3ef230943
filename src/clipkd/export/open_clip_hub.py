"""A student as an open_clip hub folder: ``open_clip_config.json`` + ``open_clip_model.safetensors`` (+ tokenizer).

The layout ``open_clip.create_model_and_transforms("local-dir:DIR")``, ``open_clip.get_tokenizer("local-dir:DIR")``,
``open_clip.push_to_hf_hub`` and clip_benchmark read. Only the student's own weights go in: the distillation heads
(projections to the teacher's size, ICL/AFD scales, fusion heads) are training-only and left out.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipkd.errors import ExportError
from clipkd.models.encoders import ClipEncoder, eval_mode

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MAX_DIFF = 1e-6  # open_clip's loaded model against the student: the same weights, the same code


def _open_clip_model(encoder: ClipEncoder) -> torch.nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    model = getattr(encoder, "model", None)
    if not isinstance(model, (CLIP, CustomTextCLIP)):
        raise ExportError(f"{getattr(encoder, 'name', type(encoder).__name__)} is not an open_clip model, so it "
                          "has no open_clip layout; export it with --format onnx")
    return model


def hub_config(encoder: ClipEncoder) -> dict:
    """``{"model_cfg": ..., "preprocess_cfg": ...}`` of an open_clip student (preprocessing as it was trained)."""
    import open_clip

    from clipkd.models.open_clip_adapter import model_config

    model = _open_clip_model(encoder)
    preprocess = dict(open_clip.get_model_preprocess_cfg(model))
    preprocess["size"] = list(preprocess["size"]) if isinstance(preprocess["size"], tuple) else preprocess["size"]
    return {"model_cfg": model_config(encoder.name), "preprocess_cfg": preprocess}


def _hf_tokenizer(encoder: ClipEncoder):
    """The transformers tokenizer inside an open_clip ``HFTokenizer``, or None for open_clip's own BPE."""
    return getattr(encoder.tokenizer, "tokenizer", None)


def write_open_clip(encoder: ClipEncoder, out: Path) -> list[Path]:
    """Write the hub folder ``out``; return the files written. Raises :class:`ExportError` for other models."""
    from safetensors.torch import save_file

    from clipkd.files import write_file_atomic, write_json

    model = _open_clip_model(encoder)
    out.mkdir(parents=True, exist_ok=True)
    config = hub_config(encoder)
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    weights = write_file_atomic(out / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    write_json(out / CONFIG_FILE, config)
    written = [out / CONFIG_FILE, weights]
    hf = _hf_tokenizer(encoder)
    if hf is not None:  # open_clip's HFTokenizer loads its files from the local-dir folder itself
        written += [Path(p) for p in hf.save_pretrained(str(out))]
    return written


def load_open_clip(folder: Path):
    """``(model, preprocess_val, tokenizer)`` as a user of open_clip gets them from the folder."""
    import open_clip

    name = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def _check_logit_parameters(model: torch.nn.Module, encoder: ClipEncoder, folder: Path) -> None:
    """open_clip's load has the student's logit scale and, for a sigmoid model, its logit bias (none otherwise)."""
    loaded = getattr(model, "logit_bias", None)
    ours = encoder.bias()
    if (loaded is None) != (ours is None):
        raise ExportError(f"{folder}: open_clip's load {'has no' if loaded is None else 'has a'} logit bias, the "
                          f"student {'has one' if ours is not None else 'has none'}")
    pairs = [(model.logit_scale, encoder.logit_scale)] + ([(loaded, ours)] if ours is not None else [])
    if any(not torch.equal(a.detach().reshape(-1), b.detach().reshape(-1)) for a, b in pairs):
        raise ExportError(f"{folder}: open_clip's load has another logit scale or bias than the student")


def check_open_clip(encoder: ClipEncoder, folder: Path, captions: list[str], images: torch.Tensor) -> float:
    """Max abs difference between open_clip's load of ``folder`` and ``encoder`` (images and captions);
    raises :class:`ExportError` above :data:`MAX_DIFF` or when open_clip tokenises differently."""
    model, _, tokenizer = load_open_clip(folder)
    ids = tokenizer(captions)
    if not torch.equal(torch.as_tensor(ids), torch.as_tensor(encoder.tokenize(captions))):
        raise ExportError(f"{folder}: open_clip's tokenizer from the folder gives other token ids than the student's")
    _check_logit_parameters(model, encoder, folder)
    with torch.no_grad(), eval_mode(encoder):
        diffs = [(model.encode_image(images, normalize=True) - encoder.encode_image(images)).abs().max(),
                 (model.encode_text(ids, normalize=True) - encoder.encode_text(ids)).abs().max()]
    diff = float(max(diffs))
    if diff > MAX_DIFF:
        raise ExportError(f"{folder}: open_clip's load differs from the student by {diff:.3g} (limit {MAX_DIFF:g})")
    return diff
