"""Zero-shot classification: class embeddings from prompt templates, then top-1/top-5/mean per-class recall.

Top-5 accuracy (``acc5``) is reported from :data:`ACC5_MIN_CLASSES` classes on: with at most 5 classes every
class is in the top 5, so it would be 100% whatever the model; such tasks have ``acc1`` and
``mean_per_class_recall`` only.

The classifier is open_clip's own ``build_zero_shot_classifier`` (each class: the mean of its L2-normalised
prompt embeddings, re-normalised); logits are ``100 * cosine``. It can be cached on disk, keyed by the model
and the prompts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from open_clip import build_zero_shot_classifier
from torch.utils.data import DataLoader

from clipkd.errors import DataQualityError
from clipkd.eval.datasets import UsableBatch
from clipkd.eval.prompts import template_text
from clipkd.eval.report import ACC5_MIN_CLASSES
from clipkd.eval.retrieval_metrics import tie_tolerance
from clipkd.models.encoders import ClipEncoder, eval_mode

_prompt_text = template_text


def classifier_cache_path(cache_dir: Union[str, Path], model_key: str, classnames: Sequence[str],
                          templates: Sequence) -> Path:
    """Where the classifier for this model and these prompts is cached."""
    blob = json.dumps([model_key, list(classnames), [_prompt_text(t) for t in templates]])
    return Path(cache_dir) / f"zeroshot-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.pt"


@torch.no_grad()
def zeroshot_classifier(encoder: ClipEncoder, classnames: Sequence[str], templates: Sequence,
                        device: Union[str, torch.device] = "cpu", classes_per_batch: int = 10,
                        cache_dir: Optional[Union[str, Path]] = None, model_key: Optional[str] = None) -> torch.Tensor:
    """``[D, C]`` class embeddings; loaded from / saved to ``cache_dir`` when it and ``model_key`` are given."""
    path = classifier_cache_path(cache_dir, model_key, classnames, templates) if cache_dir and model_key else None
    if path is not None and path.is_file():
        return torch.load(path, map_location=device, weights_only=True)
    with eval_mode(encoder):
        weights = build_zero_shot_classifier(encoder, encoder.tokenizer, list(classnames), list(templates),
                                             num_classes_per_batch=classes_per_batch, device=device)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(weights.cpu(), tmp)
        tmp.replace(path)
    return weights


@torch.inference_mode()
def embed_images(encoder: ClipEncoder, loader: DataLoader, device: Union[str, torch.device],
                 unusable: Optional[list[tuple[int, str]]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image embeddings and targets of every batch of ``loader``.

    Batches are ``(images, targets)``, or :class:`~clipkd.eval.datasets.UsableBatch` (a ``skip_unusable``
    dataset with :func:`~clipkd.eval.datasets.collate_usable`): then only the usable images are embedded and the
    ``(index, reason)`` of the others are appended to ``unusable``. No usable image at all: ``[0, 0]`` features.
    """
    feats, targets = [], []
    for batch in loader:
        if isinstance(batch, UsableBatch):
            if unusable is not None:
                unusable.extend(batch.unusable)
            if batch.images is None:
                continue
            images, target = batch.images, batch.targets
        else:
            images, target = batch
        feats.append(encoder.encode_image(images.to(device, non_blocking=True)).float())
        targets.append(torch.as_tensor(target))
    if not feats:
        return torch.zeros(0, 0, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.cat(feats), torch.cat(targets).to(device)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, num_classes: int,
                           tol: Union[float, torch.Tensor] = 0.0) -> dict[str, float]:
    """top-1 accuracy, top-5 accuracy (from :data:`ACC5_MIN_CLASSES` classes on; left out below) and mean
    per-class recall (classes absent from ``targets`` are left out).

    An image is right at K when fewer than K wrong classes score at least its own class's logit minus ``tol`` (a
    scalar, or one per image): ties count against it, as in retrieval, so a collapsed model scores 0, not the
    share of whichever class a sort puts first, and the figure does not depend on the machine's rounding. A NaN
    logit (a diverged model, an overflowing fp16 variant) counts against its image: never right."""
    own = logits.gather(1, targets[:, None].to(logits.device))
    tol = torch.as_tensor(tol, dtype=logits.dtype, device=logits.device).reshape(-1, 1)
    wrong = (~(logits < own - tol)).sum(dim=1) - 1  # the own class counts once; a NaN counts against the image
    hit1 = wrong < 1
    recalls = [hit1[targets == c].float().mean() for c in range(num_classes) if (targets == c).any()]
    out = {"acc1": hit1.float().mean().item()}
    if num_classes >= ACC5_MIN_CLASSES:
        out["acc5"] = (wrong < 5).float().mean().item()
    return {**out, "mean_per_class_recall": torch.stack(recalls).mean().item()}


def zeroshot_metrics(feats: torch.Tensor, targets: torch.Tensor, classifier: torch.Tensor) -> dict[str, float]:
    """Zero-shot metrics of image embeddings ``feats`` [N, D] with ``classifier`` [D, C] (logits 100 x cos),
    computed in float64 with ties up to the embeddings' rounding (:func:`clipkd.eval.retrieval_metrics.
    tie_tolerance`: ``100 (8 u + D 2^-53) |f| max|w|``)."""
    if feats.shape[0] == 0:
        raise DataQualityError("zero-shot evaluation: no usable image")
    weights = classifier.to(feats.device)
    tol = tie_tolerance(torch.promote_types(feats.dtype, weights.dtype), feats.shape[1])
    feats64, weights64 = feats.double(), weights.double()
    scale = 100.0 * tol * feats64.norm(dim=1) * weights64.norm(dim=0).max()
    return classification_metrics(100.0 * feats64 @ weights64, targets, classifier.shape[1], scale)


def zeroshot_evaluate(encoder: ClipEncoder, loader: DataLoader, classifier: torch.Tensor,
                      device: Union[str, torch.device] = "cpu",
                      unusable: Optional[list[tuple[int, str]]] = None) -> dict[str, float]:
    """Zero-shot metrics of ``encoder`` on ``loader`` (images, class index) with ``classifier`` [D, C].

    ``unusable``: see :func:`embed_images` (metrics are those of the usable images).
    """
    with eval_mode(encoder):
        feats, targets = embed_images(encoder, loader, device, unusable)
    return zeroshot_metrics(feats, targets, classifier)
