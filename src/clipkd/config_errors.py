"""Pydantic's validation errors as a user reads them: one line per offending field, dotted as it is written in
YAML or an override, union-member tags dropped, alternatives joined, an unknown field with the nearest valid name
of its section ("did you mean"). The schema lives in :mod:`clipkd.config`."""

from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence, get_args

from pydantic import BaseModel, ValidationError

from clipkd.suggest import did_you_mean

_UNION_TAG = re.compile(r"^(str|int|float|bool|none|[\w-]+\[.*\])$")  # pydantic's union-member loc parts


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections a field's type holds: ``X``, ``Optional[X]``, ``list[X]``, unions of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _section(root: Optional[type[BaseModel]], loc: Sequence[Any]) -> tuple[str, list[str]]:
    """The section at a pydantic ``loc`` from ``root``: its dotted path as a user writes it (``"a.b."``, without
    union-member tags) and its field names, for a "did you mean"."""
    models, path = ([root] if root is not None else []), []
    for part in loc:
        holders = [m for m in models if isinstance(part, str) and part in m.model_fields]
        if holders:  # a field: the sections its type holds (X, Optional[X], list[X], dict[str, X], unions)
            models = [s for m in holders for s in _models_in(m.model_fields[part].annotation)]
        elif isinstance(part, str) and part in {m.__name__ for m in models}:
            models = [m for m in models if m.__name__ == part]  # the union member pydantic tried
            continue
        elif isinstance(part, str) and _UNION_TAG.match(part):
            continue  # a union member such as list[X]: its items are the same sections
        path.append(part)  # a field, list index or dict key
    return "".join(f"{p}." for p in path), [name for m in models for name in m.model_fields]


def unknown_field(root: Optional[type[BaseModel]], parts: list[Any]) -> str:
    """``unknown field (did you mean `a.b`?)`` with the nearest field of the same section, if one is near."""
    if not parts:
        return "unknown field"
    prefix, names = _section(root, parts[:-1])
    hint = did_you_mean(str(parts[-1]), names, prefix=prefix)
    return f"unknown field ({hint})" if hint else "unknown field"


def _error_line(e: Any, root: Optional[type[BaseModel]], sections: Mapping[str, type[BaseModel]]) -> tuple[str, str]:
    """(dotted field, message) of one pydantic error, without union-member tags in the field.

    ``root``: the model validated, to suggest the nearest field name for an unknown one.
    """
    parts = list(e["loc"])
    msg = unknown_field(root, parts) if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
    parts = [p for p in parts if not _is_tag(p, sections)]
    if e["type"] == "missing" and parts and isinstance(parts[-1], int):
        msg, parts = f"too few items (item {parts[-1]} is missing)", parts[:-1]
    return ".".join(str(p) for p in parts), msg


def _is_tag(part: Any, sections: Mapping[str, type[BaseModel]]) -> bool:
    """A union-member tag in a pydantic ``loc`` (``str``, ``list[...]``, or a section's class name)."""
    return isinstance(part, str) and (bool(_UNION_TAG.match(part)) or part in sections)


def error_lines(err: ValidationError, sections: Mapping[str, type[BaseModel]] = {}) -> list[tuple[str, str]]:
    """``(dotted field, message)`` per offending field ("" = the object itself); union alternatives joined.

    ``sections``: the config sections by class name; an unknown field gets the nearest valid name of its section
    when ``err`` comes from one of them.
    """
    root = sections.get(err.title)
    by_field: dict[str, list[str]] = {}
    for e in err.errors():
        field, msg = _error_line(e, root, sections)
        if msg not in by_field.setdefault(field, []):
            by_field[field].append(msg)
    out = []
    for field, msgs in by_field.items():
        head, *rest = msgs
        out.append((field, " or ".join([head, *(m.removeprefix("Input should be ") for m in rest)])))
    return out


def format_errors(err: ValidationError, sections: Mapping[str, type[BaseModel]] = {}) -> str:
    """``invalid config:`` and one line per offending field."""
    return "invalid config:\n" + "\n".join(f"  {field or '(top level)'}: {msg}"
                                            for field, msg in error_lines(err, sections))
