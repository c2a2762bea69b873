"""The evaluator registry: the one build function, from a spec (``evaluators/specs.py``) to its implementation.

A space file names its evaluators as plain data; ``build_evaluator`` validates it and builds the evaluator once
per worker. Relative paths are read from the folder of ``config_file`` (the current folder when None).

>>> spec = parse_evaluator_spec({"type": "lm_eval", "task": "demo_add", "include_path": "tasks/"})
>>> spec.type, spec.split_map
('lm_eval', None)
>>> ev = build_evaluator(spec, device="cpu")                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.specs import (  # the specs live apart, so that the implementations import them, not this module
    EVALUATOR_TYPES,
    EvaluatorSpec,
    LmEvalSpec,
    PerplexitySpec,
    PythonSpec,
    RoleFractions,
    SpecContext,
    SplitMap,
    parse_evaluator_spec,
)

if TYPE_CHECKING:
    from evaluators.protocol import Evaluator


def build_evaluator(spec: Mapping[str, Any] | LmEvalSpec | PerplexitySpec | PythonSpec, *, device: str = "cpu",
                    config_file: str | Path | None = None, field: str = "evaluator") -> Evaluator:
    """Build an evaluator once (tasks, data, splits); then call ``score`` as often as the weights change.

    ``device`` is where the scored models live; ``config_file`` (the space file) anchors relative paths and
    names the file in errors; ``field`` is the spec's place in that file, for errors.
    """
    parsed = parse_evaluator_spec(spec, file=config_file, field=field)
    base_dir = Path(config_file).resolve().parent if config_file is not None else Path.cwd()
    ctx = SpecContext(file=config_file, field=field, base_dir=base_dir)
    if parsed.type == "lm_eval":
        from evaluators.lm_eval import LmEvalEvaluator

        return LmEvalEvaluator(parsed, device=device, ctx=ctx)
    if parsed.type == "perplexity":
        from evaluators.perplexity import PerplexityEvaluator

        return PerplexityEvaluator(parsed, device=device, ctx=ctx)
    from evaluators.python_fn import PythonEvaluator

    return PythonEvaluator(parsed, device=device, ctx=ctx)


__all__ = ["EVALUATOR_TYPES", "EvaluatorSpec", "LmEvalSpec", "PerplexitySpec", "PythonSpec", "RoleFractions",
           "SpecContext", "SplitMap", "build_evaluator", "parse_evaluator_spec"]
