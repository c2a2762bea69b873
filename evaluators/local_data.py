"""Split files of a local lm-eval task: ``<split>.jsonl`` beside the task YAML, loaded as one DatasetDict.

A task folder's ``data.py`` (named by its YAML as ``custom_dataset: !function data.load``, which lm-eval resolves
against the YAML's own folder, so it works from any working directory) is two lines that call this.

>>> load_jsonl_splits(Path("evaluators/tasks/demo_add"))["search"].num_rows     # doctest: +SKIP
200
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def load_jsonl_splits(folder: Path, splits: Sequence[str] = ("search", "heldout")) -> Any:
    """Every ``<split>.jsonl`` of ``folder`` as a ``datasets.DatasetDict`` keyed by split name."""
    import datasets

    out = {}
    for split in splits:
        rows = [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines() if line]
        out[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(out)
