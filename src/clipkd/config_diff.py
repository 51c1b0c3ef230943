"""What changed between the config a checkpoint was written with and the config resuming it.

A resumed run is exact only when everything that defines the optimisation and the data order is the same.
Sections that only say where and how often to write or evaluate may change freely.
"""

from __future__ import annotations

from typing import Any, Mapping

HARMLESS = ("run_dir", "device", "threads", "logging.", "checkpoint.", "eval.", "distributed.")
"""Keys (or ``section.`` prefixes) whose change keeps a resumed run exact."""

LEGACY = {"data.decode": "full", "data.preprocess": "host"}
"""Keys added since a config may have been saved, with the value that does what a config without them did: an older
checkpoint's config is read with these values, so it is compared as what it was (``data.decode: full`` and
``data.preprocess: host`` resume it exactly, the new defaults are named as changes)."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _normalise(value: Any) -> Any:
    return [_normalise(v) for v in value] if isinstance(value, (list, tuple)) else value


def breaking_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every changed key outside :data:`HARMLESS`, sorted."""
    old, new = {**LEGACY, **flatten(saved)}, flatten(current)
    changes = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(HARMLESS) or key in HARMLESS:
            continue
        a, b = _normalise(old.get(key)), _normalise(new.get(key))
        if a != b:
            changes.append(f"{key}: {a!r} -> {b!r}")
    return changes
