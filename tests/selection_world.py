"""A finished study on tiny real models for the selection, export and report tests (built once a session)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

_BUILT: dict[str, Path] = {}


def _texts(path: Path, letters: str, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(6)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")


def write_space(root: Path, base: Path, fts: list[Path], **changes: Any) -> Path:
    """Two perplexity objectives on different texts, TA + TIES, layer groups x module kinds, baselines on."""
    _texts(root / "abc.jsonl", "abcde", 30, 1)
    _texts(root / "xyz.jsonl", "vwxyz", 30, 2)
    space: dict[str, Any] = {
        "base_model": str(base),
        "models": {"a": str(fts[0]), "b": str(fts[1])},
        "methods": {"task_arithmetic": {"weight": [0.0, 1.5]},
                    "ties": {"weight": [0.0, 1.5], "density": [0.3, 1.0]}},
        "granularity": {"layer_groups": 2, "module_kinds": True},
        "objectives": [
            {"name": "abc", "evaluator": {"type": "perplexity", "data": "abc.jsonl", "max_length": 64},
             "metric": "perplexity", "direction": "minimize"},
            {"name": "xyz", "evaluator": {"type": "perplexity", "data": "xyz.jsonl", "max_length": 64},
             "metric": "perplexity", "direction": "minimize"},
        ],
        "sampler": {"name": "nsgaii"},
        "pruner": {"name": "none", "slices": [1.0]},
        "budget": {"trials": 10},
        "output": "run",
        "seed": 3,
    }
    space.update(changes)
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def finished_run(root: Path, family: tuple[Path, list[Path]], key: str = "pareto", **changes: Any) -> Path:
    """Run (once per key and session) a study to its budget; returns the run folder (read-only for tests)."""
    if key in _BUILT:
        return _BUILT[key]
    from search.config.space import load_space
    from search.study.loop import run_study

    base, fts = family
    root.mkdir(parents=True, exist_ok=True)
    with one_thread():
        run_study(load_space(write_space(root, base, fts, **changes)), progress=False)
    _BUILT[key] = root / "run"
    return _BUILT[key]


@contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny models on a shared 2-core machine run several times faster so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def selected_run(root: Path, family: tuple[Path, list[Path]], key: str = "pareto", **changes: Any) -> Path:
    """``finished_run`` followed by ``select_run`` and the report (once per key and session)."""
    marker = f"{key}:selected"
    if marker in _BUILT:
        return _BUILT[marker]
    from search.report.render import render_report
    from search.selection.select import select_run

    run = finished_run(root, family, key, **changes)
    with one_thread():
        render_report(run, selection=select_run(run, progress=False))
    _BUILT[marker] = run
    return run
