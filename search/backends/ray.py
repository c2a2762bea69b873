"""Candidates spread over Ray actors: one per GPU (or per worker slot of CPUs), parents loaded once per actor.

The driver keeps every actor busy with one job at a time and gets results back as they finish (``ray.wait``).
An actor that dies (killed process, OOM) is restarted by Ray — its constructor loads the parents again — and the
driver marks the candidate it was scoring failed and enqueues it once more.

Embedded by default: with no address, ``start`` runs a local Ray instance bound to loopback, without the
dashboard, with its temp folder under the run folder, and ``close`` shuts it down. With an address (``auto``,
``ray://host:port``) it joins an existing cluster and leaves it running.

Ray is imported only here, and only when a space says ``backend: ray``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from search.backends.base import Job, JobResult, available_cores, thread_share
from search.config.space import LoadedSpace
from search.errors import UserError
from search.study.trial import WorkerConfig

# Keep an embedded Ray on this machine only: loopback, no token files in $HOME, no usage reporting.
EMBEDDED_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
_SOCKET_PATH_LIMIT = 107


class _WorkerActor:
    """Runs on a Ray worker process: one :class:`~search.study.trial.Worker` for the actor's life."""

    def __init__(self, config: WorkerConfig) -> None:
        import torch

        from search.study.trial import Worker

        if config.extra.get("torch_threads"):  # this actor's share of the cores (RayBackend.start)
            torch.set_num_threads(int(config.extra["torch_threads"]))
        self.worker = Worker(config)

    def pid(self) -> int:
        return os.getpid()

    def run(self, slot: int, job: Job) -> JobResult:
        from search.backends.inprocess import run_job

        return run_job(self.worker, slot, job)


class RayBackend:
    """``slots`` Ray actors, each with its own parents and evaluators."""

    def __init__(self, loaded: LoadedSpace, config: WorkerConfig, *, address: str | None = None) -> None:
        self.loaded = loaded
        self.space = loaded.space
        self.config = config
        self.address = address if address is not None else self.space.ray_address
        self.embedded = self.address is None
        self.actors: list[Any] = []
        self._refs: dict[Any, int] = {}
        self._jobs: dict[int, Job] = {}
        self.slots = self.space.resources.workers or 1
        self._connected_here = False
        self._lost: set[int] = set()
        self._actor_cls: Any = None
        self._actor_config: WorkerConfig | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        import ray

        if self.actors:  # started already (the search started it; selection goes on with the same actors)
            return
        if not ray.is_initialized():
            self._connected_here = True
            if self.embedded:
                os.environ.update(EMBEDDED_ENV)
                ray.init(num_cpus=self._embedded_cpus(), include_dashboard=False, _temp_dir=str(self._temp_dir()),
                         _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False)
        resources = self.space.resources
        gpus = resources.gpus_per_worker
        if self.space.resources.workers is None:
            total_gpus = int(ray.cluster_resources().get("GPU", 0))
            if total_gpus and gpus == 0:
                gpus = 1
            self.slots = max(1, total_gpus // max(1, int(gpus))) if total_gpus else 1
        device = "cuda" if gpus > 0 else "cpu"
        # each actor's share of the cores: its cpus_per_worker, and (embedded: all actors on this machine) no more
        # than cores / actors, so actors never oversubscribe the machine they share
        cores = available_cores() if self.embedded else int(resources.cpus_per_worker * self.slots)
        threads = thread_share(cores, self.slots, resources.cpus_per_worker)
        config = WorkerConfig(**{**self.config.__dict__, "device": device,
                                 "extra": {**self.config.extra, "torch_threads": threads}})
        # gpus_per_worker: N > 1 asks Ray for N whole GPUs; the actor shards its model over the N it is given
        actor_cls = ray.remote(_WorkerActor).options(num_cpus=resources.cpus_per_worker, num_gpus=gpus,
                                                     max_restarts=3, max_task_retries=0)
        self._actor_cls, self._actor_config = actor_cls, config
        self.actors = [actor_cls.remote(config) for _ in range(self.slots)]
        try:  # surface bad input (a UserError in a constructor) now, not at the first job
            ray.get([a.pid.remote() for a in self.actors])
        except ray.exceptions.RayActorError as exc:
            cause = exc.__cause__ or exc
            self.close()
            if isinstance(cause, UserError) or "UserError" in str(exc):
                raise UserError(_first_line_of(exc)) from None
            raise

    def _embedded_cpus(self) -> int:
        per = self.space.resources.cpus_per_worker
        return max(1, int(round(per * self.slots)))

    def _temp_dir(self) -> Path:
        """Ray's temp folder, under the run folder. Ray puts unix sockets there, whose paths are limited to ~107
        bytes: a long run-folder path is reached through a short symlink in /tmp instead."""
        wanted = Path(self.loaded.output).resolve() / "ray"
        wanted.mkdir(parents=True, exist_ok=True)
        if len(str(wanted)) + 70 < _SOCKET_PATH_LIMIT:
            return wanted
        link = Path(tempfile.gettempdir()) / f"ms-ray-{hashlib.sha1(str(wanted).encode()).hexdigest()[:10]}"
        if link.is_symlink() and link.resolve() != wanted:
            link.unlink()
        if not link.is_symlink():
            link.symlink_to(wanted, target_is_directory=True)
        return link

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - an actor already gone is fine
                pass
        self.actors = []
        self._refs.clear()
        # An embedded instance stops here; a cluster keeps running (shutdown only disconnects this driver).
        if self._connected_here and ray.is_initialized():
            ray.shutdown()

    # -- jobs --------------------------------------------------------------------------------------------------
    def submit(self, slot: int, job: Job) -> None:
        if slot in self._lost:
            self._revive(slot)
        ref = self.actors[slot].run.remote(slot, job)
        self._refs[ref] = slot
        self._jobs[slot] = job

    def wait(self) -> JobResult:
        import ray

        ready, _ = ray.wait(list(self._refs), num_returns=1)
        ref = ready[0]
        slot = self._refs.pop(ref)
        job = self._jobs.pop(slot)
        try:
            return ray.get(ref)
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.ObjectLostError) as exc:
            self._lost.add(slot)
            return JobResult(slot, job, error=f"worker died: {_first_line_of(exc)}", worker_lost=True)
        except ray.exceptions.OutOfMemoryError as exc:
            self._lost.add(slot)
            return JobResult(slot, job, error=f"out of memory: {_first_line_of(exc)}", worker_lost=True)

    def _revive(self, slot: int, timeout: float = 600) -> None:
        """Wait for Ray to restart a dead actor (it reloads the parents); replace it if Ray gave up on it."""
        import ray

        self._lost.discard(slot)
        try:
            ray.get(self.actors[slot].pid.remote(), timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            self.actors[slot] = self._actor_cls.remote(self._actor_config)
            ray.get(self.actors[slot].pid.remote(), timeout=timeout)

    def actor_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])


def _first_line_of(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return next((line for line in text if "Error" in line), text[0] if text else type(exc).__name__)[:300]
