"""Every loss term's name and equation, and the check of a ``{term: weight}`` mapping.

Imports nothing heavy (no torch): config validation and ``clipkd losses`` use it before torch is loaded. The
registered term classes (:mod:`clipkd.losses.terms`) take their equation from here, so this is the one place
that lists the terms; the test suite checks that it and the registry name the same terms.
"""

from __future__ import annotations

import math
from typing import Mapping

from clipkd.suggest import closest

EQUATIONS: dict[str, str] = {
    "task": "1/2 [CE(s*I_s T_s^T, y) + CE(s*T_s I_s^T, y)]  (student's own CLIP loss)",
    "crd": "1/2 [KL(softmax(T) || softmax(S)) + KL(softmax(T^T) || softmax(S^T))], S = s_s I_s T_s^T, "
           "T = s_t I_t T_t^T",
    "siglip": "-1/N sum_ij log sigmoid(z_ij (s*<I_s_i, T_s_j> + b)), z_ij = 1 if i = j else -1  (student's own "
              "sigmoid loss; needs a student with a logit bias)",
    "sigmoid_crd": "1/N sum_ij BCE(S_ij, p_ij), S = s_s I_s T_s^T + b_s, p = sigmoid(s_t I_t T_t^T + b_t) "
                   "(softmax teacher: p = 1/2 [softmax(T) + softmax(T^T)^T])",
    "fd": "mean((P(I_s) - I_t)^2) + mean((P(T_s) - T_t)^2)",
    "icl": "1/2 [CE(c*P(I_s) T_t^T, y) + CE(c*P(T_s) I_t^T, y)], c = exp(learned log-scale) <= 100",
    "gd": "sum_k mean((G_k(student) - G_k(teacher))^2), G = closed-form dL/d(embeddings) of both loss halves",
    "afd": "clip_loss(F_I, F_T, c), F = normalise(phi([P(student); teacher])), c = exp(learned log-scale) <= 100",
}
"""``{term name: equation}`` in the order ``clipkd losses`` prints them (embeddings L2-normalised, ``y =
arange(N)``, ``P(.)`` = projection to the teacher's size)."""

ENSEMBLE_RULES: dict[str, str] = {
    "task": "unchanged: the student's own CLIP loss, no teacher",
    "crd": "KL to the weighted mixture of the teachers' distributions: p = sum_t w_t softmax(s_t I_t T_t^T) "
           "(and of T_t I_t^T), student's own S",
    "siglip": "unchanged: the student's own sigmoid loss, no teacher",
    "sigmoid_crd": "BCE to the weighted mixture of the teachers' pairwise match probabilities: p = sum_t w_t p_t "
                   "(softmax and sigmoid teachers mix), student's own S and bias",
    "fd": "sum_t w_t FD(P_t(student), teacher_t), one projection head P_t per teacher",
    "icl": "sum_t w_t ICL(P_t(student), teacher_t, c_t), one projection head P_t and learned scale c_t per teacher",
    "gd": "sum_t w_t GD(P_t(student) with the student's scale s, teacher_t with its scale s_t)",
    "afd": "sum_t w_t clip_loss(F_t, a_t), F_t = normalise(phi_t([P_t(student); teacher_t])), per-teacher heads "
           "and learned scale a_t",
}
"""``{term name: how it combines T teachers of weights w_t (sum 1)}``. Teacher embeddings are concatenated per
teacher, ``[N, sum_t D_t]``, with one scale per teacher; one teacher reduces every rule to ``EQUATIONS``. A term
without a rule here cannot run with an ensemble."""


def add_term(name: str, text: str) -> None:
    """Make a term defined outside this module (a plug-in ``LossTerm`` with its own equation) known by name."""
    if EQUATIONS.get(name, text) != text:
        raise ValueError(f"loss term '{name}' already has another equation in the catalog")
    EQUATIONS[name] = text


def unknown_terms_message(unknown: list[str]) -> str:
    """``unknown loss term(s) [...] (did you mean ...? known: ...)`` for names not in the catalog."""
    hints = [(u, found[0]) for u in unknown if (found := closest(u, EQUATIONS))]
    if len(unknown) == 1 and hints:
        hint = f"did you mean `{hints[0][1]}`? "
    elif hints:
        hint = "did you mean " + ", ".join(f"`{m}` for '{u}'" for u, m in hints) + "? "
    else:
        hint = ""
    return f"unknown loss term(s) {unknown} ({hint}known: {', '.join(sorted(EQUATIONS))})"


def validate_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Check names and values of a ``{term: weight}`` mapping; return it as plain floats."""
    unknown = sorted(set(weights) - set(EQUATIONS))
    if unknown:
        raise ValueError(unknown_terms_message(unknown))
    clean = {}
    for name, w in weights.items():
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"loss weight '{name}' must be a finite number >= 0, got {w}")
        clean[name] = w
    if not any(clean.values()):
        raise ValueError("at least one loss weight must be > 0")
    return clean
