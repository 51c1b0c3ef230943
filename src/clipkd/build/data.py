"""Config -> data: the training source and stream of one process, and the stored views of reinforced data."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Optional

from clipkd.build.models import teacher_in_use
from clipkd.build.preflight import open_teacher_cache
from clipkd.config import DataConfig, TrainConfig
from clipkd.data.sources import CsvSource, ShardSource, Source
from clipkd.data.stream import DistillStream
from clipkd.data.views import PairedViews
from clipkd.distill import Distiller
from clipkd.errors import ConfigError

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clipkd.reinforce.replay import ReinforcedViews


def build_source(dc: DataConfig) -> Source:
    if dc.format == "csv":
        if not isinstance(dc.train, str):
            raise ValueError("data.train: a CSV source takes one file path")
        return CsvSource(dc.train, dc.csv_img_key, dc.csv_caption_key, dc.csv_separator, dc.root)
    return ShardSource(dc.train, dc.shuffle_buffer, dc.num_samples)


def build_stream(dc: DataConfig, distiller: Distiller, seed: int, rank: int = 0,
                 world_size: int = 1, batches_per_split: Optional[int] = None,
                 stored: Optional["ReinforcedViews"] = None) -> DistillStream:
    """The training batch stream for one process, each side with its own views and tokenizer (held-out pairs:
    :func:`clipkd.build.hooks.val_loss_hook`); with ``stored`` views, the student's view replays a
    stored crop and the batch carries the teacher's stored embeddings."""
    views = paired_views(dc, distiller)
    return DistillStream(build_source(dc), views, dc.batch_size, seed=seed, rank=rank, world_size=world_size,
                         workers=dc.workers, batches_per_split=batches_per_split,
                         max_skip_fraction=dc.max_skip_fraction, max_image_pixels=dc.max_image_pixels, stored=stored)


def paired_views(dc: DataConfig, distiller: Distiller) -> PairedViews:
    """Both sides' views as ``dc`` says; views made on the device fall back to the host's (with a warning) when a
    side's preprocessing has no tensor form."""
    make = partial(PairedViews, *distiller.view_encoders, dc.crop_scale, reduced_decode=dc.decode == "reduced")
    if dc.preprocess == "device":
        try:
            return make(on_device=True)
        except ValueError as exc:
            log.warning("%s: views made on the host", exc)
    return make(on_device=False)


def stored_views(cfg: TrainConfig, checked: Optional[dict] = None) -> Optional["ReinforcedViews"]:
    """The stored views training reads instead of running the teacher, or None without a teacher cache (or when
    no loss term uses the teacher). Raises :class:`ConfigError` for a cache that does not fit the run.

    ``checked``: the manifest :func:`clipkd.build.preflight.preflight` returned (already compared with the run: not compared again).
    """
    if not (teacher_in_use(cfg) and cfg.distill.teacher_cache):
        return None
    from clipkd.reinforce.replay import ReinforcedViews, ViewChoice

    manifest, problems = (checked, []) if checked is not None else open_teacher_cache(cfg)
    if problems or manifest is None:
        raise ConfigError("distill.teacher_cache: the cache does not fit this run:\n" +
                          "\n".join(f"  {p}" for p in problems))
    d = cfg.distill
    return ReinforcedViews(d.teacher_cache, manifest, ViewChoice(d.cache_views or manifest["views"], d.view_order,
                                                                 cfg.seed))
