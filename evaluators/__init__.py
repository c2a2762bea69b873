"""Evaluators: score a live model on a split, built once, called as its weights change.

The face of the package. Importing it is light (pydantic only): lm-eval and torch load when an evaluator of
a kind that needs them is built or called.

>>> from evaluators import build_evaluator, slice_size
>>> ev = build_evaluator({"type": "lm_eval", "task": "demo_add", "include_path": "evaluators/tasks"})  # doctest: +SKIP
>>> k = slice_size(ev.num_docs("search"), 0.1)                                                          # doctest: +SKIP
>>> ev.score(model, tokenizer, "search", limit=k)                                                       # doctest: +SKIP
"""

from __future__ import annotations

from evaluators.protocol import SPLIT_NAMES, Evaluator, SplitName, resolve_limit, slice_size
from evaluators.registry import (
    EVALUATOR_TYPES,
    EvaluatorSpec,
    LmEvalSpec,
    PerplexitySpec,
    PythonSpec,
    SplitMap,
    build_evaluator,
    parse_evaluator_spec,
)

__all__ = [
    "EVALUATOR_TYPES",
    "SPLIT_NAMES",
    "Evaluator",
    "EvaluatorSpec",
    "LmEvalSpec",
    "PerplexitySpec",
    "PythonSpec",
    "SplitMap",
    "SplitName",
    "build_evaluator",
    "parse_evaluator_spec",
    "resolve_limit",
    "slice_size",
]
