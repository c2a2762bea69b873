"""Model soups over merge candidates: the greedy soup (Wortsman et al., 2022) and the uniform soup.

A soup is a uniform average of its ingredients' weights. The greedy soup walks the candidates best first (by
search score) and keeps an ingredient only when the soup's search score does not drop, so its search score is
never below the best single ingredient's. Pure logic: the caller scores a soup (``score_of``).

>>> scores = {("a",): 0.5, ("a", "b"): 0.6, ("a", "b", "c"): 0.55}
>>> soup, score, log = greedy_soup(["a", "b", "c"], 0.5, lambda ids: scores[tuple(ids)], maximize=True)
>>> soup, score, [s.accepted for s in log]
(['a', 'b'], 0.6, [True, True, False])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SoupStep:
    """One candidate tried: the soup's search score with it added, and whether it stayed."""

    ref: str
    score: float
    accepted: bool


def greedy_soup(ranked: Sequence[str], first_score: float, score_of: Callable[[list[str]], float], *,
                maximize: bool, max_ingredients: int | None = None
                ) -> tuple[list[str], float, list[SoupStep]]:
    """Ingredients, search score and the log of the greedy soup over ``ranked`` (best first).

    ``first_score`` is the best candidate's own search score; each later candidate is added when the soup with
    it scores at least as well (``>=`` when maximizing, ``<=`` when minimizing) as the soup without it.
    """
    if not ranked:
        raise ValueError("a greedy soup needs at least one candidate")
    soup = [ranked[0]]
    current = first_score
    log = [SoupStep(ranked[0], first_score, True)]
    for ref in ranked[1:]:
        if max_ingredients is not None and len(soup) >= max_ingredients:
            break
        score = score_of(soup + [ref])
        keep = score >= current if maximize else score <= current
        log.append(SoupStep(ref, score, keep))
        if keep:
            soup.append(ref)
            current = score
    return soup, current, log


def uniform(ids: Sequence[str]) -> list[tuple[str, float]]:
    """Equal coefficients summing to one.

    >>> uniform(["trial:3", "trial:9"])
    [('trial:3', 0.5), ('trial:9', 0.5)]
    """
    return [(i, 1.0 / len(ids)) for i in ids]
