"""This task's splits (search.jsonl, heldout.jsonl beside this file), for lm-eval.

Written by `python -m search.demo.tasks`; the task YAMLs name it as `custom_dataset: !function data.load`.
"""

from pathlib import Path

from evaluators.local_data import load_jsonl_splits


def load(**_: object) -> object:  # lm-eval passes the task's metadata as keywords: not needed here
    return load_jsonl_splits(Path(__file__).resolve().parent)
