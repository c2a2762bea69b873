"""The run folder: the space as given, the resolved configuration, the study journal, and a lock.

```
RUN_DIR/
  space.yaml        the space file as given (copied at the first start)
  resolved.json     the validated space with absolute paths, and its fingerprint
  study.journal     Optuna JournalStorage: an append-only log of every trial event (replayable, resumable)
  .lock             held by the driver while it runs (one driver per run)
```

A run killed at any point (kill -9 included) loses no finished trial: each tell is appended to the journal
before the next trial starts. Starting again on the same space resumes; a changed space is refused with what
changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from search.config.space import LoadedSpace, Space, study_defining
from search.errors import UserError

JOURNAL = "study.journal"
RESOLVED = "resolved.json"
SPACE_COPY = "space.yaml"
STUDY_NAME = "merge-search"


def open_storage(run_dir: Path, space: Space | None = None) -> Any:
    """The run's Optuna storage: the journal file in the run folder, or the URL the space names."""
    import optuna

    if space is not None and space.storage:
        url = space.storage
        if url.startswith("journal:"):
            return optuna.storages.JournalStorage(journal_backend(Path(url.removeprefix("journal:"))))
        return optuna.storages.RDBStorage(url)
    return optuna.storages.JournalStorage(journal_backend(run_dir / JOURNAL))


def journal_backend(path: Path) -> Any:
    """A journal file whose write lock, if left behind by a killed process, is broken after a few seconds.

    Writes hold the lock for milliseconds and one driver runs per run folder (see :func:`run_lock`), so a lock
    older than the grace period is stale; Optuna's default (30 s) would stall every resume after a kill -9.
    """
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path), grace_period=5))


def prepare_run_dir(loaded: LoadedSpace) -> tuple[Path, bool]:
    """Create the run folder, or check that the existing one holds the same space. Returns (dir, resuming)."""
    run_dir = loaded.output
    resolved = resolved_config(loaded)
    existing = run_dir / RESOLVED
    if existing.exists():
        before = read_resolved(run_dir)
        changes = _differences(before.get("space", {}), resolved["space"])
        if before.get("fingerprint") != resolved["fingerprint"] and changes:
            shown = "; ".join(changes[:5])
            raise UserError(f"the run folder '{run_dir}' holds a study of another space ({shown})",
                            file=loaded.file, field="output",
                            fix="start it with the space it was made with, or give a new output folder")
        # budget, backend and device may change on resume: record the latest
        existing.write_text(json.dumps(resolved, indent=2) + "\n")
        return run_dir, True
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(loaded.file, run_dir / SPACE_COPY)
    tmp = run_dir / (RESOLVED + ".tmp")
    tmp.write_text(json.dumps(resolved, indent=2) + "\n")
    os.replace(tmp, existing)
    return run_dir, False


def resolved_config(loaded: LoadedSpace) -> dict[str, Any]:
    data = loaded.space.model_dump(mode="json")
    data["base_model"] = str(loaded.base_model)
    data["models"] = {k: str(v) for k, v in loaded.models.items()}
    data["output"] = str(loaded.output)
    return {"fingerprint": loaded.fingerprint(), "space_file": str(loaded.file.resolve()), "space": data}


def read_resolved(run_dir: Path) -> dict[str, Any]:
    """``resolved.json``; a run folder from before the three roles reads as two-role (see config/legacy.py)."""
    from search.config.legacy import migrate_space

    file = Path(run_dir) / RESOLVED
    if not file.exists():
        raise UserError(f"'{run_dir}' is not a run folder (no {RESOLVED})", field="RUN_DIR",
                        fix="give the output folder of a `search start` run")
    resolved = json.loads(file.read_text())
    if "space" in resolved:
        resolved["space"] = migrate_space(resolved["space"])
    return resolved


def adopt_roles(loaded: LoadedSpace) -> LoadedSpace:
    """The space to run in ``loaded.output``: as given, or, to resume a run folder from before the three roles,
    with its evaluators read as they were then (two roles), so that the trials go on scoring the same split."""
    from search.config.legacy import is_two_role, two_role_evaluator

    file = loaded.output / RESOLVED
    if not file.exists() or not is_two_role(json.loads(file.read_text()).get("space", {})):
        return loaded
    objectives = [o.model_copy(update={"evaluator": two_role_evaluator(dict(o.evaluator))})
                  for o in loaded.space.objectives]
    return loaded.model_copy(update={"space": loaded.space.model_copy(update={"objectives": objectives})})


def load_run_space(run_dir: Path) -> Space:
    return Space.model_validate(read_resolved(run_dir)["space"])


def _differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    a = study_defining(Space.model_validate(before)) if before else {}
    b = study_defining(Space.model_validate(after))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}")
    return out


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock: a second driver on the same run folder is refused, not interleaved."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another `search` process is running the study in '{run_dir}'", field="output",
                            fix="wait for it to finish (see `search status`), or stop it first") from None
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
