"""The one contract every evaluator meets.

An evaluator scores a LIVE model and its tokenizer on one of our three splits (roles), optionally on only the first
``limit`` documents of a fixed order, and returns named metrics:

    metrics = evaluator.score(model, tokenizer, "search", limit=20)   # {"exact_match": 0.35, ...}

- Built once per worker (task objects, wrappers and tokenized data are set up once), then called many times
  while the search swaps the model's weights IN PLACE between calls. Nothing is cached across calls that
  depends on the weights.
- ``split`` is a role: ``"search"`` (scored during the search), ``"select"`` (the finalists are re-scored on
  it and the winner is picked on it) or ``"test"`` (scored once, at the end, for a set of models fixed before it
  is scored: the figure a report states). No two roles share a document. ``"heldout"``, the name of ``select``
  before there were three roles, is still read as ``select``. An evaluator may have no ``test`` role
  (``num_docs("test") == 0``: a run folder from before the three roles, or a test fraction of 0).
- ``limit=k`` scores the first ``k`` documents of a fixed, deterministic order of the split, so growing
  limits score nested slices (the first 10% is inside the first 30%, and so on). ``None`` scores them all;
  a limit above ``num_docs(split)`` scores them all.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

SplitName = Literal["search", "select", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("search", "select", "test")
LEGACY_SPLIT_NAMES = {"heldout": "select"}


@runtime_checkable
class Evaluator(Protocol):
    """Scores a live model on a split.

    >>> ev = build_evaluator({"type": "perplexity", "data": "notes.txt"}, device="cpu")  # doctest: +SKIP
    >>> ev.num_docs("search")                                                              # doctest: +SKIP
    41
    >>> ev.score(model, tokenizer, "search", limit=10)                                     # doctest: +SKIP
    {'perplexity': 18.2, 'neg_log_likelihood': 2.90}
    """

    name: str

    def num_docs(self, split: SplitName) -> int:
        """How many documents ``split`` holds (the largest useful ``limit``)."""
        ...

    def score(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None = None) -> dict[str, float]:
        """Metrics of ``model`` on the first ``limit`` documents (all when None) of ``split``'s fixed order."""
        ...


@runtime_checkable
class PerDocumentEvaluator(Evaluator, Protocol):
    """An evaluator that can also say what each document scored (what intervals and paired tests need).

    ``per_document[metric][i]`` is document ``i``'s value in the split's fixed order, for each metric that is a
    mean over documents (the metric is then ``mean(per_document[metric])``); other metrics are left out.
    """

    def score_documents(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None = None,
                        start: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
        """``(metrics, per_document)`` on documents ``[start, limit)`` of the split's fixed order."""
        ...


def check_split(split: str) -> SplitName:
    """Return ``split`` if it is one of our split names (``heldout`` reads as ``select``); raise ValueError (a
    programming error) otherwise.

    >>> check_split("test"), check_split("heldout")
    ('test', 'select')
    """
    split = LEGACY_SPLIT_NAMES.get(split, split)
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
    return split  # type: ignore[return-value]


def resolve_limit(limit: int | None, num_docs: int) -> int:
    """How many documents a call with ``limit`` scores: ``num_docs`` when None or larger, else ``limit``.

    >>> resolve_limit(None, 7), resolve_limit(3, 7), resolve_limit(70, 7)
    (7, 3, 7)
    """
    if limit is None:
        return num_docs
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return min(limit, num_docs)


def slice_size(num_docs: int, fraction: float) -> int:
    """The limit for a fraction of a split, at least one document: ``ceil(num_docs * fraction)``.

    >>> [slice_size(45, f) for f in (0.1, 0.3, 1.0)]
    [5, 14, 45]
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return max(1, math.ceil(num_docs * fraction))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where the inputs of a forward pass must go)."""
    return next(model.parameters()).device


def check_device(model: torch.nn.Module, expected: str, evaluator: str) -> None:
    """Fail loudly when a model lives on another kind of device than the evaluator was built for."""
    import torch

    actual = model_device(model)
    if actual.type != torch.device(expected).type:
        raise ValueError(
            f"evaluator {evaluator!r} was built for device {expected!r} but the model is on {actual}: "
            "move the model or build the evaluator with the model's device"
        )
