"""What defines a result: the content of everything a figure depends on, as digests.

Every cache, resume and reuse check compares these, never a name or a path alone:

* a **file**: its SHA-256 (:func:`content_sha256`), remembered per (path, size, mtime, ctime, inode) in a small
  SQLite table under :func:`cache_dir` (``$CLIPKD_CACHE_DIR``), so a 2 GB teacher is read once, not at every start
  (any write changes the ctime, so a changed file is hashed again; a file changed in the last 2 s is not
  remembered); *data* files over :data:`FULL_HASH_BYTES` (webdataset shards) by size and their first and last
  64 KiB (:func:`data_file_digest`), as the reinforced data's manifest identifies them;
* a **model**: its weights (a checkpoint's SHA-256; a ``local-dir:`` folder's config, weights and tokenizer files;
  an ``hf-hub:`` repository's config and weights by the hub's content ids, read from the local cache or asked of
  the hub without downloading; a pretrained tag by name; or ``random``), its architecture/preprocessing config and
  the mean/std overrides (:func:`model_identity`);
* **training data**: the CSV's SHA-256 (the images behind it are checked record by record where reinforced data
  is used), or each shard's digest (a ``pipe:`` or remote shard by its URL) (:func:`data_identity`);
* **reinforced data**: its build's digest and every sidecar's SHA-256 (:func:`reinforced_identity`).

Benchmarks (their images, labels, captions and prompts) are composed from these by
:func:`clipkd.eval.identity.benchmark_identity`; a run's inputs by :func:`clipkd.build.inputs.run_inputs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from clipkd.errors import ConfigError
from clipkd.files import quick_digest
from clipkd.files import sha256_file as _sha256

log = logging.getLogger(__name__)

FULL_HASH_BYTES = 1 << 20
"""Data files up to this size (images) are hashed whole; larger ones (webdataset shards) by size, head and tail,
as the reinforced data's manifest identifies shards: two reads of 64 KiB per shard at start-up, not the dataset."""
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


RACY_S = 2.0
"""A file changed this recently is hashed but its digest not remembered: a rewrite of the same size within one
timestamp tick would keep its key (git's "racy clean" rule)."""


def _stat_key(path: Path) -> tuple[tuple, bool]:
    """(the key a digest is remembered under: path, size, mtime, ctime, inode, device; whether it may be)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
    return key, time.time() - max(st.st_mtime_ns, st.st_ctime_ns) / 1e9 > RACY_S


_MEMO: dict[tuple, str] = {}
_DB: dict[tuple[int, Path], Optional[sqlite3.Connection]] = {}  # per process and folder (a forked child: its own)


def _table() -> Optional[sqlite3.Connection]:
    """This process's connection to the digest table (None when it cannot be opened: digests are computed)."""
    folder = cache_dir()
    if (os.getpid(), folder) in _DB:
        return _DB[os.getpid(), folder]
    db = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(folder / DIGEST_TABLE, timeout=2, isolation_level=None)  # autocommit
        db.execute("PRAGMA synchronous=OFF")  # a cache: a lost row is recomputed
        db.execute("CREATE TABLE IF NOT EXISTS digests (key TEXT PRIMARY KEY, digest TEXT NOT NULL)")
    except (OSError, sqlite3.Error) as exc:  # a read-only home, a locked or damaged file
        log.debug("no digest cache (%s)", exc)
        db = None
    _DB[os.getpid(), folder] = db
    return db


def _db_call(sql: str, args: tuple) -> Optional[tuple]:
    """One statement on the digest table; None on any database error (the cache is only an optimisation)."""
    db = _table()
    try:
        return db.execute(sql, args).fetchone() if db else None
    except sqlite3.Error as exc:
        log.debug("digest cache unusable (%s)", exc)
        return None


def _remembered(kind: str, path: Path, compute: Callable[[], str]) -> str:
    """``compute()`` (a digest of ``path``), computed once per file state and remembered across processes."""
    stat, may_keep = _stat_key(path)
    key = (kind, *stat)
    if key in _MEMO:
        return _MEMO[key]
    text = json.dumps(key)
    row = _db_call("SELECT digest FROM digests WHERE key = ?", (text,)) if may_keep else None
    digest = row[0] if row else compute()
    if may_keep:
        if not row:
            _db_call("INSERT OR REPLACE INTO digests VALUES (?, ?)", (text, digest))
        _MEMO[key] = digest
    return digest


def content_sha256(path: Union[str, Path]) -> str:
    """The SHA-256 of a file's bytes (remembered per path, size, mtime, ctime and inode)."""
    path = Path(path)
    return _remembered("sha256", path, lambda: _sha256(path))


def data_file_digest(path: Union[str, Path]) -> str:
    """``sha256:<hex>`` of a data file up to :data:`FULL_HASH_BYTES`, else ``quick:<hex>`` of its size and first
    and last 64 KiB (a cheap check that a large shard is the same)."""
    path = Path(path)
    size = path.stat().st_size
    if size <= FULL_HASH_BYTES:
        return "sha256:" + content_sha256(path)
    return "quick:" + _remembered("quick", path, lambda: quick_digest(path, QUICK_SPAN))


