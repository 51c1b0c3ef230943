"""Griffe extension for the API reference: clipkd's docstrings use Sphinx roles (``:func:`name```,
``:class:`~pkg.Name```), which Markdown would print as they are. Each becomes a cross-reference to the named
object, resolved in the scope of the docstring's object; a reference to an object the reference pages do not
render (a private helper, a module documented later) is shown as plain code, without a warning.

The source files are not changed: this only rewrites the text that mkdocstrings renders.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const):`(~?)([^`]+)`")


def _target(obj: griffe.Object, name: str) -> str:
    """The full path of ``name`` as written in ``obj``'s docstring (the name itself when it cannot be resolved)."""
    if name.startswith("clipkd"):
        return name
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except Exception:  # noqa: BLE001 - griffe raises several kinds; an unresolved name stays as written
        return name
    return f"{path}.{rest}" if rest else path


def _rewrite(obj: griffe.Object, text: str) -> str:
    def link(match: re.Match) -> str:
        short, name = match.group(1), re.sub(r"\s+", "", match.group(2))
        shown = name.rsplit(".", 1)[-1] if short else name
        identifier = html.escape(_target(obj, name), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(shown)}</code></autoref>'

    return ROLE.sub(link, text)


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Turn Sphinx cross-reference roles in docstrings into optional autorefs."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
