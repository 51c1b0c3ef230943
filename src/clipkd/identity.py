"""What defines a result: the content of everything a figure depends on, as digests.

Every cache, resume and reuse check compares these, never a name or a path alone:

* a **file**: its SHA-256 (:func:`content_sha256`), remembered per (path, size, mtime, ctime, inode) in a small
  SQLite table under :func:`cache_dir` so a 2 GB teacher is read once, not at every start (any write to the
  file changes its ctime, so a changed file is hashed again); large *data* files (webdataset shards over
  :data:`FULL_HASH_BYTES`) by size and their first and last 64 KiB (:func:`data_file_digest`);
* a **folder** (an open_clip ``local-dir:`` model, an image-folder benchmark): every file's relative path and
  digest (:func:`tree_digest`);
* a **model**: its weights (a checkpoint's digest; a ``local-dir:`` folder's digest; an ``hf-hub:`` repository's
  revision and file digests; a pretrained tag; or ``random``), its architecture/preprocessing config and the
  mean/std overrides (:func:`model_identity`);
* **training data**: the CSV's digest, or each shard's (:func:`data_identity`);
* **reinforced data**: its manifest's digest (the manifest holds every sidecar's SHA-256, the teachers' identities
  and K) (:func:`reinforced_identity`).

Benchmarks (their images, labels, captions and prompts) are composed from these by
:meth:`clipkd.eval.runner.Benchmark.identity`; a run's inputs by :func:`clipkd.engine.inputs.run_inputs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from clipkd.errors import ConfigError
from clipkd.files import quick_digest
from clipkd.files import sha256_file as _sha256

log = logging.getLogger(__name__)

FULL_HASH_BYTES = 1 << 30
"""Data files up to this size are hashed whole; larger ones (webdataset shards) by size, head and tail."""
QUICK_SPAN = 1 << 16
HUB_PREFIXES = ("hf-hub:", "local-dir:")
DIGEST_TABLE = "digests.sqlite"
MANIFEST_FILE = "manifest.json"
"""A finished reinforce build's manifest (:mod:`clipkd.reinforce.manifest`)."""


class IdentityUnavailable(ConfigError):
    """An input whose content cannot be read here (e.g. an ``hf-hub:`` model that is not in the local cache
    while the hub is unreachable)."""


