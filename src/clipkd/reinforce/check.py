"""Is a reinforced cache still valid for a run? :func:`manifest_problems` compares the manifest with the run's
teachers, data and K without building anything; :func:`fingerprint_problem` checks one record's content.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional, Sequence

from clipkd.config import DataConfig, ModelConfig
from clipkd.data.sources import RawSample, expand_shards
from clipkd.files import quick_digest, sha256_file
from clipkd.identity import IdentityUnavailable, config_identity
from clipkd.reinforce.format import SidecarReader
from clipkd.reinforce.plan import shard_location
from clipkd.reinforce.rows import record_fingerprint
from clipkd.reinforce.settings import FORMAT_VERSION

log = logging.getLogger(__name__)

_TEACHER_FIELDS = {"model": "model", "weights": "weights", "model_config_sha256": "model config (architecture or "
                   "preprocessing settings)", "image_mean": "preprocessing: image_mean", "image_std":
                   "preprocessing: image_std"}


def _teacher_problems(i: int, saved: dict[str, Any], mc: ModelConfig) -> list[str]:
    from clipkd.models.open_clip_adapter import has_logit_bias

    where = f"teacher {i} ({mc.model})"
    try:
        now = config_identity(mc)
    except IdentityUnavailable as exc:  # training from the cache needs no teacher: nothing to compare here
        log.warning("%s: %s; its files are not here to compare by content with the teacher that built the cache "
                    "(weights %s): training uses the stored embeddings as they are", where, exc, saved.get("weights"))
        return []
    out = [f"{where}: {label}: {saved.get(key)} in the cache, {now[key]} now"
           for key, label in _TEACHER_FIELDS.items() if saved.get(key) != now[key]]
    if any(k.startswith(("image_", "model_config")) for k in now if saved.get(k) != now[k]):
        out.append(f"{where}: the cache was built with preprocessing {' '.join(saved.get('preprocess', '').split())}")
    if "logit_bias" not in saved and has_logit_bias(mc.model):
        out.append(f"{where}: a sigmoid model, but the cache was built before clipkd stored a teacher's logit bias; "
                   "rebuild it with `clipkd reinforce`")
    return out



def _shard_problem(i: int, entry: dict[str, Any], url: str) -> Optional[str]:
    """Whether shard ``i`` of the run (``url``) is the one sidecar ``entry`` mirrors: by size and quick digest when
    the cache saw a local file (the same shard moved elsewhere fits), by URL otherwise."""
    now = shard_location(url)
    if "data_bytes" not in entry:  # not a local file when built: its URL names it (fingerprints check records)
        return None if now == shard_location(entry["source"]) else \
            f"data.train: shard {i} is {now}, the cache was built from {entry['source']}"
    path = Path(url)
    if not path.is_file():
        return f"data shard {now}: missing (shard {i}; the cache was built from {entry['source']})"
    if path.stat().st_size != entry["data_bytes"] or quick_digest(path) != entry["data_digest"]:
        return f"data shard {now}: replaced or changed since the cache was built (shard {i}: {entry['source']})"
    return None


def _shard_problems(data: dict[str, Any], dc: DataConfig) -> list[str]:
    """The run's shards against the cache's, in order and by content (a local shard: size and quick digest)."""
    shards, entries = expand_shards(dc.train), data["sidecars"]
    if len(shards) != len(entries):
        return [f"data.train: {len(shards)} shards now, the cache mirrors {len(entries)}"]
    found = [_shard_problem(i, e, u) for i, (e, u) in enumerate(zip(entries, shards))]
    return [p for p in found if p]


def _csv_problems(data: dict[str, Any], dc: DataConfig) -> list[str]:
    path = Path(str(dc.train))
    fields = {"img_key": dc.csv_img_key, "caption_key": dc.csv_caption_key, "separator": dc.csv_separator}
    out = [f"data.csv_{k}: {data[k]!r} in the cache, {v!r} now" for k, v in fields.items() if data[k] != v]
    if not path.is_file():
        return out + [f"data.train: CSV file not found: {path}"]
    if sha256_file(path) != data["sha256"]:
        out.append(f"data.train: CSV {path} changed since the cache was built (the cache has {data['rows']} rows); "
                   "rebuild it with `clipkd reinforce`")
    return out


def _data_problems(data: dict[str, Any], dc: DataConfig) -> list[str]:
    if data["format"] != dc.format:
        return [f"data.format: {data['format']} in the cache, {dc.format} now"]
    return _csv_problems(data, dc) if dc.format == "csv" else _shard_problems(data, dc)


def manifest_problems(manifest: dict[str, Any], teachers: Sequence[ModelConfig], data: DataConfig,
                      views: int) -> list[str]:
    """What makes the cache of ``manifest`` unfit for a run with these teachers, data and K views (empty: fit;
    a run may use fewer views than the cache holds).

    Weights are compared by file SHA-256 (or tag), preprocessing by the model config's digest and the mean/std
    overrides, data by the shard list with each local shard's size and quick digest (or the CSV's SHA-256).
    """
    if manifest.get("format_version") != FORMAT_VERSION:
        return [f"format version {manifest.get('format_version')} (this clipkd reads {FORMAT_VERSION}): rebuild"]
    out = []
    if views > manifest["views"]:
        out.append(f"views: the cache holds {manifest['views']} per sample, {views} asked for")
    scale = list(data.crop_scale) if data.crop_scale else None
    if manifest["crop_scale"] != scale:
        out.append(f"data.crop_scale: {manifest['crop_scale']} in the cache, {scale} now")
    if manifest.get("max_image_pixels") != data.max_image_pixels:  # it decides which records have a view
        out.append(f"data.max_image_pixels: {manifest.get('max_image_pixels')} in the cache, {data.max_image_pixels} "
                   "now (it decides which images were too large to have a stored view)")
    if len(manifest["teachers"]) != len(teachers):
        out.append(f"teachers: {len(manifest['teachers'])} in the cache, {len(teachers)} now")
    for i, (saved, mc) in enumerate(zip(manifest["teachers"], teachers)):
        out += _teacher_problems(i, saved, mc)
    return out + _data_problems(manifest["data"], data)


def fingerprint_problem(reader: SidecarReader, sidecar: int, index: int, raw: RawSample,
                        fp: Optional[bytes] = None) -> Optional[str]:
    """None when ``raw`` (record ``index`` of the data shard of ``sidecar``) is what the cache was built from;
    else a message naming the record. ``fp``: the record's fingerprint when already computed."""
    fp = fp if fp is not None else record_fingerprint(raw)
    try:
        stored = bytes(reader.row(sidecar, "fingerprint", index).tolist())
    except IndexError as exc:
        return f"{raw.describe()}: not in the cache ({exc}); the data has more records than the cache was built from"
    if fp == stored:
        return None
    return (f"{raw.describe()}: content differs from what the cache was built from (sidecar {sidecar}, record "
            f"{index}: fingerprint {stored.hex()} in the cache, {fp.hex()} now)")


