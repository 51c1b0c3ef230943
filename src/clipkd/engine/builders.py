"""Config -> library objects. The only place that reads :class:`~clipkd.config.TrainConfig` sections."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from clipkd.config import DataConfig, ModelConfig, TrainConfig
from clipkd.data.sources import CsvSource, ShardSource, Source, expand_shards
from clipkd.data.stream import DistillStream
from clipkd.data.views import PairedViews
from clipkd.distill import Distiller, build_distiller
from clipkd.models.encoders import ClipEncoder
from clipkd.errors import ConfigError
from clipkd.models.factory import create_encoder, known_model


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. CUDA means GPU ``local_rank`` (one GPU per process)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def _check_model(field: str, mc: ModelConfig) -> list[str]:
    name = mc.model
    if name.endswith(".json"):
        return [] if Path(name).is_file() else [f"{field}.model: model config file not found: {name}"]
    if known_model(name):
        return []
    return [f"{field}.model: unknown model '{name}' (see `clipkd models`)"]


def _check_data(field: str, dc: DataConfig) -> list[str]:
    if dc.format == "csv":
        return [] if Path(str(dc.train)).is_file() else [f"{field}.train: CSV file not found: {dc.train}"]
    try:
        shards = expand_shards(dc.train)
    except ValueError as exc:
        return [f"{field}.train: {exc}"]
    local = [s for s in shards if "://" not in s and not s.startswith("pipe:")]
    missing = [s for s in local if not Path(s).is_file()]
    return [f"{field}.train: {len(missing)} of {len(shards)} shards not found (first: {missing[0]})"] if missing else []


def preflight(cfg: TrainConfig) -> None:
    """Checks that need the filesystem or the model registry, before anything is built or loaded."""
    problems = _check_model("teacher", cfg.teacher) + _check_model("student", cfg.student)
    problems += _check_data("data", cfg.data)
    if cfg.eval.val_data is not None:
        problems += _check_data("eval.val_data", cfg.eval.val_data)
    for field, mc in (("teacher", cfg.teacher), ("student", cfg.student)):
        if mc.pretrained and ("/" in mc.pretrained or "." in mc.pretrained) and not Path(mc.pretrained).is_file():
            problems.append(f"{field}.pretrained: checkpoint file not found: {mc.pretrained}")
    if cfg.distill.teacher_cache and not Path(cfg.distill.teacher_cache).is_file():
        problems.append(f"distill.teacher_cache: file not found: {cfg.distill.teacher_cache}")
    if problems:
        raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))


def build_encoder(mc: ModelConfig) -> ClipEncoder:
    return create_encoder(mc.model, mc.pretrained, image_mean=mc.image_mean, image_std=mc.image_std)


def build_distiller_from_config(cfg: TrainConfig) -> Distiller:
    """Teacher (frozen) and student (with the heads the configured terms need)."""
    weights, mask_ratio = cfg.distill.resolved()
    torch.manual_seed(cfg.seed)  # identical initialisation for the same seed (and on every rank)
    teacher = build_encoder(cfg.teacher)
    student = build_encoder(cfg.student)
    return build_distiller(student, teacher, weights, mask_ratio)


def build_source(dc: DataConfig) -> Source:
    if dc.format == "csv":
        if not isinstance(dc.train, str):
            raise ValueError("data.train: a CSV source takes one file path")
        return CsvSource(dc.train, dc.csv_img_key, dc.csv_caption_key, dc.csv_separator, dc.root)
    return ShardSource(dc.train, dc.shuffle_buffer, dc.num_samples)


def build_stream(dc: DataConfig, distiller: Distiller, seed: int, augment: bool = True, rank: int = 0,
                 world_size: int = 1, batches_per_split: Optional[int] = None) -> DistillStream:
    """The batch stream for one process, each side with its own views and tokenizer."""
    views = PairedViews(distiller.student.encoder, distiller.teacher.encoder, dc.crop_scale if augment else None)
    return DistillStream(build_source(dc), views, dc.batch_size, seed=seed, rank=rank, world_size=world_size,
                         workers=dc.workers, augment=augment, batches_per_split=batches_per_split)
