"""Training from reinforced data (``distill.teacher_cache``): each record's stored view, replayed for the student.

For every record the training stream reads, :meth:`ReinforcedViews.decode` checks its content fingerprint against
the one stored for it (a mismatch stops training with :class:`~clipkd.errors.CacheMismatch`, naming the record),
picks the view of this epoch (:meth:`ReinforcedViews.pick`), replays that view's stored crop box through the
student's own preprocessing, and attaches the teacher's stored embeddings of that view. No teacher is built.
Sidecars are memory-mapped and read row by row (:class:`~clipkd.reinforce.format.SidecarReader`), in each loader
worker separately: memory does not grow with the dataset.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch

from clipkd.data.decode import UnusableImage, open_for, unusable_reason
from clipkd.data.sources import RawSample
from clipkd.data.stages import stage
from clipkd.data.views import CachedTeacher, PairedViews, SampleViews
from clipkd.embeddings import join_biases
from clipkd.errors import CacheMismatch
from clipkd.reinforce.check import fingerprint_problem
from clipkd.reinforce.fingerprint import fingerprint
from clipkd.reinforce.format import SidecarReader, image_field, text_field
from clipkd.reinforce.rows import record_bytes

ViewOrder = Literal["cycle", "random"]


@dataclass(frozen=True)
class ViewChoice:
    """Which stored view a record uses in an epoch: the first ``views`` of those stored; ``cycle``: view
    ``epoch mod views``; ``random``: drawn from (seed, epoch, the record's fingerprint)."""

    views: int
    order: ViewOrder = "cycle"
    seed: int = 0

    def pick(self, epoch: int, fp: bytes) -> int:
        if self.order == "cycle":
            return epoch % self.views
        return random.Random(f"clipkd-view-pick:{self.seed}:{epoch}:{fp.hex()}").randrange(self.views)


class ReinforcedViews:
    """The stored views of a finished ``clipkd reinforce`` build, for the training stream.

    ``manifest``: the build's manifest (already checked against the run by
    :func:`~clipkd.reinforce.check.manifest_problems`); ``choice``: which view each epoch uses.
    """

    def __init__(self, folder: Union[str, Path], manifest: dict[str, Any], choice: ViewChoice):
        self.folder, self.choice = Path(folder), choice
        self.files = [e["file"] for e in manifest["data"]["sidecars"]]
        data = manifest["data"]
        self.rows_per_shard: Optional[int] = data.get("rows_per_shard") if data["format"] == "csv" else None
        self.embed_dims = [int(t["embed_dim"]) for t in manifest["teachers"]]
        scales = torch.tensor([t["logit_scale"] for t in manifest["teachers"]])  # as each sidecar stores them
        self.scale = scales[0] if len(scales) == 1 else scales
        biases = join_biases([t.get("logit_bias") for t in manifest["teachers"]], like=scales)  # None: softmax
        self.bias = biases if biases is None or len(biases) > 1 else biases[0]
        self._reader: Optional[SidecarReader] = None

    def __getstate__(self) -> dict[str, Any]:  # loader workers open their own memory maps
        return {**self.__dict__, "_reader": None}

    @property
    def reader(self) -> SidecarReader:
        if self._reader is None:
            self._reader = SidecarReader(self.folder, self.files)
        return self._reader

    def locate(self, origin: tuple[int, int]) -> tuple[int, int]:
        """(sidecar, row) of a record's origin: its shard and index, or its CSV row."""
        part, index = origin
        return divmod(index, self.rows_per_shard) if self.rows_per_shard else (part, index)

    def decode(self, raw: RawSample, views: PairedViews, epoch: int,
               max_pixels: Optional[int] = None) -> Union[SampleViews, str]:
        """The student's view of ``raw`` replayed from its stored crop, with the teacher's stored embeddings; or
        why the record is unusable (the same reasons as training without a cache)."""
        reason = unusable_reason(raw)
        if raw.origin is None:  # a broken shard's error record: not a row of any sidecar
            return reason or "shard_error"
        with stage("sidecar"):
            data, problem = record_bytes(raw)
            fp = fingerprint(data, raw.caption)
            sidecar, row = self._checked_row(raw, fp)
        if reason or problem:
            return reason or problem  # type: ignore[return-value]
        with stage("sidecar"):
            usable = bool(self.reader.row(sidecar, "usable", row).item())
            view = self.choice.pick(epoch, fp)
            crop = tuple(self.reader.row(sidecar, "crop", row, view).tolist())
            teacher = self._teacher(sidecar, row, view)
        try:
            with stage("decode"):  # the stored box is in the source's pixels: a reduced decode maps it
                image, scale = open_for(views, data, lambda opened: crop, max_pixels)
        except UnusableImage as exc:
            return exc.reason
        except Exception:  # noqa: BLE001 - any other decoder failure: skipped and counted, as without a cache
            return "bad_image"
        if not usable:
            raise CacheMismatch(f"{raw.describe()}: usable now, but the cache holds no view of it (sidecar "
                                f"{sidecar}, record {row}: unusable when it was built); rebuild the cache")
        out = views.at(image, raw.caption, crop, scale)
        out.key, out.teacher = raw.key, teacher
        return out

    def _checked_row(self, raw: RawSample, fp: bytes) -> tuple[int, int]:
        sidecar, row = self.locate(raw.origin)  # type: ignore[arg-type]
        problem = fingerprint_problem(self.reader, sidecar, row, raw, fp)
        if problem:
            raise CacheMismatch(f"{problem}; rebuild the cache with `clipkd reinforce`")
        return sidecar, row

    def _teacher(self, sidecar: int, row: int, view: int) -> CachedTeacher:
        r, teachers = self.reader, range(len(self.embed_dims))
        img = [r.row(sidecar, image_field(t), row, view).float() for t in teachers]
        txt = [r.row(sidecar, text_field(t), row).float() for t in teachers]
        return CachedTeacher(torch.cat(img), torch.cat(txt), self.scale, self.bias)
