"""The default backend: one worker in this process, jobs run as they are waited for."""

from __future__ import annotations

import time

from search.backends.base import Job, JobResult, process_threads, set_torch_threads
from search.study.trial import Worker, WorkerConfig, describe_failure


class InProcessBackend:
    """One slot, no threads, no Ray: ``wait`` runs the submitted job and returns its result."""

    slots = 1

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.worker: Worker | None = None
        self._pending: tuple[int, Job] | None = None

    def start(self) -> None:
        if self.worker is None:
            # one worker: OMP_NUM_THREADS, else every core this process may use (a threads count in the config,
            # e.g. from a test, wins)
            set_torch_threads(int(self.config.extra.get("torch_threads") or process_threads()))
            self.worker = Worker(self.config)

    def submit(self, slot: int, job: Job) -> None:
        if self._pending is not None:
            raise RuntimeError("the in-process backend runs one job at a time")
        self._pending = (slot, job)

    def wait(self) -> JobResult:
        if self._pending is None or self.worker is None:
            raise RuntimeError("nothing submitted")
        slot, job = self._pending
        self._pending = None
        return run_job(self.worker, slot, job)

    def close(self) -> None:
        self.worker = None


def run_job(worker: Worker, slot: int, job: Job) -> JobResult:
    """Run one job on a worker, turning any exception into a failed result (the run goes on)."""
    t0 = time.perf_counter()
    try:
        if job.kind == "merge":
            assert job.spec is not None
            value = worker.merge(job.spec)
        elif job.kind == "load":
            from search.selection.mixture import load_mixture

            load_mixture(worker, list(job.mixture))
            value = time.perf_counter() - t0
        elif job.kind == "statistics":
            value = worker.compute_statistics(progress=job.progress)
        elif job.kind == "documents":
            value = worker.score_documents(job.split)
        elif job.per_document:
            value = worker.score_slice_documents(job.split, job.fraction)
        else:
            value = worker.score(job.split, job.fraction)
    except Exception as exc:  # noqa: BLE001 - a failing candidate is data, not a crash
        return JobResult(slot, job, error=describe_failure(exc), seconds=time.perf_counter() - t0)
    return JobResult(slot, job, value=value, seconds=time.perf_counter() - t0)
