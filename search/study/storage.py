"""The run folder: the space as given, the resolved configuration, the study journal, and a lock.

```
RUN_DIR/
  space.yaml        the space file as given (copied at the first start)
  resolved.json     the validated space with absolute paths, and its fingerprint
  study.journal     Optuna JournalStorage: an append-only log of every trial event (replayable, resumable)
  .lock             held by the driver while it runs (one driver per run); records its pid, host and start
```

A run killed at any point (kill -9 included) loses no finished trial: each tell is appended to the journal
before the next trial starts. A kill (or a full disk) during a write can leave the journal's last record torn;
the next driver cuts it off before appending (keeping the original beside it, see :func:`repair_torn_tail`), so
the trial it belonged to is retried. Records torn in the middle (appended after by older versions) are recovered
around by ``search repair RUN_DIR`` (:func:`repair_journal`). Starting again on the same space resumes; a changed
space is refused with what changed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from search.config.space import LoadedSpace, Space, study_defining
from search.errors import UserError

JOURNAL = "study.journal"
RESOLVED = "resolved.json"
SPACE_COPY = "space.yaml"
STUDY_NAME = "merge-search"
LOCK = ".lock"


def open_storage(run_dir: Path, space: Space | None = None) -> Any:
    """The run's Optuna storage: the journal file in the run folder, or the URL the space names.

    A journal damaged before its last record (which Optuna cannot replay) is refused with the repair command; a
    torn last record is left to Optuna, which skips it when reading (a driver cuts it off before appending).
    """
    import optuna

    journal = journal_path(run_dir, space)
    if journal is None:
        return optuna.storages.RDBStorage(space.storage)  # type: ignore[union-attr]
    if journal.exists():
        health = check_journal(journal)
        if health.damaged:
            raise damaged_error(health, run_dir)
    return optuna.storages.JournalStorage(journal_backend(journal))


def journal_path(run_dir: Path, space: Space | None = None) -> Path | None:
    """The journal file a run's storage uses (None for an RDB storage)."""
    if space is not None and space.storage:
        return Path(space.storage.removeprefix("journal:")) if space.storage.startswith("journal:") else None
    return Path(run_dir) / JOURNAL


def journal_backend(path: Path) -> Any:
    """A journal file whose write lock, if left behind by a killed process, is broken after a few seconds.

    Writes hold the lock for milliseconds and one driver runs per run folder (see :func:`run_lock`), so a lock
    older than the grace period is stale; Optuna's default (30 s) would stall every resume after a kill -9.
    """
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    return JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path), grace_period=5))


def check_same_space(loaded: LoadedSpace) -> bool:
    """Whether the run folder holds a study already; one of another space is refused with what changed."""
    run_dir = loaded.output
    existing = run_dir / RESOLVED
    if not existing.exists():
        return False
    try:
        before = read_resolved(run_dir)  # an old run folder reads as two-role (config/legacy.py)
    except ValueError:
        raise UserError(f"'{existing}' is not valid JSON", file=loaded.file, field="output",
                        fix="restore it from a backup, or give a new output folder") from None
    resolved = resolved_config(loaded)
    changes = _differences(before.get("space", {}), resolved["space"])
    if before.get("fingerprint") != resolved["fingerprint"] and changes:
        shown = "; ".join(changes[:5])
        raise UserError(f"the run folder '{run_dir}' holds a study of another space ({shown})",
                        file=loaded.file, field="output",
                        fix="start it with the space it was made with, or give a new output folder")
    return True


def prepare_run_dir(loaded: LoadedSpace) -> tuple[Path, bool]:
    """Create the run folder, or check that the existing one holds the same space. Returns (dir, resuming)."""
    run_dir = loaded.output
    resolved = resolved_config(loaded)
    existing = run_dir / RESOLVED
    if check_same_space(loaded):
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
    if loaded.space.base_model is not None:  # without one, the run stays baseless (the first model is a reference)
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


# --- the driver's lock ------------------------------------------------------------------------------------
@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock: a second driver on the same run folder is refused, not interleaved.

    The file is opened without truncation and written only once the lock is ours, so a refused driver leaves
    the running one's record (pid, host, start) intact. The lock is an ``flock``: the kernel drops it when the
    driver dies, however it dies, so :func:`driver_of` tells a live driver from a stale file.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as handle:
        if not _try_lock(handle, fcntl.LOCK_EX, patience=1.0):
            holder = _describe(_read_lock(handle))
            raise UserError(f"another `search` process{holder} is running the study in '{run_dir}'",
                            field="output", fix=f"wait for it to finish (see `search status {run_dir}`), or stop "
                                                "it first")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def driver_of(run_dir: Path) -> dict[str, Any] | None:
    """The live driver of a run (its lock record: pid, host, started), or None when no driver holds the lock.

    Reads only: takes a shared lock for an instant to test whether a driver holds the exclusive one.
    """
    path = Path(run_dir) / LOCK
    if not path.exists():
        return None
    with open(path) as handle:
        if _try_lock(handle, fcntl.LOCK_SH, patience=0.0):
            fcntl.flock(handle, fcntl.LOCK_UN)
            return None
        return _read_lock(handle) or {}


def _try_lock(handle: Any, kind: int, *, patience: float) -> bool:
    # A reader (`search status`) holds a shared lock for microseconds: a starting driver waits that out.
    deadline = time.monotonic() + patience
    while True:
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _read_lock(handle: Any) -> dict[str, Any]:
    handle.seek(0)
    text = handle.read().strip()
    if text.isdigit():  # written by older versions: the pid alone
        return {"pid": int(text)}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    parts = [f"pid {info['pid']}" if "pid" in info else "", f"on {info['host']}" if "host" in info else "",
             f"since {info['started']}" if "started" in info else ""]
    text = " ".join(p for p in parts if p)
    return f" ({text})" if text else ""


