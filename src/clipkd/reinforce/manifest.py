"""``manifest.json``: what a finished reinforce build holds, and the receipts it is assembled from.

A receipt (``done/sidecar-XXXXX.json``) is written after its sidecar, by the process that built it: the data it
mirrors, its record counts and the sidecar's SHA-256. Rank 0 joins them, with the settings and the teachers'
descriptions, into the manifest:

``format``, ``format_version``, ``build_sha256`` (the settings' digest, also in every sidecar's metadata),
``clipkd_version``, ``open_clip_version``, ``views``, ``dtype``, ``seed``,
``crop_scale``, ``batch_size``, ``max_image_pixels``; ``teachers``: per teacher ``model`` (the name; ``local-dir:``,
``hf-hub:`` or ``model-config.json`` for those, whose content is in the next two), ``name``, ``pretrained``,
``weights`` (:func:`clipkd.identity.weights_identity`: ``sha256:`` of the file, ``folder-sha256:``,
``hf-hub:sha256:``, ``tag:`` or ``random``), ``model_config_sha256``,
``image_mean``/``image_std`` overrides, ``image_size``, ``preprocess`` (repr of ``preprocess_val``),
``tokenizer`` (class, context length, vocabulary SHA-256), ``embed_dim``, ``logit_scale`` (the multiplier
``exp(logit_scale)`` as training applies it, at most 100); ``data``: the data
identity (shard list, or CSV path, SHA-256, rows and rows per sidecar) and ``sidecars``: per sidecar its
``source`` (and CSV ``start``/``stop``, or a local shard's ``data_bytes`` and ``data_digest``),
``records``, ``usable``, ``unusable`` reasons, ``file``, ``file_bytes``, ``sha256``; totals ``records``,
``usable``, ``unusable``. Every unusable reason but ``shard_error`` (a broken shard: no row) is one row.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from clipkd.files import read_json, sha256_file, write_json
from clipkd.reinforce.format import SidecarReader
from clipkd.reinforce.plan import SidecarSpec
from clipkd.reinforce.settings import MANIFEST_FILE, RECEIPTS_DIR, build_digest


def receipt_path(out: Path, spec: SidecarSpec) -> Path:
    return out / RECEIPTS_DIR / (Path(spec.file).stem + ".json")


def make_receipt(out: Path, spec: SidecarSpec, records: int, usable: int, unusable: dict[str, int]
                 ) -> dict[str, Any]:
    """The manifest entry of a sidecar just written (its file is hashed here, while it is in the page cache)."""
    file = out / spec.file
    return {**spec.describe(), "records": records, "usable": usable, "unusable": dict(sorted(unusable.items())),
            "file": spec.file, "file_bytes": file.stat().st_size, "sha256": sha256_file(file)}


def finished(out: Path, spec: SidecarSpec) -> bool:
    """Whether a sidecar is built and current: its receipt exists, its file has the size the receipt says, and the
    data it mirrors is the same (source, CSV rows, a local shard's size and quick digest): a shard replaced under
    the same name since is built again."""
    receipt, file = receipt_path(out, spec), out / spec.file
    if not (receipt.is_file() and file.is_file()):
        return False
    saved = read_json(receipt)
    return saved.get("file_bytes") == file.stat().st_size and all(saved.get(k) == v for k, v in spec.describe().items())


def write_manifest(out: Path, settings: dict[str, Any], teachers: Sequence[dict[str, Any]],
                   specs: Sequence[SidecarSpec]) -> dict[str, Any]:
    """Join the receipts of every sidecar into ``manifest.json`` (atomically) and return it."""
    import open_clip

    from clipkd import __version__

    entries = [read_json(receipt_path(out, s)) for s in specs]
    unusable: Counter[str] = Counter()
    for e in entries:
        unusable.update(e["unusable"])
    manifest = {**settings, "build_sha256": build_digest(settings), "clipkd_version": __version__,
                "open_clip_version": open_clip.__version__,
                "teachers": list(teachers), "data": {**settings["data"], "sidecars": entries},
                "records": sum(e["records"] for e in entries), "usable": sum(e["usable"] for e in entries),
                "unusable": dict(sorted(unusable.items()))}
    write_json(out / MANIFEST_FILE, manifest)
    return manifest


def load_manifest(folder: Union[str, Path]) -> dict[str, Any]:
    """The manifest of a finished build; ``FileNotFoundError`` naming the folder when there is none."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST_FILE} (not a finished `clipkd reinforce` build; re-run the "
                                "same command to finish it)")
    return read_json(path)


def open_reader(folder: Union[str, Path], manifest: Optional[dict[str, Any]] = None,
                max_open: int = 4) -> SidecarReader:
    """A :class:`SidecarReader` over the sidecars of a finished build."""
    manifest = manifest if manifest is not None else load_manifest(folder)
    return SidecarReader(folder, [e["file"] for e in manifest["data"]["sidecars"]], max_open)
