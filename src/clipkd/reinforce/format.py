"""Sidecar shards: one safetensors file per data shard, row ``i`` = record ``i`` of that shard (file order).

Tensors (n records, K views, D the teacher's embedding size, ``t`` the teacher's index in an ensemble):

* ``fingerprint`` uint8 [n, 16] - :func:`clipkd.reinforce.fingerprint.fingerprint` of the record;
* ``usable`` uint8 [n] - 1, or 0 for a record training skips (its other rows are zero);
* ``crop`` int32 [n, K, 4] - each view's crop box ``(top, left, height, width)``;
* ``teacher<t>.image`` [n, K, D], ``teacher<t>.text`` [n, D] - normalised embeddings (bf16, fp16 or fp32);
* ``teacher<t>.scale`` float32 [1] - the teacher's logit-scale multiplier;
* ``teacher<t>.bias`` float32 [1] - the logit bias of a sigmoid teacher (SigLIP); absent for a softmax one.

Metadata: one key, ``clipkd``, holding JSON: format version, index, the data shard it mirrors (``source``:
URL, or the CSV rows ``start``-``stop``), ``records``, ``views``, ``dtype``, ``usable`` and the ``unusable``
count per reason.
"""

from __future__ import annotations

import json
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

META_KEY = "clipkd"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def sidecar_name(index: int) -> str:
    return f"sidecar-{index:05d}.safetensors"


def image_field(teacher: int) -> str:
    return f"teacher{teacher}.image"


def text_field(teacher: int) -> str:
    return f"teacher{teacher}.text"


def scale_field(teacher: int) -> str:
    return f"teacher{teacher}.scale"


def bias_field(teacher: int) -> str:
    return f"teacher{teacher}.bias"


def sidecar_bytes(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """The safetensors bytes of a sidecar (deterministic: equal tensors and metadata give equal bytes)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()},
                metadata={META_KEY: json.dumps(meta, sort_keys=True)})


@dataclass
class SidecarRecord:
    """One record's stored fields; ``images[t]`` is [K, D], ``texts[t]`` is [D] for teacher ``t``."""

    fingerprint: bytes
    usable: bool
    crops: list[tuple[int, int, int, int]]
    images: list[torch.Tensor]
    texts: list[torch.Tensor]
    scales: list[float]
    biases: list[Optional[float]]


_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "U8": torch.uint8,
                       "I32": torch.int32, "I64": torch.int64}


class _Mapped:
    """One sidecar file, memory-mapped once, with each tensor's dtype, shape and byte offset read from its header:
    a row of any field is then one slice of the map (no per-field handles, no header parsed per read)."""

    def __init__(self, path: Path):
        import mmap

        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
            self.data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.metadata = header.pop("__metadata__", None) or {}
        unknown = sorted({h["dtype"] for h in header.values()} - set(_SAFETENSORS_DTYPES))
        if unknown or sys.byteorder != "little":  # safetensors stores little-endian data
            raise ValueError(f"{path}: cannot map rows of dtype {unknown} on a {sys.byteorder}-endian machine")
        self.tensors = {name: (_SAFETENSORS_DTYPES[h["dtype"]], tuple(h["shape"]), 8 + size + h["data_offsets"][0])
                        for name, h in header.items()}

    def row(self, name: str, index: int, view: Optional[int] = None) -> torch.Tensor:
        dtype, shape, start = self.tensors[name]
        if not 0 <= index < shape[0]:
            raise IndexError(f"row {index} out of range for {name} of {shape[0]} rows")
        if view is not None and not 0 <= view < shape[1]:
            raise IndexError(f"view {view} out of range for {name} of {shape[1]} views")
        inner = shape[1:] if view is None else shape[2:]
        width = dtype.itemsize * (math.prod(inner) if inner else 1)
        offset = start + index * dtype.itemsize * math.prod(shape[1:]) + (0 if view is None else view * width)
        return torch.frombuffer(bytearray(self.data[offset:offset + width]), dtype=dtype).reshape(inner)


class SidecarReader:
    """Reads single records from sidecar files without loading them: each file memory-mapped once (at most
    ``max_open`` at a time, the least recently used closed first), a field's row one slice of the map."""

    def __init__(self, folder: Union[str, Path], files: Sequence[str], max_open: int = 64):
        self.folder, self.files, self.max_open = Path(folder), list(files), max(1, max_open)
        self._mapped: OrderedDict[int, _Mapped] = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def _path(self, sidecar: int) -> Path:
        if not 0 <= sidecar < len(self.files):
            raise IndexError(f"sidecar {sidecar} out of range: the cache has {len(self.files)}")
        path = self.folder / self.files[sidecar]
        if not path.is_file():
            raise FileNotFoundError(f"sidecar file missing: {path}")
        return path

    def _map(self, sidecar: int) -> _Mapped:
        if sidecar in self._mapped:
            self._mapped.move_to_end(sidecar)
            return self._mapped[sidecar]
        self._mapped[sidecar] = _Mapped(self._path(sidecar))
        while len(self._mapped) > self.max_open:
            self._mapped.popitem(last=False)[1].data.close()
        return self._mapped[sidecar]

    def meta(self, sidecar: int) -> dict[str, Any]:
        return json.loads(self._map(sidecar).metadata[META_KEY])

    def num_records(self, sidecar: int) -> int:
        return self._map(sidecar).tensors["usable"][1][0]

    def num_teachers(self, sidecar: int) -> int:
        return sum(1 for k in self._map(sidecar).tensors if k.endswith(".image"))

    def row(self, sidecar: int, name: str, index: int, view: Optional[int] = None) -> torch.Tensor:
        """Row ``index`` of tensor ``name`` (only that row is read; with ``view``, only that view of it)."""
        return self._map(sidecar).row(name, index, view)

    def record(self, sidecar: int, index: int) -> SidecarRecord:
        """Record ``index`` of sidecar ``sidecar`` (only its rows are read)."""
        n = self.num_records(sidecar)
        if not 0 <= index < n:
            raise IndexError(f"record {index} out of range: {self.files[sidecar]} holds {n}")

        def row(name: str) -> torch.Tensor:
            return self.row(sidecar, name, index)

        teachers = range(self.num_teachers(sidecar))
        return SidecarRecord(
            fingerprint=bytes(row("fingerprint").tolist()), usable=bool(row("usable").item()),
            crops=[tuple(box) for box in row("crop").tolist()],
            images=[row(image_field(t)) for t in teachers], texts=[row(text_field(t)) for t in teachers],
            scales=[float(self.row(sidecar, scale_field(t), 0)) for t in teachers],
            biases=[float(self.row(sidecar, bias_field(t), 0)) if bias_field(t) in self._map(sidecar).tensors
                    else None for t in teachers])