# --- journal health and repair ----------------------------------------------------------------------------
@dataclass
class JournalHealth:
    """What a scan of the journal found: where its torn tail starts (if any) and which lines are damaged."""

    path: Path
    size: int
    records: int
    torn_tail: int | None = None  # byte offset of a torn last record
    damaged: list[int] = field(default_factory=list)  # 1-based numbers of damaged lines before the last one

    @property
    def healthy(self) -> bool:
        return self.torn_tail is None and not self.damaged


def _record(line: bytes) -> bool:
    if not line.endswith(b"\n"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def check_journal(path: Path) -> JournalHealth:
    """Scan a journal file: every record is one JSON object on a line that ends with a newline."""
    data = path.read_bytes() if path.exists() else b""
    lines = data.splitlines(keepends=True)
    health = JournalHealth(path=path, size=len(data), records=0)
    offset = 0
    for number, line in enumerate(lines, start=1):
        if _record(line):
            health.records += 1
        elif number == len(lines) and _glued_record(line) is None:
            health.torn_tail = offset  # (a whole record glued after torn bytes is damage to recover, not cut)
        else:
            health.damaged.append(number)
        offset += len(line)
    return health


def _backup(path: Path, tag: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    backup = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.{tag}-{stamp}.{n}")
        n += 1
    shutil.copy2(path, backup)
    return backup


def damaged_error(health: JournalHealth, run_dir: Path) -> UserError:
    shown = ", ".join(str(n) for n in health.damaged[:5]) + (" ..." if len(health.damaged) > 5 else "")
    return UserError(f"the study journal '{health.path}' has {len(health.damaged)} damaged record(s) before its "
                     f"end (line {shown}), as older versions left after resuming on a torn record",
                     field="study.journal",
                     fix=f"run `search repair {run_dir}` (it recovers the records around the damage and keeps the "
                         "original as a backup), then start again")


def repair_torn_tail(path: Path, run_dir: Path) -> str | None:
    """Cut a torn last record off the journal before anything is appended after it; keep the original.

    Call only while holding :func:`run_lock` (no writer is mid-record then). Returns what was done, for the
    user, or None when the journal was whole. Damage before the last record is refused with the repair command.
    """
    health = check_journal(path)
    if health.damaged:
        raise damaged_error(health, run_dir)
    if health.torn_tail is None:
        return None
    backup = _backup(path, "torn")
    with open(path, "r+b") as f:
        f.truncate(health.torn_tail)
        f.flush()
        os.fsync(f.fileno())
    cut = health.size - health.torn_tail
    return (f"the journal's last record was torn (a kill or a full disk during a write): cut off its {cut} bytes; "
            f"the original is kept as {backup.name}. The trial it belonged to is retried.")


def repair_before_start(run_dir: Path, space: Space | None = None) -> str | None:
    """Cut a torn last record (:func:`repair_torn_tail`) under the run lock, before a start reads the study — also
    when the run turns out finished and appends nothing. Returns the note for the user, or None."""
    journal = journal_path(run_dir, space)
    if journal is None or not journal.exists() or check_journal(journal).torn_tail is None:
        return None
    with run_lock(run_dir):
        return repair_torn_tail(journal, run_dir)


@dataclass
class Repair:
    """What :func:`repair_journal` did."""

    records: int
    recovered: int
    dropped: int
    dropped_bytes: int
    backup: Path | None


def repair_journal(path: Path) -> Repair:
    """Rewrite a damaged journal: keep every whole record, recover one glued after a torn record, drop the rest.

    A torn record is one the driver that wrote it died during; the next driver's reads skipped it, so dropping
    it replays what that driver saw. Older versions appended right after the torn bytes, gluing their first
    record to it: that record is recovered from the line's tail. The result must replay in Optuna, else nothing
    is changed. The original is kept beside it (``study.journal.damaged-<time>``).
    """
    import optuna

    data = path.read_bytes()
    kept: list[bytes] = []
    recovered = dropped = dropped_bytes = 0
    for line in data.splitlines(keepends=True):
        if _record(line):
            kept.append(line)
            continue
        tail = _glued_record(line)
        if tail is not None:
            kept.append(tail)
            recovered += 1
            dropped_bytes += len(line) - len(tail)
        else:
            dropped += 1
            dropped_bytes += len(line)
    if recovered == dropped == 0:
        return Repair(records=len(kept), recovered=0, dropped=0, dropped_bytes=0, backup=None)
    tmp = path.with_name(path.name + ".repair.tmp")
    tmp.write_bytes(b"".join(kept))
    try:
        storage = optuna.storages.JournalStorage(journal_backend(tmp))
        for summary in storage.get_all_studies():
            storage.get_all_trials(storage.get_study_id_from_name(summary.study_name), deepcopy=False)
    except Exception as exc:  # the journal is user data: say what failed, change nothing
        tmp.unlink(missing_ok=True)
        raise UserError(f"the repaired journal does not replay in Optuna ({type(exc).__name__}: {exc}); "
                        f"'{path}' is left as it was", field="study.journal",
                        fix="keep the run folder and report the problem; start a new run folder meanwhile") \
            from None
    backup = _backup(path, "damaged")
    os.replace(tmp, path)
    return Repair(records=len(kept), recovered=recovered, dropped=dropped, dropped_bytes=dropped_bytes,
                  backup=backup)


def _glued_record(line: bytes) -> bytes | None:
    """The whole record at the end of a line that starts with torn bytes, if there is one."""
    if not line.endswith(b"\n"):
        return None
    start = line.find(b'{"op_code"', 1)
    while start != -1:
        if _record(line[start:]):
            return line[start:]
        start = line.find(b'{"op_code"', start + 1)
    return None
