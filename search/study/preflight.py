"""Checks a `search start` makes before it loads a model or a task, or writes anything.

Each refuses bad input with a :class:`~search.errors.UserError` (file, field, fix → exit code 2): a device the
machine lacks, an output that is a file or cannot be created, an lm-eval task no one defines, a run folder whose
driver is still alive.

On a machine without CUDA:

>>> check_device("cuda", file="space.yaml")        # doctest: +SKIP
search.errors.UserError: space.yaml: field 'device': CUDA is not available on this machine. Fix: ...
"""

from __future__ import annotations

import difflib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from search.config.space import LoadedSpace
from search.errors import UserError


def check_device(device: str, *, file: str | Path | None, field: str = "device", local: bool = True) -> None:
    """The device names one torch knows and, when the work runs here (``local``), one this machine has."""
    if device in ("auto", "cpu"):
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"'{device}' is not a device", file=file, field=field,
                        fix="write auto (CUDA when present), cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device type '{dev.type}' is not supported", file=file, field=field,
                        fix="write auto, cpu, cuda or cuda:N")
    if not local:
        return  # Ray workers on other nodes: their devices are checked there
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("CUDA is not available on this machine", file=file, field=field,
                            fix="use device: auto (CUDA when present, else CPU) or cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UserError(f"there is no '{device}': this machine has {count} CUDA device(s)", file=file,
                            field=field, fix=f"use cuda:0 to cuda:{count - 1}, or auto")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("MPS is not available on this machine", file=file, field=field, fix="use auto or cpu")


def check_output(out: Path, *, file: str | Path | None, field: str = "output") -> None:
    """The run folder is a folder (or can be made one) that this process can write into. Leaves nothing behind."""
    out = Path(out)
    probe_in = out
    if out.exists():
        if not out.is_dir():
            raise UserError(f"'{out}' is a file, not a folder", file=file, field=field,
                            fix="name a new folder (or the folder of an earlier run) for the run")
    else:
        probe_in = out.parent
        while not probe_in.exists() and probe_in != probe_in.parent:
            probe_in = probe_in.parent
        if not probe_in.is_dir():
            raise UserError(f"cannot create '{out}': '{probe_in}' is a file", file=file, field=field,
                            fix="name a folder under a writable folder")
    try:  # os.access says yes to root on read-only or virtual file systems (/proc): try it for real
        os.rmdir(tempfile.mkdtemp(prefix=".search-probe-", dir=probe_in))
    except OSError as exc:
        raise UserError(f"cannot write the run folder '{out}' ({exc.strerror} in '{probe_in}')", file=file,
                        field=field, fix="name a folder on a writable disk") from None


def check_not_running(run_dir: Path, *, file: str | Path | None) -> None:
    """Refuse at once (before loading anything) when a live driver holds the run folder's lock."""
    from search.study.storage import driver_of

    holder = driver_of(run_dir)
    if holder is not None:
        pid = f" (pid {holder['pid']})" if "pid" in holder else ""
        raise UserError(f"another `search` process{pid} is running the study in '{run_dir}'", file=file,
                        field="output", fix=f"wait for it to finish (see `search status {run_dir}`), or stop it "
                                            "first")


# --- lm-eval task names ----------------------------------------------------------------------------------
def check_lm_eval_tasks(loaded: LoadedSpace, *, full_index: Callable[[], Iterable[str]] | None = None) -> None:
    """Every lm-eval task an objective names exists, found as cheaply as possible.

    A name in the objective's ``include_path`` folders is found in milliseconds (``TaskManager`` with
    ``include_defaults=False``); one written in a ``task:``/``group:``/``tag:`` line of lm-eval's own task files in
    about a second. Only a name found in neither makes the full index of lm-eval's tasks be built (once; tens of
    seconds), to refuse it with a "did you mean" or to accept a task whose name lm-eval generates.
    """
    from evaluators.registry import parse_evaluator_spec

    pending: list[tuple[int, str, set[str]]] = []
    for i, obj in enumerate(loaded.space.objectives):
        where = f"objectives[{i}].evaluator"
        spec = parse_evaluator_spec(obj.evaluator, file=loaded.file, field=where)
        if spec.type != "lm_eval":
            continue
        local = _local_tasks(spec.include_path, loaded.file, f"{where}.include_path")
        pending += [(i, name, local) for name in spec.task_names if name not in local]
    if not pending:
        return
    written = _builtin_names_written()
    pending = [p for p in pending if p[1] not in written]
    if not pending:
        return
    everything = set(full_index() if full_index is not None else _full_index())
    for i, name, local in pending:
        if name not in everything:
            close = difflib.get_close_matches(name, sorted(everything | local | written), n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UserError(f"unknown lm-eval task {name!r}", file=loaded.file,
                            field=f"objectives[{i}].evaluator.task",
                            fix=f"{hint}give a task of lm-eval or of a folder in include_path")


def _local_tasks(include_path: str | list[str] | None, file: Path, field: str) -> set[str]:
    if include_path is None:
        return set()
    from lm_eval.tasks import TaskManager

    base = Path(file).resolve().parent
    paths = []
    for raw in [include_path] if isinstance(include_path, str) else include_path:
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_dir():
            raise UserError(f"folder {str(p)!r} does not exist", file=file, field=field,
                            fix="give a folder of lm-eval task YAML files")
        paths.append(str(p))
    return set(TaskManager(include_path=paths, include_defaults=False).all_tasks)


_NAME_LINE = re.compile(rb"^\s*-?\s*['\"]?(?:task|group|tag)['\"]?\s*:\s*['\"]?([^'\"\s#]+)", re.M)
_LIST_ITEM = re.compile(rb"^\s*-\s+['\"]?([A-Za-z0-9_\-\.]+)['\"]?\s*$", re.M)


def _builtin_names_written() -> set[str]:
    """Names written literally in lm-eval's task YAML files (a fast subset of its index; no YAML is parsed)."""
    import lm_eval.tasks

    names: set[str] = set()
    for dirpath, _, files in os.walk(Path(lm_eval.tasks.__file__).parent):
        for name in files:
            if name.endswith((".yaml", ".yml")):
                data = Path(dirpath, name).read_bytes()
                names.update(m.decode(errors="replace") for m in _NAME_LINE.findall(data))
                names.update(m.decode() for m in _LIST_ITEM.findall(data))
    return names


def _full_index() -> list[str]:
    from lm_eval.tasks import TaskManager

    return list(TaskManager(include_defaults=True).all_tasks)

