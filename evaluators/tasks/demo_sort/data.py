"""Load this task's splits (search.jsonl, heldout.jsonl next to this file) for lm-eval.

Written by `python -m search.demo.tasks`; the task YAMLs name it as `custom_dataset: !function data.load`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

HERE = Path(__file__).resolve().parent


def load(**_: Any) -> datasets.DatasetDict:
    """Both splits as a DatasetDict; lm-eval passes the task metadata as keywords, which are not needed."""
    splits = {}
    for split in ("search", "heldout"):
        rows = [json.loads(line) for line in (HERE / f"{split}.jsonl").read_text().splitlines() if line]
        splits[split] = datasets.Dataset.from_list(rows)
    return datasets.DatasetDict(splits)
