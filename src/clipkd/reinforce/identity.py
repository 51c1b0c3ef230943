"""What identifies a teacher's outputs: its weights, architecture config, preprocessing and tokenizer.

:func:`config_identity` needs no model (file digests and config values only): it is what a training run
compares with a cache before using it. :func:`describe_teacher` adds what only the built encoder knows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from clipkd.config import ModelConfig
from clipkd.files import sha256_file

HUB_PREFIXES = ("hf-hub:", "local-dir:")


def weights_identity(mc: ModelConfig) -> str:
    """``sha256:<hex>`` of a weights file, ``tag:<name>`` for a pretrained tag, ``source:<model>`` for weights
    that come with an ``hf-hub:``/``local-dir:`` model, ``random`` when nothing is loaded."""
    if mc.pretrained and Path(mc.pretrained).is_file():
        return "sha256:" + sha256_file(Path(mc.pretrained))
    if mc.model.startswith(HUB_PREFIXES):
        return "source:" + mc.model
    return f"tag:{mc.pretrained}" if mc.pretrained else "random"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_config_digest(model: str) -> Optional[str]:
    """SHA-256 of the model-config JSON behind ``model`` (architecture and preprocessing settings): the file for
    a path or one of clipkd's configs, open_clip's registered config otherwise; None when there is none."""
    from clipkd.models.open_clip_adapter import CONFIG_DIR

    path = Path(model) if model.endswith(".json") else CONFIG_DIR / f"{model}.json"
    if path.is_file():
        return _digest(path.read_bytes())
    import open_clip

    cfg = None if model.startswith(HUB_PREFIXES) else open_clip.get_model_config(model)
    return _digest(json.dumps(cfg, sort_keys=True).encode()) if cfg else None


def _floats(values: Optional[tuple[float, ...]]) -> Optional[list[float]]:
    return None if values is None else [float(v) for v in values]


def config_identity(mc: ModelConfig) -> dict[str, Any]:
    """The teacher's identity from its config section alone (the weights file is hashed, nothing is built)."""
    return {"model": mc.model, "weights": weights_identity(mc), "model_config_sha256": model_config_digest(mc.model),
            "image_mean": _floats(mc.image_mean), "image_std": _floats(mc.image_std)}


def tokenizer_description(tokenizer: Any) -> dict[str, Any]:
    """Class, context length and a SHA-256 of the vocabulary (open_clip's BPE tokenizer or a Hugging Face one)."""
    vocab = getattr(tokenizer, "encoder", None)
    if not isinstance(vocab, dict) and hasattr(getattr(tokenizer, "tokenizer", None), "get_vocab"):
        vocab = tokenizer.tokenizer.get_vocab()
    digest = _digest(json.dumps(sorted(vocab.items())).encode()) if isinstance(vocab, dict) else None
    cls = type(tokenizer)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "context_length": getattr(tokenizer, "context_length",
            None), "vocab_sha256": digest, "repr": None if digest else repr(tokenizer)}


def describe_teacher(mc: ModelConfig, encoder: Any) -> dict[str, Any]:
    """:func:`config_identity` plus the built encoder's preprocessing, tokenizer, sizes and logit scale."""
    return {**config_identity(mc), "pretrained": mc.pretrained, "image_size": list(encoder.image_size),
            "preprocess": repr(encoder.preprocess_val), "tokenizer": tokenizer_description(encoder.tokenizer),
            "embed_dim": int(encoder.embed_dim), "logit_scale": float(encoder.scale())}
