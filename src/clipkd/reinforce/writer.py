"""One sidecar: its records in file order, in fixed batches, through the teacher; written atomically, then its
receipt (:mod:`clipkd.reinforce.manifest`). Asked to stop (``stop_requested()``), it drops the sidecar in progress
before its next batch (:class:`Stopped`): nothing of it was written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from clipkd.data.sources import RawSample
from clipkd.files import write_atomic, write_json
from clipkd.models.encoders import ClipEncoder
from clipkd.reinforce.encode import SidecarArrays, encode_rows
from clipkd.reinforce.format import DTYPES, sidecar_bytes
from clipkd.reinforce.manifest import make_receipt, receipt_path
from clipkd.reinforce.plan import SidecarSpec
from clipkd.reinforce.rows import PreparedRow, ViewSpec, prepare_row
from clipkd.reinforce.settings import FORMAT_VERSION

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The build was asked to stop; the sidecar in progress was dropped."""


class SidecarWriter:
    """Builds sidecars into ``out`` with fixed settings (views, dtype, batch size, teachers, device)."""

    def __init__(self, out: Path, teachers: Sequence[ClipEncoder], spec: ViewSpec, dtype: str, batch_size: int,
                 device: Any, progress: Optional[Any] = None, stop_requested: Callable[[], bool] = lambda: False,
                 build: str = ""):
        self.out, self.teachers, self.spec, self.dtype, self.build = out, list(teachers), spec, dtype, build
        self.batch_size, self.device, self.progress = batch_size, device, progress
        self.stop_requested = stop_requested

    def _flush(self, arrays: SidecarArrays, batch: list[PreparedRow]) -> None:
        if batch:
            if self.stop_requested():
                raise Stopped()
            arrays.add(batch, encode_rows(batch, self.teachers, self.device))
            if self.progress is not None:
                self.progress.update(len(batch))
            batch.clear()

    def write(self, sidecar: SidecarSpec, records: Iterable[RawSample]) -> int:
        """Build, write and receipt ``sidecar`` from its ``records``; returns how many rows it holds."""
        arrays = SidecarArrays(self.spec.views, [t.embed_dim for t in self.teachers], DTYPES[self.dtype])
        batch: list[PreparedRow] = []
        for raw in records:
            if raw.error == "shard_error":  # the rest of a broken shard: counted, not a row
                log.warning("%s: %s", sidecar.source, raw.key)
                arrays.count("shard_error")
                continue
            batch.append(prepare_row(raw, self.teachers, self.spec))
            if len(batch) == self.batch_size:
                self._flush(arrays, batch)
        self._flush(arrays, batch)
        tensors = arrays.tensors([float(t.scale()) for t in self.teachers],
                                 [None if t.bias() is None else float(t.bias()) for t in self.teachers])
        rows, usable = int(tensors["usable"].shape[0]), int(tensors["usable"].sum())
        reasons = dict(sorted(arrays.reasons.items()))
        meta = {"format_version": FORMAT_VERSION, "index": sidecar.index, **sidecar.describe(), "records": rows,
                "usable": usable, "unusable": reasons, "views": self.spec.views, "dtype": self.dtype,
                "build": self.build}  # the build's settings digest: a sidecar of another build is told apart
        write_atomic(self.out / sidecar.file, sidecar_bytes(tensors, meta))
        write_json(receipt_path(self.out, sidecar), make_receipt(self.out, sidecar, rows, usable, reasons))
        return rows