def cache_dir() -> Path:
    """``$CLIPKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/clipkd``, else ``~/.cache/clipkd``."""
    if os.environ.get("CLIPKD_CACHE_DIR"):
        return Path(os.environ["CLIPKD_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipkd"


def _stat_key(path: Path) -> tuple[str, int, int, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


_MEMO: dict[tuple, str] = {}


def _table() -> Optional[sqlite3.Connection]:
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(folder / DIGEST_TABLE, timeout=30)
        db.execute("CREATE TABLE IF NOT EXISTS digests (key TEXT PRIMARY KEY, digest TEXT NOT NULL)")
        return db
    except (OSError, sqlite3.Error) as exc:  # a read-only home: digests are computed every time
        log.debug("no digest cache (%s)", exc)
        return None


def _remembered(key: tuple, compute) -> str:
    if key in _MEMO:
        return _MEMO[key]
    text = json.dumps(key)
    db = _table()
    try:
        row = db.execute("SELECT digest FROM digests WHERE key = ?", (text,)).fetchone() if db else None
        digest = row[0] if row else compute()
        if db and not row:
            with db:
                db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?)", (text, digest))
    except sqlite3.Error as exc:
        log.debug("digest cache unusable (%s)", exc)
        digest = compute()
    finally:
        if db:
            db.close()
    _MEMO[key] = digest
    return digest


def content_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes (remembered per path, size, mtime, ctime and inode)."""
    path = Path(path)
    return _remembered(("sha256", *_stat_key(path)), lambda: _sha256(path))


def data_file_digest(path: Union[str, Path]) -> str:
    """``sha256:<hex>`` of a data file up to :data:`FULL_HASH_BYTES`, else ``quick:<hex>`` of its size and first
    and last 64 KiB (a cheap check that a large shard is the same)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return "sha256:" + content_sha256(path)
    return "quick:" + _remembered(("quick", *_stat_key(path)), lambda: quick_digest(path, QUICK_SPAN))


def digest_of(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON (sorted keys): equal objects, equal digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tree_digest(folder: Union[str, Path]) -> str:
    """SHA-256 over every file under ``folder`` (relative path and content digest, in path order): the same
    content anywhere gives the same digest; a renamed, added, removed or changed file changes it."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    return digest_of([[p.relative_to(folder).as_posix(), data_file_digest(p)] for p in files])


def files_digest(paths: Iterable[Union[str, Path]]) -> str:
    """SHA-256 over the content digests of ``paths`` in order (their names play no part)."""
    return digest_of([data_file_digest(p) for p in paths])


# -- models ------------------------------------------------------------------------------------------------------
def _hub_files(repo: str) -> list[Path]:
    """The files open_clip loads for ``hf-hub:repo`` (config and weights), from the local cache when offline."""
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        return [Path(download_pretrained_from_hf(repo, filename="open_clip_config.json")),
                Path(download_pretrained_from_hf(repo))]
    except Exception as exc:  # noqa: BLE001 - offline and not cached, no such repo, no weights: one message
        raise IdentityUnavailable(f"hf-hub:{repo}: cannot read its files to identify it ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''}); with HF_HUB_OFFLINE=1 it must "
                                  "be in the local Hugging Face cache") from None


def source_identity(model: str) -> str:
    """Content identity of the weights an ``hf-hub:``/``local-dir:`` model brings: ``folder-sha256:<hex>`` of a
    local folder (every file), ``hf-hub@<revision>:sha256:<hex>`` of a hub repository's config and weights."""
    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:"))
        if not folder.is_dir():
            raise IdentityUnavailable(f"{model}: folder not found")
        return "folder-sha256:" + tree_digest(folder)
    files = _hub_files(model.removeprefix("hf-hub:"))
    revision = files[0].parent.name  # .../snapshots/<commit>/open_clip_config.json in the Hugging Face cache
    return f"hf-hub@{revision}:sha256:" + files_digest(files)


def weights_identity(model: str, pretrained: Optional[str]) -> str:
    """``sha256:<hex>`` of a weights file, :func:`source_identity` of an ``hf-hub:``/``local-dir:`` model,
    ``tag:<name>`` for a pretrained tag, ``random`` when nothing is loaded."""
    if pretrained and Path(pretrained).is_file():
        return "sha256:" + content_sha256(pretrained)
    if model.startswith(HUB_PREFIXES):
        return source_identity(model)
    return f"tag:{pretrained}" if pretrained else "random"


def model_config_digest(model: str) -> Optional[str]:
    """SHA-256 of the model config behind ``model`` (architecture and preprocessing settings): the JSON file of a
    path or of one of clipkd's configs, open_clip's registered config otherwise; None when there is none (an
    ``hf-hub:``/``local-dir:`` model: its config is part of :func:`source_identity`)."""
    from importlib.resources import files

    path = Path(model) if model.endswith(".json") else Path(str(files("clipkd.models") / "configs" / f"{model}.json"))
    if path.is_file():
        return content_sha256(path)
    if model.startswith(HUB_PREFIXES):
        return None
    import open_clip

    cfg = open_clip.get_model_config(model)
    return digest_of(cfg) if cfg else None


def _floats(values: Optional[Sequence[float]]) -> Optional[list[float]]:
    return None if values is None else [float(v) for v in values]


def model_identity(model: str, pretrained: Optional[str], image_mean: Optional[Sequence[float]] = None,
                   image_std: Optional[Sequence[float]] = None) -> dict[str, Any]:
    """A model's identity from its settings alone (files are hashed, nothing is built): ``model`` (the name; an
    ``hf-hub:``/``local-dir:`` model by its kind only, its content is in ``weights``), ``weights``,
    ``model_config_sha256``, ``image_mean``, ``image_std``."""
    name = model.split(":", 1)[0] + ":" if model.startswith(HUB_PREFIXES) else model
    return {"model": name, "weights": weights_identity(model, pretrained),
            "model_config_sha256": model_config_digest(model), "image_mean": _floats(image_mean),
            "image_std": _floats(image_std)}


# -- data ----------------------------------------------------------------------------------------------------------
def _remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def shard_identity(url: str) -> str:
    """A shard's :func:`data_file_digest`, or its URL when it is not a local file (a ``pipe:`` or remote shard
    cannot be read cheaply; its name stands in)."""
    return f"url:{url}" if _remote(url) or not Path(url).is_file() else data_file_digest(url)


def data_identity(fmt: str, train: Union[str, Sequence[str]]) -> dict[str, Any]:
    """Training data by content: ``{"format": "csv", "sha256": ...}`` for a CSV path (the CSV itself; each image
    behind it is checked by content where reinforced data is used), or ``{"format": "webdataset", "shards":
    [...]}`` for an expanded shard list (each shard's :func:`shard_identity`, in order)."""
    if fmt == "csv":
        return {"format": "csv", "sha256": content_sha256(str(train))}
    return {"format": "webdataset", "shards": [shard_identity(u) for u in ([train] if isinstance(train, str)
                                                                             else train)]}


def reinforced_identity(folder: Union[str, Path]) -> dict[str, Any]:
    """Reinforced data by content: the SHA-256 of its ``manifest.json`` (every sidecar's SHA-256, the teachers'
    identities, K, dtype and the data's identity), and K."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise IdentityUnavailable(f"{folder}: no {MANIFEST_FILE} (not a finished `clipkd reinforce` build)")
    views = json.loads(path.read_text(encoding="utf-8")).get("views")
    return {"manifest_sha256": content_sha256(path), "views": views}


# -- comparing -------------------------------------------------------------------------------------------------------
def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def changed(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys (dotted) whose identity differs between two identity trees, in order."""
    old, new = _flat(saved), _flat(now)
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
