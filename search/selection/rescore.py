"""Score mixtures of candidates with one :class:`~search.study.trial.Worker`, in the search or held-out phase.

Each objective reads the split the space gives it for the phase (``search_split`` / ``heldout_split``), as
the worker does during the search. A mixture scored once is never scored again (the cache is keyed on its
candidates and coefficients).

>>> scorer = Scorer(worker, specs)                                     # doctest: +SKIP
>>> scorer.heldout([("trial:12", 1.0)])                                # doctest: +SKIP
{'add': 0.8, 'rev': 0.7}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from search.merging.spec import MergeSpec
from search.selection.mixture import load_mixture

Parts = Sequence[tuple[str, float]]


def mixture_key(parts: Parts) -> tuple[tuple[str, float], ...]:
    """A canonical key: the same candidates with the same coefficients, in any order, are one mixture."""
    merged: dict[str, float] = {}
    for ref, c in parts:
        merged[ref] = merged.get(ref, 0.0) + c
    return tuple(sorted((r, round(c, 12)) for r, c in merged.items()))


class Scorer:
    """Loads a mixture of candidates into the worker's model and scores it, once per mixture and phase."""

    def __init__(self, worker: Any, specs: dict[str, MergeSpec],
                 on_score: Callable[[], None] | None = None) -> None:
        self.worker = worker
        self.specs = specs
        self.on_score = on_score or (lambda: None)
        self._cache: dict[tuple[str, tuple[tuple[str, float], ...]], dict[str, float]] = {}
        self._loaded: tuple[tuple[str, float], ...] | None = None

    def _load(self, parts: Parts) -> None:
        key = mixture_key(parts)
        if self._loaded != key:
            self._loaded = None
            load_mixture(self.worker, [(self.specs[r], c) for r, c in parts])
            self._loaded = key

    def search(self, parts: Parts) -> dict[str, float]:
        """Every objective on its whole search split."""
        return self._scored("search", parts)

    def heldout(self, parts: Parts) -> dict[str, float]:
        """Every objective on its held-out split."""
        return self._scored("heldout", parts)

    def _scored(self, phase: str, parts: Parts) -> dict[str, float]:
        key = (phase, mixture_key(parts))
        if key not in self._cache:
            self._load(parts)
            self._cache[key] = dict(self.worker.score(phase))
            self.on_score()
        return dict(self._cache[key])
