"""Who runs a worker's jobs: one narrow protocol, so the trial loop never knows which backend it drives.

The driver hands a slot (a worker) one job at a time — merge a candidate, or score a slice — and waits for
whichever job finishes first. The in-process backend has one slot and runs the job on the spot; the Ray backend
has one slot per actor and runs them concurrently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from search.merging.spec import MergeSpec


@dataclass(frozen=True)
class Job:
    """``merge`` a candidate's spec; ``load`` a mixture of candidates (selection); ``score`` the loaded model on
    the first ``fraction`` of a role; ``documents``: score a whole role with each document's value (test)."""

    kind: Literal["merge", "load", "score", "documents"]
    spec: MergeSpec | None = None
    split: str = "search"
    fraction: float = 1.0
    mixture: tuple[tuple[MergeSpec, float], ...] = ()
    per_document: bool = False  # score: also each document's value (WilcoxonPruner)


@dataclass(frozen=True)
class JobResult:
    """What a job gave: a value (merge seconds, or scores by objective) or a one-line error."""

    slot: int
    job: Job
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    worker_lost: bool = False  # the worker died (Ray): its candidate may be retried elsewhere

    @property
    def ok(self) -> bool:
        return self.error is None


class Backend(Protocol):
    """Runs jobs on ``slots`` workers."""

    slots: int

    def start(self) -> None:
        """Load the parents and evaluators in every worker (raises UserError on bad input)."""

    def submit(self, slot: int, job: Job) -> None:
        """Start ``job`` on worker ``slot`` (which must be idle)."""

    def wait(self) -> JobResult:
        """Block until a submitted job finishes; return its result."""

    def close(self) -> None:
        """Release the workers (and anything the backend started)."""
