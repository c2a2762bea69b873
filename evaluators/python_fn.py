"""Score a live model with a user's Python function on jsonl documents, split three ways (search / select / test) by content hash.

The function is named ``"package.module:function"`` (an importable module) or ``"path/to/file.py:function"``
(a file, relative to the space file's folder) and is called as ``function(model, tokenizer, docs)`` under
``torch.no_grad()``, ``docs`` being the chosen documents (each one JSON value from the file, in our fixed order).
It returns ``{metric name: number}``.

>>> # my_metrics.py:  def keyword_rate(model, tokenizer, docs): return {"rate": ...}
>>> ev = build_evaluator({"type": "python", "function": "my_metrics.py:keyword_rate",
...                       "data": "prompts.jsonl"})                                      # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import numbers
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evaluators.protocol import SplitName, check_device, check_split, resolve_limit
from evaluators.specs import PythonSpec, SpecContext
from evaluators.splits import fingerprint, first, role_orders

_FIX_REF = "write 'package.module:function' (an importable module) or 'path/to/file.py:function'"


def load_function(ref: str, ctx: SpecContext) -> Callable[..., Any]:
    """Import the function ``ref`` names; a UserError on field ``function`` says what is wrong."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise ctx.error("function", f"{ref!r} is not 'module:function'", _FIX_REF)
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = ctx.path(target)
        if not path.is_file():
            raise ctx.error("function", f"file {str(path)!r} does not exist", _FIX_REF)
        # A stable, unique module name per file, so two files both called metrics.py do not collide.
        name = f"merge_search_user_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]}"
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise ctx.error("function", f"importing {str(path)!r} failed: {type(exc).__name__}: {exc}",
                                "fix the error in that file") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ctx.error("function", f"cannot import module {target!r}: {exc}",
                            f"install it or put it on PYTHONPATH; or {_FIX_REF}") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ctx.error("function", f"{target!r} has no function {attr!r}",
                        "name a function defined in that module")
    return fn


def read_jsonl(path: Path, ctx: SpecContext) -> list[Any]:
    """One JSON value per non-blank line."""
    docs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ctx.error("data", f"{path}:{n} is not JSON ({exc.msg})", "write one JSON value per line")
    return docs


def check_metrics(value: Any, ref: str, ctx: SpecContext) -> dict[str, float]:
    """The function's result as ``{str: float}``, or a UserError saying what it returned instead."""
    if not isinstance(value, dict):
        raise ctx.error("function", f"{ref} returned {type(value).__name__}, not a dict",
                        "return a dict of metric name -> number, e.g. {'accuracy': 0.8}")
    if not value:
        raise ctx.error("function", f"{ref} returned an empty dict", "return at least one metric")
    out: dict[str, float] = {}
    for key, number in value.items():
        if hasattr(number, "item") and getattr(number, "ndim", 0) == 0:
            number = number.item()  # a 0-d torch / numpy value
        if not isinstance(key, str) or isinstance(number, bool) or not isinstance(number, numbers.Real):
            raise ctx.error("function", f"{ref} returned {key!r}: {number!r}",
                            "return a dict whose keys are strings and whose values are numbers")
        out[key] = float(number)
        if math.isnan(out[key]):
            raise ctx.error("function", f"{ref} returned NaN for {key!r}", "return a number for every metric")
    return out


class PythonEvaluator:
    """A user function on the documents of a jsonl file; see the module docstring."""

    def __init__(self, spec: PythonSpec, *, device: str, ctx: SpecContext) -> None:
        self.spec = spec
        self.device = device
        self._ctx = ctx
        self.function = load_function(spec.function, ctx)
        self.name = spec.name or spec.function.rpartition(":")[2]
        self.docs = read_jsonl(ctx.existing_file("data", spec.data), ctx)
        self._order = role_orders([fingerprint(d) for d in self.docs], spec.fractions, ctx)

    def num_docs(self, split: SplitName) -> int:
        return len(self._order[check_split(split)])

    def documents(self, split: SplitName, limit: int | None = None) -> list[Any]:
        """The documents ``score(..., split, limit)`` passes to the function, in the fixed order."""
        order = self._order[check_split(split)]
        return [self.docs[i] for i in first(order, resolve_limit(limit, len(order)))]

    def score(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None = None) -> dict[str, float]:
        import torch

        check_device(model, self.device, self.name)
        docs = self.documents(split, limit)
        if not docs:
            raise ValueError(f"evaluator {self.name!r} has no {split!r} role")
        model.eval()
        with torch.no_grad():
            value = self.function(model, tokenizer, docs)
        return check_metrics(value, self.spec.function, self._ctx)
