"""Score mixtures of candidates on a role (search, select, test) through the execution backend.

The backend's workers (one in-process, or one per Ray actor) already hold the parents and evaluators: selection
sends each a mixture to load (``Job("load")``) and the roles to score it on (``Job("score")``, or
``Job("documents")`` for test, which also returns each document's value), keeping every slot busy. A mixture
scored once on a role is never scored again (the cache is keyed on its candidates and coefficients); a slot
that already holds a mixture is not asked to load it again.

>>> scorer = Scorer(backend, specs)                                           # doctest: +SKIP
>>> scorer.many([Request(parts, ("search", "select")) for parts in batch])   # all slots at once  # doctest: +SKIP
>>> scorer.select([("trial:12", 1.0)])                                        # one, on one slot  # doctest: +SKIP
{'add': 0.8, 'rev': 0.7}
>>> scores, per_document = scorer.test([("trial:12", 1.0)])                  # doctest: +SKIP
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from search.backends.base import Job
from search.merging.spec import MergeSpec

Parts = Sequence[tuple[str, float]]
Key = tuple[tuple[str, float], ...]


def mixture_key(parts: Parts) -> Key:
    """A canonical key: the same candidates with the same coefficients, in any order, are one mixture."""
    merged: dict[str, float] = {}
    for ref, c in parts:
        merged[ref] = merged.get(ref, 0.0) + c
    return tuple(sorted((r, round(c, 12)) for r, c in merged.items()))


@dataclass(frozen=True)
class Request:
    """A mixture and the roles to score it on (loaded once, scored on each role in turn, on one slot)."""

    parts: tuple[tuple[str, float], ...]
    roles: tuple[str, ...]

    @classmethod
    def of(cls, parts: Parts, *roles: str) -> Request:
        return cls(tuple((r, float(c)) for r, c in parts), roles)


class ScoringFailed(Exception):
    """A mixture could not be loaded or scored (NaN/inf weights, an evaluator error, a lost worker)."""


class Scorer:
    """Loads mixtures into the backend's workers and scores them on roles, once per mixture and role."""

    def __init__(self, backend: Any, specs: dict[str, MergeSpec], on_score: Callable[[], None] | None = None) -> None:
        self.backend = backend
        self.specs = specs
        self.on_score = on_score or (lambda: None)
        self._done: dict[tuple[str, Key], Any] = {}        # (role, mixture) -> scores, or (scores, per_document)
        self._failed: dict[Key, str] = {}                 # mixture -> why it failed
        self._held: dict[int, Key | None] = {slot: None for slot in range(backend.slots)}

    # -- one at a time ----------------------------------------------------------------------------------------
    def search(self, parts: Parts) -> dict[str, float]:
        """Every objective on its whole search role."""
        return dict(self._one(parts, "search"))

    def select(self, parts: Parts) -> dict[str, float]:
        """Every objective on its whole select role (what picks the winner)."""
        return dict(self._one(parts, "select"))

    def test(self, parts: Parts) -> tuple[dict[str, float], dict[str, list[float]]]:
        """Every objective on its test role, and each document's value where the evaluator reports it."""
        scores, docs = self._one(parts, "test")
        return dict(scores), {k: list(v) for k, v in docs.items()}

    def _one(self, parts: Parts, role: str) -> Any:
        self.many([Request.of(parts, role)])
        return self.result(parts, role)

    def result(self, parts: Parts, role: str) -> Any:
        """What ``many`` got for a mixture on a role; raises ScoringFailed with the reason if it failed."""
        key = mixture_key(parts)
        if key in self._failed:
            raise ScoringFailed(self._failed[key])
        return self._done[(role, key)]

    # -- many at once -----------------------------------------------------------------------------------------
    def many(self, requests: Sequence[Request]) -> None:
        """Score every request, every slot busy until all are done (a failure is kept, not raised)."""
        queue = deque(r for r in requests if self._missing(r))
        running: dict[int, tuple[Request, list[str]]] = {}
        while queue or running:
            for slot in self._held:
                if slot not in running and queue:
                    request = queue.popleft()
                    todo = self._missing(request)
                    if not todo:
                        continue
                    running[slot] = (request, todo)
                    self._next_job(slot, request, todo)
            if not running:
                break
            result = self.backend.wait()
            request, todo = running[result.slot]
            key = mixture_key(request.parts)
            if not result.ok:
                self._failed[key] = result.error or "failed"
                self._held[result.slot] = None
                del running[result.slot]
                if result.job.kind != "load":
                    self.on_score()
                continue
            if result.job.kind == "load":
                self._held[result.slot] = key
            else:
                self._done[(todo.pop(0), key)] = result.value
                self.on_score()
            if todo:
                self._next_job(result.slot, request, todo)
            else:
                del running[result.slot]

    def _missing(self, request: Request) -> list[str]:
        key = mixture_key(request.parts)
        if key in self._failed:
            return []
        return [role for role in request.roles if (role, key) not in self._done]

    def _next_job(self, slot: int, request: Request, todo: list[str]) -> None:
        key = mixture_key(request.parts)
        if self._held[slot] != key:
            self._held[slot] = None
            mixture = tuple((self.specs[r], c) for r, c in request.parts)
            self.backend.submit(slot, Job("load", mixture=mixture))
        elif todo[0] == "test":
            self.backend.submit(slot, Job("documents", split="test"))
        else:
            self.backend.submit(slot, Job("score", split=todo[0], fraction=1.0))
