"""Who runs a worker's jobs: one narrow protocol, so the trial loop never knows which backend it drives.

The driver hands a slot (a worker) one job at a time — merge a candidate, or score a slice — and waits for
whichever job finishes first. The in-process backend has one slot and runs the job on the spot; the Ray backend
has one slot per actor and runs them concurrently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from search.merging.spec import MergeSpec


@dataclass(frozen=True)
class Job:
    """``merge`` a candidate's spec; ``load`` a mixture of candidates (selection); ``score`` the loaded model on
    the first ``fraction`` of a role; ``documents``: score a whole role with each document's value (test);
    ``statistics``: compute (or reuse) the run's statistics for its data-aware methods, once, before any trial."""

    kind: Literal["merge", "load", "score", "documents", "statistics"]
    spec: MergeSpec | None = None
    split: str = "search"
    fraction: float = 1.0
    mixture: tuple[tuple[MergeSpec, float], ...] = ()
    per_document: bool = False  # score: also each document's value (WilcoxonPruner)
    progress: bool = False  # statistics: draw a progress bar (in the worker's process)


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


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def thread_share(cores: int, workers: int = 1, cpus_per_worker: float | None = None) -> int:
    """Torch threads for one of ``workers`` workers sharing ``cores``: its CPUs when given, never more than
    its share. More threads than cores costs 4x on a loaded machine (a LoRA step: 35-40 s with 2 threads on a
    busy 2-core machine, 8-10 s with 1).

    >>> thread_share(16, 4), thread_share(2, 1), thread_share(16, 2, cpus_per_worker=3), thread_share(2, 4)
    (4, 2, 3, 1)
    """
    share = max(1, cores // max(1, workers))
    if cpus_per_worker is not None:
        share = min(share, max(1, int(cpus_per_worker)))
    return share


def process_threads() -> int:
    """Torch threads for the one worker of an in-process run: ``OMP_NUM_THREADS`` when the user set it (the
    convention torch follows; on a machine shared with other jobs, ``OMP_NUM_THREADS=1`` can be several times
    faster than one thread per core), else every core this process may use.

    >>> set_torch_threads(process_threads())      # doctest: +SKIP
    """
    wanted = os.environ.get("OMP_NUM_THREADS", "").strip()
    if wanted.isdigit() and int(wanted) > 0:
        return int(wanted)
    return thread_share(available_cores())


def set_torch_threads(threads: int) -> None:
    """Set this process's intra-op torch threads (inter-op threads can only be set before any parallel work)."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
