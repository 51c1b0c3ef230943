"""Paths in a config: relative to the config file's folder when they come from the file, to the working folder
when they come from the command line; made absolute at load time, so a run's saved ``config.yaml`` works from
anywhere (``clipkd eval --run``, ``--resume``). Works on the raw (unvalidated) nested dict.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence, Union

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".pth.tar")
LIST_KEYWORDS = ("imagenet", "imagenet-simple")  # classnames / templates that name built-in lists


def _abs(value: str, base: Path) -> str:
    """``value`` as an absolute, normalised path (``~`` expanded; relative to ``base``)."""
    return os.path.abspath(os.path.join(base, os.path.expanduser(value)))


def _is_url(value: str) -> bool:
    return value.startswith("pipe:") or "://" in value


def _path(value: Any, base: Path) -> Any:
    return _abs(value, base) if isinstance(value, str) and value else value


def _urls(value: Any, base: Path) -> Any:
    """Shard URLs (brace patterns, ``::`` lists or a list) or a file: local paths resolved, URLs kept."""
    if isinstance(value, list):
        return [_urls(v, base) for v in value]
    if not isinstance(value, str) or not value:
        return value
    return "::".join(u if not u or _is_url(u) else _abs(u, base) for u in value.split("::"))


def _model(value: Any, base: Path) -> Any:
    """A model-config JSON path or ``local-dir:`` folder is resolved; a model name is kept."""
    if isinstance(value, str) and value.startswith("local-dir:"):
        return "local-dir:" + _abs(value[len("local-dir:"):], base)
    return _abs(value, base) if isinstance(value, str) and value.endswith(".json") else value


def _pretrained(value: Any, base: Path) -> Any:
    """A checkpoint path is resolved; a pretrained tag (``laion2b_s34b_b88k``) or hub name is kept.

    A path: ends with a weight suffix, or contains ``/`` or ``.`` and exists relative to ``base``.
    """
    if not isinstance(value, str) or not value or value.startswith("hf-hub:") or _is_url(value):
        return value
    resolved = _abs(value, base)
    if value.lower().endswith(WEIGHT_SUFFIXES) or (("/" in value or "." in value) and os.path.exists(resolved)):
        return resolved
    return value


def _list_file(value: Any, base: Path) -> Any:
    return value if value in LIST_KEYWORDS else _path(value, base)


_PATH_FIELDS: tuple[tuple[str, Callable[[Any, Path], Any]], ...] = (
    ("run_dir", _path),
    ("teacher.model", _model), ("student.model", _model),
    ("teacher.pretrained", _pretrained), ("student.pretrained", _pretrained),
    ("teacher.*.model", _model), ("teacher.*.pretrained", _pretrained),  # an ensemble: a list of teachers
    ("distill.teacher_cache", _path),
    ("data.train", _urls), ("data.root", _path),
    ("eval.val_data.train", _urls), ("eval.val_data.root", _path),
    ("eval.benchmarks.*.path", _urls), ("eval.benchmarks.*.root", _path),
    ("eval.benchmarks.*.classnames", _list_file), ("eval.benchmarks.*.templates", _list_file),
)


def _visit(node: Any, parts: Sequence[str], fn: Callable[[Any, Path], Any], base: Path) -> None:
    """Replace the value at ``parts`` (``*``: every list item or mapping value) by ``fn(value, base)``."""
    if isinstance(node, list) and parts and parts[0] == "*":
        keys: Sequence[Any] = range(len(node))
    elif isinstance(node, dict) and parts:
        keys = list(node) if parts[0] == "*" else [parts[0]] if parts[0] in node else []
    else:
        return
    for k in keys:
        if len(parts) == 1:
            node[k] = fn(node[k], base)
        else:
            _visit(node[k], parts[1:], fn, base)


def resolve_paths(raw: dict[str, Any], base: Union[str, Path]) -> dict[str, Any]:
    """Make every relative path of a raw (unvalidated) config absolute against ``base``, in place."""
    for dotted, fn in _PATH_FIELDS:
        _visit(raw, dotted.split("."), fn, Path(base))
    return raw


def resolve_override(parts: Sequence[str], value: Any, base: Path) -> Any:
    """The value of one override with its paths resolved (it may set a field, a section or a list)."""
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    resolve_paths(nested, base)
    for part in parts:
        nested = nested[part]
    return nested


