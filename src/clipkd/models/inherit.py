"""Weight inheritance: a student ViT CLIP initialised from its teacher's weights (TinyCLIP's manual inheritance).

The student keeps a chosen subset of the teacher's layers (a list, or evenly spaced: student layer ``i`` takes
teacher layer ``floor(i * L_t / L_s)``, so every k-th when the depths divide) and, where it is narrower, the most
important channels, heads and MLP units, each picked once per tower by weight magnitude:

* **residual channels** (width ``d`` of ``D``): the ``d`` channels with the largest summed absolute LayerNorm gains
  over the kept layers (``ln_1``, ``ln_2``) and the tower's final norm: how strongly each channel is read;
* **attention heads** (per layer, head width unchanged): the heads with the largest L1 norm of their query, key and
  value rows and their output-projection columns;
* **MLP units** (per layer): the largest L1 norm of their input row and output column;
* **embedding dimensions** (``E_s`` of ``E_t``): the largest summed absolute entries of the image and the text
  projection's columns (one choice for both towers: they share the embedding space).

Everything else is copied with those selections: patch embedding, class token, positional embeddings (the grid
resized bicubically when the image sizes differ; a longer text context keeps its own extra rows), norms, token
embedding and the logit scale (and bias, where both have one). Kept indices stay in the teacher's order.
Inheriting every layer at full width reproduces the teacher exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InheritReport", "inherit_from", "evenly_spaced"]


@dataclass
class InheritReport:
    """What was inherited: the teacher layers each tower kept, widths, and what stayed the student's own."""

    image_layers: list[int] = field(default_factory=list)
    text_layers: list[int] = field(default_factory=list)
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (student, teacher)
    own: list[str] = field(default_factory=list)  # parameters (or rows) kept from the student's initialisation


