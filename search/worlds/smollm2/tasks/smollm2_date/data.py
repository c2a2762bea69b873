"""This task's documents (search.jsonl, select.jsonl, test.jsonl beside this file) and scoring functions,
for lm-eval. Written by `python -m search.worlds.smollm2.tasks`; the functions live in task_functions.py."""

from pathlib import Path

from search.worlds.smollm2.task_functions import answer_logprob, refusal, split_loader

load = split_loader(Path(__file__).resolve().parent)
__all__ = ["load", "refusal", "answer_logprob"]