def _header_build(path: Path) -> Optional[str]:
    """The build digest a sidecar's metadata names (its header only is read)."""
    from safetensors import safe_open

    from clipkd.reinforce.format import META_KEY

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get(META_KEY, "{}")).get("build")


def _sidecar_problem(folder: Path, entry: dict[str, Any], build: Optional[str], full: bool) -> Optional[str]:
    path = Path(folder) / entry["file"]
    if not path.is_file():
        return f"{entry['file']}: missing"
    if path.stat().st_size != entry["file_bytes"]:
        return (f"{entry['file']}: {path.stat().st_size} bytes, the build wrote {entry['file_bytes']} (replaced or "
                "truncated since)")
    try:
        header = _header_build(path)
    except Exception as exc:  # noqa: BLE001 - not a safetensors file at all
        return f"{entry['file']}: not a readable sidecar ({type(exc).__name__}: {exc})"
    if header != build:
        return f"{entry['file']}: written by another build (its header names build {str(header)[:12]}, this one is " \
               f"{str(build)[:12]}): copied in from elsewhere"
    if full and sha256_file(path) != entry["sha256"]:
        return (f"{entry['file']}: its content is not what the build wrote (SHA-256 differs: copied in from "
                "another build, or damaged)")
    return None


def sidecar_problems(folder: Path, manifest: dict[str, Any], full: bool = False) -> list[str]:
    """What differs between the sidecar files in ``folder`` and the build's manifest: a missing file, another size
    or a header naming another build (cheap: at every training start); with ``full``, also another SHA-256 (reads
    every byte: `clipkd reinforce --verify`)."""
    build = manifest.get("build_sha256")
    found = [_sidecar_problem(folder, e, build, full) for e in manifest["data"]["sidecars"]]
    return [p for p in found if p]


def verify_build(folder: Path) -> tuple[int, list[str]]:
    """(sidecars checked, problems) of a finished build: every sidecar's size, header and SHA-256 against the
    manifest."""
    from clipkd.reinforce.manifest import load_manifest

    try:
        manifest = load_manifest(folder)
    except FileNotFoundError:
        return 0, [_not_a_build(Path(folder))]
    except ValueError as exc:
        return 0, [f"manifest.json is not readable JSON ({exc})"]
    if manifest.get("format_version") != FORMAT_VERSION:
        return 0, [f"format version {manifest.get('format_version')} (this clipkd reads {FORMAT_VERSION}): rebuild"]
    return len(manifest["data"]["sidecars"]), sidecar_problems(Path(folder), manifest, full=True)


def _not_a_build(folder: Path) -> str:
    """Why ``folder`` (without a manifest) cannot be used, and what to do."""
    from clipkd.reinforce.settings import SETTINGS_FILE

    if (folder / SETTINGS_FILE).is_file():
        return ("an unfinished `clipkd reinforce` build (no manifest.json yet); re-run the `clipkd reinforce` "
                "command that started it to finish it")
    if (folder / "config.yaml").is_file() or (folder / "checkpoints").is_dir():
        return ("a training run folder, not reinforced data; distill.teacher_cache takes the --out folder of "
                "`clipkd reinforce -c run.yaml --views K --out DIR`")
    return "not a `clipkd reinforce` build (no manifest.json); make one with `clipkd reinforce -c run.yaml " \
           "--views K --out DIR`"


def cache_problems(folder: str, teachers: Sequence[ModelConfig], data: DataConfig, views: Optional[int]
                   ) -> tuple[Optional[dict[str, Any]], list[str]]:
    """(manifest, problems) of training from the reinforced data in ``folder``; ``views`` None: all it holds.

    A folder that is not a finished build is a problem; no teacher is built; each sidecar's size is compared
    with the manifest's (not its content: :func:`sidecar_problems` with ``full``)."""
    from clipkd.reinforce.manifest import load_manifest

    if not Path(folder).is_dir():
        return None, ["folder not found (make it with `clipkd reinforce -c run.yaml --views K --out DIR`)"]
    try:
        manifest = load_manifest(folder)
    except FileNotFoundError:
        return None, [_not_a_build(Path(folder))]
    except ValueError as exc:
        return None, [f"manifest.json is not readable JSON ({exc})"]
    problems = manifest_problems(manifest, teachers, data, views or manifest["views"])
    return manifest, problems + (sidecar_problems(Path(folder), manifest) if not problems else [])
