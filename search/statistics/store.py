"""Statistics files in the run folder: where they live, the key that names them, and reading and writing them.

One safetensors file per kind (``fisher``, ``gram``) holds every parent's statistics (tensor ``"{i}/{name}"`` for
parent ``i`` in the space's model order), never a pickle. Its name carries a key over what determines it: the
kind, the parents (each file's path, size and modification time), the storage dtype and the calibration source
(the block, the jsonl file's content or the evaluator of the task). Change a parent or the calibration and the
key changes, so a stale file is never read; a resumed run, every trial and every Ray worker read the same file.
The file also records a digest of the very texts it was computed on: the worker that computes checks it before
reusing a file (a task's data edited in place changes the texts, not the key).

>>> statistics_path(Path("results/run"), "gram", "3f2a9c0d1e4b5a67")
PosixPath('results/run/statistics/gram-3f2a9c0d1e4b5a67.safetensors')
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

STATISTICS_DIR = "statistics"


def statistics_path(run_dir: str | Path, kind: str, key: str) -> Path:
    """Where a run keeps its statistics of one kind (the one place that names it)."""
    return Path(run_dir) / STATISTICS_DIR / f"{kind}-{key}.safetensors"


def _files_of(path: str | Path) -> list[tuple[str, int, int]]:
    """(path, size, mtime_ns) of a parent's files (a folder's top-level files; ``MODEL+ADAPTER``: both)."""
    p = Path(path)
    parts = [p] if p.exists() else [Path(s) for s in str(path).split("+")]
    out = []
    for part in parts:
        files = sorted(f for f in part.iterdir() if f.is_file()) if part.is_dir() else [part]
        for f in files:
            if f.exists():
                st = f.stat()
                out.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return out


def statistics_key(kind: str, *, base: str | Path, models: Sequence[str | Path], dtype: str,
                   calibration: Mapping[str, Any], source: Any) -> str:
    """A 16-hex key over everything a statistics file depends on (see the module docstring)."""
    data = {"kind": kind, "dtype": dtype, "base": _files_of(base), "models": [_files_of(m) for m in models],
            "calibration": dict(calibration), "source": source, "format": 1}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def calibration_source(calibration: Any, space_file: str | Path, objectives: Sequence[Any]) -> Any:
    """What the calibration texts come from, as plain data for the key: the jsonl file's sha256, or the
    evaluator spec of the first lm-eval objective that scores the task."""
    if calibration.jsonl is not None:
        from search.statistics.calibration import jsonl_path

        return hashlib.sha256(jsonl_path(calibration, space_file).read_bytes()).hexdigest()
    return next(dict(o.evaluator) for o in objectives if calibration.task in evaluator_tasks(o.evaluator))


def evaluator_tasks(evaluator: Mapping[str, Any]) -> list[str]:
    """The lm-eval task names an evaluator spec scores (none for other evaluator types)."""
    if evaluator.get("type") != "lm_eval":
        return []
    task = evaluator.get("task")
    return [task] if isinstance(task, str) else list(task or [])


@dataclass
class Statistics:
    """One kind of statistics for ``k`` parents: per tensor name, the parents' values stacked ``(k, ...)``."""

    kind: str
    per_tensor: dict[str, torch.Tensor]
    texts: str  # digest of the calibration texts
    k: int
    _norms: torch.Tensor | None = field(default=None, repr=False)

    def for_tensor(self, name: str) -> dict[str, torch.Tensor]:
        """What a method reads for one tensor (``TensorParams.statistics``): nothing when it has none."""
        if name not in self.per_tensor:
            return {}
        out = {self.kind: self.per_tensor[name]}
        if self.kind == "fisher":
            out["fisher_norm"] = self.norms
        return out

    @property
    def norms(self) -> torch.Tensor:
        """Fisher: each parent's L2 norm over all its tensors (FusionBench's normalisation), computed once."""
        if self._norms is None:
            squares = torch.zeros(self.k, dtype=torch.float64)
            for value in self.per_tensor.values():
                squares += value.reshape(self.k, -1).double().square().sum(1).cpu()
            self._norms = squares.sqrt()
        return self._norms


def save_statistics(path: Path, kind: str, per_parent: Sequence[Mapping[str, torch.Tensor]], *, texts: str,
                    documents: int, labels: Sequence[str]) -> None:
    """Write every parent's statistics atomically (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    tensors = {f"{i}/{name}": t.detach().float().contiguous().cpu()
               for i, values in enumerate(per_parent) for name, t in values.items()}
    metadata = {"kind": kind, "texts": texts, "documents": str(documents), "parents": json.dumps(list(labels))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_statistics(path: Path, k: int, *, devices: Mapping[str, torch.device] | None = None) -> Statistics:
    """A statistics file, each tensor name's ``k`` parents stacked (on ``devices[name]`` when given)."""
    from safetensors import safe_open

    grouped: dict[str, list[torch.Tensor | None]] = {}
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        for key in f.keys():
            index, _, name = key.partition("/")
            grouped.setdefault(name, [None] * k)[int(index)] = f.get_tensor(key)
    per_tensor = {}
    for name, rows in grouped.items():
        if any(r is None for r in rows):
            raise ValueError(f"{path} lacks some parents' statistics of {name}: it was written for other parents")
        stacked = torch.stack(rows)  # type: ignore[arg-type]
        per_tensor[name] = stacked.to(devices[name]) if devices and name in devices else stacked
    return Statistics(kind=meta.get("kind", ""), per_tensor=per_tensor, texts=meta.get("texts", ""), k=k)
