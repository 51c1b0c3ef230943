"""Image-text retrieval: embed every image and caption, then recall@K in both directions (chunked)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader

from clipkd.eval.datasets import CaptionedImages, account_unusable, collate_usable
from clipkd.eval.retrieval_metrics import first_caption_only, retrieval_recall
from clipkd.eval.zeroshot import embed_images
from clipkd.models.encoders import ClipEncoder, eval_mode


@torch.inference_mode()
def embed_captions(encoder: ClipEncoder, captions: Sequence[str], device: Union[str, torch.device],
                   batch_size: int = 256) -> torch.Tensor:
    """Normalised text embeddings, tokenised with the encoder's own tokenizer, in batches.

    Each distinct caption text is embedded once and shared by all its copies, so identical captions get
    bit-identical embeddings (a tower's output for one text can differ in the last bits with its position in a
    batch) and tie exactly in retrieval, on every machine."""
    distinct = list(dict.fromkeys(captions))
    out = []
    for i in range(0, len(distinct), batch_size):
        tokens = encoder.tokenize(distinct[i : i + batch_size])
        tokens = tokens.to(device) if isinstance(tokens, torch.Tensor) else {k: v.to(device) for k, v in tokens.items()}
        out.append(encoder.encode_text(tokens).float())
    row = {text: i for i, text in enumerate(distinct)}
    index = torch.tensor([row[c] for c in captions], dtype=torch.long)
    return torch.cat(out)[index.to(out[0].device)] if out else torch.empty(0)


def evaluate_retrieval(encoder: ClipEncoder, data: CaptionedImages, device: Union[str, torch.device] = "cpu",
                       batch_size: int = 256, workers: int = 0, first_caption: bool = False,
                       ks: Sequence[int] = (1, 5, 10),
                       unusable: Optional[list[tuple[int, str]]] = None, name: str = "retrieval set"
                       ) -> dict[str, float]:
    """Recall@K both ways. Standard protocol: every caption is a query and an image succeeds if any of its
    captions is retrieved. ``first_caption=True``: only each image's first caption (the official CLIP-KD code).

    An image that cannot be decoded is left out with all its captions (the metrics are those of the usable
    images); its ``(index, reason)`` is appended to ``unusable`` when given. No usable image:
    :class:`~clipkd.errors.DataQualityError` naming the first (and ``name``, the benchmark).
    """
    bad: list[tuple[int, str]] = []
    with eval_mode(encoder):
        loader = DataLoader(data.image_dataset(encoder.preprocess_val, skip_unusable=True), batch_size=batch_size,
                            num_workers=workers, collate_fn=collate_usable)
        img, _ = embed_images(encoder, loader, device, bad)
        if unusable is not None:
            unusable.extend(bad)
        account_unusable(name, data.names, data.skipped, bad)  # raises when no image is usable
        kept_images, kept_captions = data.without([i for i, _ in bad])
        position, owners = {image: row for row, image in enumerate(kept_images)}, data.text_to_image.tolist()
        t2i = torch.tensor([position[owners[t]] for t in kept_captions], dtype=torch.long)
        keep = first_caption_only(t2i) if first_caption else torch.arange(len(kept_captions))
        captions = [data.captions[kept_captions[i]] for i in keep.tolist()]
        txt = embed_captions(encoder, captions, device, batch_size)
    return retrieval_recall(img, txt, t2i[keep].to(img.device), ks=ks)
