"""open_clip's causal text towers, run only as far as the token they pool: a training-only speed-up.

CLIP's text transformer is causal and pools one token per caption (the end-of-text token): the pooled feature
depends on that token and the ones before it, never on the padding after it. Captions are usually far shorter
than the context (the demo's: at most 16 of 32 tokens), so running the tower on the first ``max(pooled index)
+ 1`` positions gives the same embeddings and gradients for a fraction of the compute (``benchmarks/student_step.py``
measures the step with and without it). Towers this does not apply to (bidirectional, HF, pad-masked, CoCa's
appended class token, pooling the last position) run unchanged through open_clip.

It is an explicit switch, never a guess: :class:`~clipkd.models.open_clip_adapter.OpenClipEncoder` trims only when
its ``trim_text`` is on (off by default; :class:`~clipkd.models.student.DistillStudent` turns it on for the student
it trains) *and* it is in training mode. Everything else runs open_clip's reference forward over the whole
context: evaluation (also in-training evaluation, under ``eval_mode``), the teacher (always in eval mode), export
(the trimmed length depends on the data, and a traced graph must not keep it) and the model card's FLOPs and
latency, which so measure what is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from open_clip.model import CLIP
from open_clip.transformer import TextTransformer
from torch import nn

_POOLED_TOKEN = ("argmax", "eos", "first")


@dataclass
class CausalTextTower:
    """The parts of an open_clip causal text tower (``CLIP``'s own, or a ``TextTransformer``)."""

    module: nn.Module
    pool_type: str
    eos_id: Optional[int]

    @classmethod
    def of(cls, model: nn.Module) -> Optional["CausalTextTower"]:
        """The trimmable text tower of an open_clip model, or None when trimming could change its output."""
        if isinstance(model, CLIP):
            tower, pool, eos = model, model.text_pool_type, getattr(model, "text_eos_id", None)
        elif isinstance(getattr(model, "text", None), TextTransformer):
            tower = model.text
            if tower.cls_emb is not None or tower.use_pad_mask:
                return None
            pool, eos = tower.pool_type, getattr(tower, "eos_id", None)
        else:
            return None
        if getattr(tower, "attn_mask", None) is None or pool not in _POOLED_TOKEN:
            return None
        return cls(tower, pool, eos)

    def pooled_index(self, text: torch.Tensor) -> torch.Tensor:
        """The position each caption's feature is taken from (as open_clip's ``text_global_pool`` takes it)."""
        if self.pool_type == "argmax":
            return text.argmax(dim=-1)
        if self.pool_type == "eos":
            return (text == self.eos_id).int().argmax(dim=-1)
        return torch.zeros(text.shape[0], dtype=torch.long, device=text.device)

    def trimmed(self, text: torch.Tensor) -> torch.Tensor:
        """``text`` [N, L] cut to its first ``max(pooled index) + 1`` positions (all when N is 0)."""
        return text[:, :int(self.pooled_index(text).max()) + 1] if text.shape[0] else text

    def encode(self, text: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features of ``text`` [N, L], from its first ``max(pooled index) + 1`` positions. On the
        CPU the width is found here; on an accelerator reading it would wait for the device's queue, so ``text`` is
        run at the width it has (exact either way): the trainer cuts it on the host first (:meth:`trimmed`)."""
        tower = self.module
        if text.device.type == "cpu":
            text = self.trimmed(text)
        index, length = self.pooled_index(text), text.shape[1]
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(text[:, :length]).to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
        x = tower.ln_final(x[torch.arange(x.shape[0], device=x.device), index])  # per token: pool, then norm
        proj = tower.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj
