"""The demo teacher: frozen pretrained towers, heads trained contrastively (LiT) on the demo's teacher split.

The towers are frozen, so their features are computed once per training pair and the heads train on those
features in seconds. The students then train from reinforced data (:mod:`clipkd.reinforce`): the teacher's
embeddings of K augmented views per sample, stored once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from clipkd.data.decode import open_image
from clipkd.data.sources import RawSample, ShardSource
from clipkd.engine.optim import clamp_logit_scales
from clipkd.identity import data_file_digest
from clipkd.losses.functional import clip_loss
from clipkd.models.composite import DEFAULT_IMAGE_SIZE, CompositeEncoder, create_lit_encoder, save_heads

log = logging.getLogger(__name__)


def read_records(shards: Sequence[str]) -> list[RawSample]:
    """Every record of the shards, keyed exactly as the training stream keys them."""
    return [r for r in ShardSource(list(shards)).records() if r.error is None and r.image is not None]


@torch.inference_mode()
def tower_features(enc: CompositeEncoder, records: Sequence[RawSample], batch: int = 128):
    """Frozen-tower features of every (image, caption): ``[N, 1280]``, ``[N, 384]``. Captions repeat (templates
    over classes), so each distinct caption goes through the text tower once."""
    img = []
    for i in tqdm(range(0, len(records), batch), desc="teacher features", leave=False):
        images = torch.stack([enc.preprocess_val(open_image(r.image)) for r in records[i : i + batch]])
        img.append(enc.image_features(images))
    captions = sorted({r.caption for r in records})
    row = {c: i for i, c in enumerate(captions)}
    unique = torch.cat([enc.text_features(enc.tokenize(captions[i : i + batch]))
                        for i in range(0, len(captions), batch)])
    return torch.cat(img), unique[torch.tensor([row[r.caption] for r in records], dtype=torch.long)]


def fit_heads(enc: CompositeEncoder, img_f: torch.Tensor, txt_f: torch.Tensor, steps: int, batch: int = 256,
              lr: float = 1e-3, seed: int = 0) -> list[float]:
    """LiT: train the two heads and the logit scale with the CLIP loss on frozen-tower features."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in enc.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    losses = []
    for _ in tqdm(range(steps), desc="teacher heads (LiT)", leave=False):
        idx = torch.randperm(img_f.shape[0], generator=g)[:batch]
        img = torch.nn.functional.normalize(enc.image_head(img_f[idx]), dim=-1)
        txt = torch.nn.functional.normalize(enc.text_head(txt_f[idx]), dim=-1)
        loss = clip_loss(img, txt, enc.scale())
        opt.zero_grad()
        loss.backward()
        opt.step()
        clamp_logit_scales(enc)
        losses.append(loss.item())
    return losses


def teacher_params(train_shards: Sequence[str], steps: int, seed: int, image_size: int) -> dict:
    """What a trained teacher depends on: its data by content (the same shards under another path, e.g. relative
    then absolute, are the same data), its steps, seed and resolution."""
    return {"shards": [data_file_digest(s) for s in train_shards], "steps": steps, "seed": seed,
            "image_size": image_size}


def build_teacher(out_dir: Path, train_shards: Sequence[str], steps: int, seed: int = 0,
                  image_size: int = DEFAULT_IMAGE_SIZE):
    """Train (or reuse) the teacher heads at ``image_size``; return (encoder, heads path, pairs learnt from)."""
    out_dir = Path(out_dir)
    heads, manifest = out_dir / "heads.safetensors", out_dir / "teacher.json"
    params = teacher_params(train_shards, steps, seed, image_size)
    saved = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if saved.get("params") == params and "pairs" in saved and heads.is_file():
        log.info("reusing the trained teacher in %s", out_dir)
        return create_lit_encoder(heads=heads), heads, saved["pairs"]
    torch.manual_seed(seed)
    enc = create_lit_encoder(image_size=image_size)
    img_f, txt_f = tower_features(enc, read_records(train_shards))
    losses = fit_heads(enc, img_f, txt_f, steps, seed=seed)
    save_heads(enc, heads)
    manifest.write_text(json.dumps({"params": params, "pairs": len(img_f), "loss_first": losses[0],
                                    "loss_last": losses[-1]}, indent=2))
    return enc, heads, len(img_f)
