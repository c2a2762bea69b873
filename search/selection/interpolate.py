"""Rewarded-soup interpolation (Rame et al., 2023): weight-space lines between frontier points.

``(1 - alpha) * theta_a + alpha * theta_b`` for a few ``alpha`` in (0, 1), for each pair of neighbouring
frontier points and for the two ends of the front. Scoring them shows the front the interpolation traces. Pure
logic; the weights are mixed by :mod:`search.selection.mixture`.

>>> interpolation_parts("trial:4", "trial:7", 0.25)
[('trial:4', 0.75), ('trial:7', 0.25)]
>>> [round(a, 2) for a in check_alphas([0.25, 0.5])]
[0.25, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence

from search.errors import UserError

DEFAULT_ALPHAS = (0.25, 0.5, 0.75)


def interpolation_parts(a: str, b: str, alpha: float) -> list[tuple[str, float]]:
    """The mixture of candidates ``a`` and ``b`` at ``alpha`` (0 is ``a``, 1 is ``b``)."""
    return [(a, 1.0 - alpha), (b, alpha)]


def check_alphas(alphas: Sequence[float]) -> list[float]:
    """Sorted, distinct alphas strictly inside (0, 1) (the ends are the frontier points themselves)."""
    values = sorted({float(a) for a in alphas})
    bad = [a for a in values if not 0.0 < a < 1.0]
    if bad:
        raise UserError(f"interpolation alphas must lie strictly between 0 and 1, got {bad}",
                        field="--alphas", fix="give values like 0.25,0.5,0.75")
    return values
