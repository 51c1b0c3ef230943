""""Did you mean ...?" for misspelled names (config fields, recipes, loss terms, models). Imports nothing heavy."""

from __future__ import annotations

import difflib
from typing import Iterable


def closest(word: str, candidates: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` candidates nearest to ``word``, best first, ties in the candidates' order; case is ignored
    (``vit-b-32`` finds ``ViT-B-32``). Similarity as :func:`difflib.get_close_matches` (ratio >= ``cutoff``)."""
    by_lower: dict[str, str] = {}
    for c in candidates:
        by_lower.setdefault(str(c).lower(), str(c))
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(str(word).lower())
    scored = []
    for i, (low, original) in enumerate(by_lower.items()):
        matcher.set_seq1(low)
        if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff and matcher.ratio() >= cutoff:
            scored.append((-matcher.ratio(), i, original))
    return [original for _, _, original in sorted(scored)[:n]]


def did_you_mean(word: str, candidates: Iterable[str], n: int = 1, prefix: str = "") -> str:
    """``"did you mean `x`?"`` (up to ``n``: ```x`, `y` or `z```), nearest first; ``""`` when none is near.

    ``prefix`` is put before each suggestion (a dotted field's parent path, e.g. ``"optim."``).
    """
    found = [f"`{prefix}{m}`" for m in closest(word, candidates, n=n)]
    if not found:
        return ""
    return "did you mean " + (f"{', '.join(found[:-1])} or {found[-1]}" if len(found) > 1 else found[0]) + "?"
