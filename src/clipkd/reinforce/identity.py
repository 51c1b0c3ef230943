"""What identifies a teacher's outputs: its weights, architecture config, preprocessing and tokenizer.

:func:`clipkd.identity.config_identity` needs no model (file and folder digests, config values): it is what a
training run compares with a cache before using it. :func:`describe_teacher` adds what
only the built encoder knows.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from clipkd.config import ModelConfig
from clipkd.identity import config_identity


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    return {**config_identity(mc), "name": mc.model, "pretrained": mc.pretrained,
            "image_size": list(encoder.image_size), "preprocess": repr(encoder.preprocess_val), "tokenizer": tokenizer_description(encoder.tokenizer),
            "embed_dim": int(encoder.embed_dim), "logit_scale": float(encoder.scale()),
            "logit_bias": None if encoder.bias() is None else float(encoder.bias())}