def digest_of(obj: Any) -> str:
    """SHA-256 of an object's canonical JSON (sorted keys): equal objects, equal digests."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# -- models ------------------------------------------------------------------------------------------------------
HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # open_clip's order of preference
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
                   "merges.txt", "spiece.model", "sentencepiece.bpe.model")


def _hub_etag(repo: str, filename: str) -> Optional[str]:
    """The hub's content id of one file of ``repo`` (an LFS file: its SHA-256; a small one: its git blob id), read
    from the local cache (the blob's name) or asked of the hub without downloading; None when there is no such
    file."""
    import huggingface_hub as hub

    cached = hub.try_to_load_from_cache(repo, filename)
    if isinstance(cached, str):
        return Path(os.path.realpath(cached)).name  # the cache stores a file as blobs/<etag>
    if cached is not None:  # known to be absent
        return None
    try:
        return hub.get_hf_file_metadata(hub.hf_hub_url(repo, filename)).etag
    except hub.errors.EntryNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - offline and not cached, no such repository: one message
        why = "HF_HUB_OFFLINE is set" if hub.constants.HF_HUB_OFFLINE else type(exc).__name__
        raise IdentityUnavailable(f"cannot load hf-hub:{repo}: the model hub is unreachable ({why}) and the model is "
                                  "not in the local cache; download it once with network access, or use a local copy "
                                  "(local-dir:/path/to/folder)") from None


def _hub_identity(repo: str) -> str:
    """``hf-hub:sha256:<hex>`` over the content ids of the config and the weights file open_clip loads (not the
    revision: a commit that changes neither is the same model). Nothing is downloaded."""
    config = _hub_etag(repo, HUB_CONFIG)
    weights = next((e for e in (_hub_etag(repo, f) for f in HUB_WEIGHTS) if e), None)
    if config is None or weights is None:
        raise IdentityUnavailable(f"hf-hub:{repo}: no {HUB_CONFIG if config is None else 'weights file'} there")
    return "hf-hub:sha256:" + digest_of([config, weights])


def model_folder_digest(folder: Path) -> str:
    """SHA-256 over what open_clip reads from a ``local-dir:`` folder, by content: its config, weights files and
    tokenizer files (names and full SHA-256s); hidden files, sub-folders (``.git``, ``.cache``) and anything else
    (a README, a model card) play no part."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                   and (p.name == HUB_CONFIG or p.suffix in MODEL_FILE_SUFFIXES or p.name in TOKENIZER_FILES))
    if HUB_CONFIG not in names:
        raise IdentityUnavailable(f"local-dir:{folder}: no {HUB_CONFIG} there")
    return digest_of([[n, content_sha256(folder / n)] for n in names])


def source_identity(model: str) -> str:
    """Content identity of what an ``hf-hub:``/``local-dir:`` model brings (config and weights):
    ``folder-sha256:<hex>`` of a local folder (:func:`model_folder_digest`), ``hf-hub:sha256:<hex>`` of a hub
    repository. Raises :class:`IdentityUnavailable` when the files cannot be read here."""
    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:"))
        if not folder.is_dir():
            raise IdentityUnavailable(f"{model}: folder not found")
        return "folder-sha256:" + model_folder_digest(folder)
    return _hub_identity(model.removeprefix("hf-hub:"))


def weights_identity(model: str, pretrained: Optional[str]) -> str:
    """:func:`source_identity` of an ``hf-hub:``/``local-dir:`` model (open_clip ignores ``pretrained`` for
    those), ``sha256:<hex>`` of a weights file, ``tag:<name>`` for a pretrained tag, ``random`` when nothing is
    loaded."""
    if model.startswith(HUB_PREFIXES):
        return source_identity(model)
    if pretrained and Path(pretrained).is_file():
        return "sha256:" + content_sha256(pretrained)
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
    ``hf-hub:``/``local-dir:`` model or a model-config file by its kind only: their content is in ``weights`` and
    ``model_config_sha256``), ``weights``,
    ``model_config_sha256``, ``image_mean``, ``image_std``."""
    if model.startswith(HUB_PREFIXES):
        name = model.split(":", 1)[0] + ":"
    else:
        name = "model-config.json" if model.endswith(".json") else model  # a config file: its content counts
    return {"model": name, "weights": weights_identity(model, pretrained),
            "model_config_sha256": model_config_digest(model), "image_mean": _floats(image_mean),
            "image_std": _floats(image_std)}


def config_identity(section: Any) -> dict[str, Any]:
    """:func:`model_identity` of a model section of a config (``model``, ``pretrained``, ``image_mean``,
    ``image_std``: a teacher or the student)."""
    return model_identity(section.model, section.pretrained, section.image_mean, section.image_std)


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
    """Reinforced data by content: its build's digest (the teachers' identities, the data, K, dtype, seed, ...),
    the SHA-256 of every sidecar (from its manifest: what was stored) and K. Versions and descriptions in the
    manifest play no part: a harmless re-run under a newer clipkd is the same data."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise IdentityUnavailable(f"{folder}: no {MANIFEST_FILE} (not a finished `clipkd reinforce` build)")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    sidecars = [e.get("sha256") for e in manifest.get("data", {}).get("sidecars", [])]
    return {"build_sha256": manifest.get("build_sha256"), "sidecars_sha256": digest_of(sidecars),
            "views": manifest.get("views")}


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