def evenly_spaced(student_depth: int, teacher_depth: int) -> list[int]:
    """Teacher layer ``floor(i * L_t / L_s)`` for student layer ``i`` (every k-th when ``L_t = k L_s``)."""
    if student_depth > teacher_depth:
        raise ValueError(f"a student of {student_depth} layers cannot inherit from a teacher of {teacher_depth}")
    return [i * teacher_depth // student_depth for i in range(student_depth)]


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in ascending index order."""
    return torch.topk(scores, k).indices.sort().values


def _check_vit_clip(model: nn.Module, role: str) -> None:
    from open_clip.model import CLIP
    from open_clip.transformer import VisionTransformer

    problems = []
    if not isinstance(model, CLIP):
        problems.append(f"the {role} is {type(model).__name__}, not open_clip's CLIP (its own text transformer)")
    elif not isinstance(model.visual, VisionTransformer):
        problems.append(f"the {role}'s image tower is {type(model.visual).__name__}, not a VisionTransformer")
    if problems:
        raise ValueError("weight inheritance maps a ViT CLIP onto a ViT CLIP: " + "; ".join(problems) +
                         " (a CNN or timm tower has no layer-by-layer counterpart: use student.pretrained instead)")


def _structure(model: nn.Module) -> dict[str, object]:
    """What must agree between teacher and student for their weights to mean the same thing."""
    from open_clip.transformer import ResidualAttentionBlock

    v = model.visual
    blocks = [*v.transformer.resblocks, *model.transformer.resblocks]
    b = blocks[0]
    return {
        "block type": sorted({type(x).__name__ for x in blocks}),
        "plain attention (nn.MultiheadAttention)": all(
            isinstance(x, ResidualAttentionBlock) and isinstance(x.attn, nn.MultiheadAttention) for x in blocks),
        "activation": type(b.mlp.gelu).__name__ if hasattr(b.mlp, "gelu") else "?",
        "layer scale": type(getattr(b, "ls_1", None)).__name__,
        "image attentional pooling": getattr(v, "attn_pool", None) is not None,
        "image norm before the blocks": type(v.ln_pre).__name__,
        "image pooling": (getattr(v, "pool_type", None), getattr(v, "final_ln_after_pool", None)),
        "text pooling": (getattr(model, "text_pool_type", None), getattr(model, "text_eos_id", None)),
        "causal text mask": getattr(model, "attn_mask", None) is not None,
        "text projection": type(getattr(model, "text_projection", None)).__name__,
        "logit bias": getattr(model, "logit_bias", None) is not None,
    }


_SUPPORTED = {"plain attention (nn.MultiheadAttention)": True, "image attentional pooling": False,
              "text projection": "Parameter"}


def _check_structure(student: nn.Module, teacher: nn.Module) -> None:
    """ValueError naming every difference between the two models' structures, or an unsupported one."""
    s, t = _structure(student), _structure(teacher)
    problems = [f"{k}: student {s[k]!r}, teacher {t[k]!r}" for k in s if s[k] != t[k]]
    problems += [f"{k}: {t[k]!r} (supported: {v!r})" for k, v in _SUPPORTED.items() if t[k] != v and s[k] == t[k]]
    if problems:
        raise ValueError("the teacher's weights would not mean the same in the student: " + "; ".join(problems))


def _heads(block: nn.Module) -> tuple[int, int]:
    attn = block.attn
    return attn.num_heads, attn.embed_dim // attn.num_heads


class _Tower:
    """One tower's residual stream: its blocks and the selections made for it."""

    def __init__(self, blocks: Sequence[nn.Module], final_norm: nn.LayerNorm, kept: Sequence[int], width: int):
        self.blocks = [blocks[i] for i in kept]
        score = final_norm.weight.detach().float().abs()
        for b in self.blocks:
            score = score + b.ln_1.weight.float().abs() + b.ln_2.weight.float().abs()
        self.channels = _top(score, width) if width < score.numel() else torch.arange(score.numel())


def _copy_norm(dst: nn.LayerNorm, src: nn.LayerNorm, idx: torch.Tensor) -> None:
    dst.weight.copy_(src.weight[idx])
    dst.bias.copy_(src.bias[idx])


def _copy_block(dst: nn.Module, src: nn.Module, ch: torch.Tensor, name: str) -> None:
    """One residual block: channels ``ch`` of the stream, the most important heads and MLP units."""
    h_s, w_s = _heads(dst)
    h_t, w_t = _heads(src)
    if w_s != w_t or h_s > h_t:
        raise ValueError(f"{name}: the student's {h_s} heads of width {w_s} cannot come from the teacher's {h_t} "
                         f"heads of width {w_t} (inheritance keeps the head width)")
    _copy_norm(dst.ln_1, src.ln_1, ch)
    _copy_norm(dst.ln_2, src.ln_2, ch)
    q = src.attn.in_proj_weight.view(3, h_t, w_t, -1)
    out = src.attn.out_proj.weight.view(-1, h_t, w_t)
    score = q.float().abs().sum(dim=(0, 2, 3)) + out.float().abs().sum(dim=(0, 2))
    heads = _top(score, h_s)
    dst.attn.in_proj_weight.copy_(q[:, heads][..., ch].reshape(3 * h_s * w_s, -1))
    dst.attn.in_proj_bias.copy_(src.attn.in_proj_bias.view(3, h_t, w_t)[:, heads].reshape(-1))
    dst.attn.out_proj.weight.copy_(out[ch][:, heads].reshape(len(ch), -1))
    dst.attn.out_proj.bias.copy_(src.attn.out_proj.bias[ch])
    fc, proj = src.mlp.c_fc, src.mlp.c_proj
    hidden = dst.mlp.c_fc.out_features
    if hidden > fc.out_features:
        raise ValueError(f"{name}: the student's MLP ({hidden} units) is wider than the teacher's ({fc.out_features})")
    units = _top(fc.weight.float().abs().sum(1) + proj.weight.float().abs().sum(0), hidden)
    dst.mlp.c_fc.weight.copy_(fc.weight[units][:, ch])
    dst.mlp.c_fc.bias.copy_(fc.bias[units])
    dst.mlp.c_proj.weight.copy_(proj.weight[ch][:, units])
    dst.mlp.c_proj.bias.copy_(proj.bias[ch])
    for scale in ("ls_1", "ls_2"):  # layer scale, where the model has it
        d, s = getattr(dst, scale, None), getattr(src, scale, None)
        if isinstance(getattr(d, "gamma", None), torch.Tensor) and isinstance(getattr(s, "gamma", None), torch.Tensor):
            d.gamma.copy_(s.gamma[ch])


def _grid(pos: torch.Tensor, source: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """A ViT's [1 + h*w, D] positional embedding (class token first) with its ``source`` grid (h, w) resized to
    ``grid``: bicubic, antialiased when it shrinks (as open_clip's ``resize_pos_embed``)."""
    cls, rest = pos[:1], pos[1:]
    rest = rest.T.reshape(1, -1, *source)
    rest = F.interpolate(rest, size=grid, mode="bicubic", antialias=True, align_corners=False)
    return torch.cat([cls, rest.reshape(rest.shape[1], -1).T])


def _copy_vision(dst: nn.Module, src: nn.Module, tower: _Tower, emb: torch.Tensor) -> None:
    ch = tower.channels
    if dst.conv1.weight.shape[2:] != src.conv1.weight.shape[2:]:
        raise ValueError(f"the student's patches ({tuple(dst.conv1.weight.shape[2:])}) differ from the teacher's "
                         f"({tuple(src.conv1.weight.shape[2:])}): patch embeddings cannot be inherited")
    dst.conv1.weight.copy_(src.conv1.weight[ch])
    dst.class_embedding.copy_(src.class_embedding[ch])
    pos = src.positional_embedding[:, ch]
    if tuple(src.grid_size) != tuple(dst.grid_size):
        pos = _grid(pos, tuple(src.grid_size), tuple(dst.grid_size))
    dst.positional_embedding.copy_(pos)
    if isinstance(src.ln_pre, nn.LayerNorm):
        _copy_norm(dst.ln_pre, src.ln_pre, ch)
    _copy_norm(dst.ln_post, src.ln_post, ch)
    dst.proj.copy_(src.proj[ch][:, emb])
    for i, (d, s) in enumerate(zip(dst.transformer.resblocks, tower.blocks)):
        _copy_block(d, s, ch, f"image layer {i}")


def _copy_text(dst: nn.Module, src: nn.Module, tower: _Tower, emb: torch.Tensor, report: InheritReport) -> None:
    ch = tower.channels
    if dst.token_embedding.weight.shape[0] != src.token_embedding.weight.shape[0]:
        raise ValueError("the student's vocabulary differs from the teacher's: token embeddings cannot be inherited")
    dst.token_embedding.weight.copy_(src.token_embedding.weight[:, ch])
    ctx = min(dst.positional_embedding.shape[0], src.positional_embedding.shape[0])
    dst.positional_embedding[:ctx].copy_(src.positional_embedding[:ctx, ch])
    if ctx < dst.positional_embedding.shape[0]:
        report.own.append(f"text positional_embedding rows {ctx}..{dst.positional_embedding.shape[0] - 1}")
    _copy_norm(dst.ln_final, src.ln_final, ch)
    dst.text_projection.copy_(src.text_projection[ch][:, emb])
    for i, (d, s) in enumerate(zip(dst.transformer.resblocks, tower.blocks)):
        _copy_block(d, s, ch, f"text layer {i}")


def _embedding_dims(student: nn.Module, teacher: nn.Module) -> torch.Tensor:
    e_s, e_t = student.visual.proj.shape[1], teacher.visual.proj.shape[1]
    if e_s > e_t:
        raise ValueError(f"the student's embedding ({e_s}) is wider than the teacher's ({e_t})")
    score = teacher.visual.proj.float().abs().sum(0) + teacher.text_projection.float().abs().sum(0)
    return _top(score, e_s) if e_s < e_t else torch.arange(e_t)


def _widths(student: nn.Module, teacher: nn.Module) -> dict[str, tuple[int, int]]:
    out = {"image": (student.visual.conv1.out_channels, teacher.visual.conv1.out_channels),
           "text": (student.token_embedding.weight.shape[1], teacher.token_embedding.weight.shape[1]),
           "embedding": (student.visual.proj.shape[1], teacher.visual.proj.shape[1])}
    for name, (s, t) in out.items():
        if s > t:
            raise ValueError(f"the student's {name} width ({s}) is larger than the teacher's ({t})")
    return out


@torch.no_grad()
def inherit_from(student: nn.Module, teacher: nn.Module, image_layers: Optional[Sequence[int]] = None,
                 text_layers: Optional[Sequence[int]] = None) -> InheritReport:
    """Overwrite the open_clip ViT CLIP ``student``'s weights with the ``teacher``'s (module docstring), in place.

    ``image_layers`` / ``text_layers``: the teacher layer each student layer takes (default :func:`evenly_spaced`).
    Raises ValueError, naming what does not map, for any other pair: a CNN or timm tower, a wider student (residual
    stream, MLP, embedding), other patches, head widths or vocabularies, or structures whose weights would mean
    something else (block type, activation, layer scale, pooling, causal mask, logit bias, attentional pooling).
    """
    _check_vit_clip(student, "student")
    _check_vit_clip(teacher, "teacher")
    _check_structure(student, teacher)
    report = InheritReport(widths=_widths(student, teacher))
    towers = {}
    for name, s_blocks, t_blocks in (("image", student.visual.transformer.resblocks,
                                      teacher.visual.transformer.resblocks),
                                     ("text", student.transformer.resblocks, teacher.transformer.resblocks)):
        chosen = image_layers if name == "image" else text_layers
        kept = list(chosen) if chosen is not None else evenly_spaced(len(s_blocks), len(t_blocks))
        if len(kept) != len(s_blocks) or not all(0 <= i < len(t_blocks) for i in kept):
            raise ValueError(f"{name} layers {kept}: the student has {len(s_blocks)} layers, the teacher "
                             f"{len(t_blocks)} (one teacher layer index, 0..{len(t_blocks) - 1}, per student layer)")
        final = teacher.visual.ln_post if name == "image" else teacher.ln_final
        towers[name] = _Tower(t_blocks, final, kept, report.widths[name][0])
        setattr(report, f"{name}_layers", kept)
    emb = _embedding_dims(student, teacher)
    _copy_vision(student.visual, teacher.visual, towers["image"], emb)
    _copy_text(student, teacher, towers["text"], emb, report)
    student.logit_scale.copy_(teacher.logit_scale)
    if getattr(teacher, "logit_bias", None) is not None:  # both have one (checked)
        student.logit_bias.copy_(teacher.logit_bias)
    return report
