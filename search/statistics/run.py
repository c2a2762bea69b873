"""Compute a run's statistics once, on a worker's own parents and working model, or reuse the file already there.

>>> ensure_statistics(worker.parents, worker.model, worker.tokenizer, texts, {"gram": path},   # doctest: +SKIP
...                   max_length=256)
{'gram': 'computed'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search.statistics.calibration import texts_digest
from search.statistics.compute import fisher_pass, gram_pass
from search.statistics.store import load_statistics, read_metadata, save_statistics

PASSES = {"fisher": fisher_pass, "gram": gram_pass}


def ensure_statistics(parents: Any, model: Any, tokenizer: Any, texts: Sequence[str], files: Mapping[str, str | Path],
                      *, max_length: int, progress: bool = True, labels: Sequence[str] = ()) -> dict[str, str]:
    """For each kind in ``files``: reuse its file when it was computed on these very texts, else compute every
    parent's statistics (writing each parent into ``model`` in turn; the model then holds the last parent) and
    write the file. The statistics are attached to ``parents`` either way. Returns kind -> computed | reused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not texts:
        raise ValueError("the calibration source gave no text")
    digest = texts_digest(list(texts))
    status: dict[str, str] = {}
    for kind, path in files.items():
        path = Path(path)
        if path.exists() and read_metadata(path).get("texts") == digest:
            status[kind] = "reused"
        else:
            per_parent = []
            columns = (TextColumn(f"[bold]statistics[/] {kind} (once per run)"), BarColumn(), MofNCompleteColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, disable=not progress) as bar:
                task = bar.add_task(kind, total=parents.num_models * len(texts))
                for i in range(parents.num_models):
                    parents.write_parent(model, i)
                    per_parent.append(PASSES[kind](model, tokenizer, texts, max_length, parents.names,
                                                   advance=lambda: bar.advance(task)))
            save_statistics(path, kind, per_parent, texts=digest, documents=len(texts), labels=labels)
            status[kind] = "computed"
        parents.attach_statistics(load_statistics(path, parents.num_models, devices=parents.tensor_devices()))
    return status
