"""Checkpoint averaging: several checkpoints of one training run, listed oldest first, no base.

For checkpoints ``x_1 ... x_n`` in step order (the order of ``models``):

    checkpoint_average:  merged = (1/n) sum_i x_i                                   (uniform)
    checkpoint_ema:      merged = sum_i a_i x_i,  a_1 = beta^(n-1),  a_i = (1 - beta) beta^(n-i)  (i >= 2)
    lawa:                merged = (1/k) sum_{i > n-k} x_i                            (latest-k window)

``checkpoint_ema`` is the exponential moving average ``e_1 = x_1, e_i = beta e_{i-1} + (1 - beta) x_i`` run
over the checkpoints (``beta = 0``: the last one; ``beta -> 1``: the first); its weights sum to 1. ``lawa`` is
LAtest Weight Averaging (Kaddour 2022, https://arxiv.org/abs/2209.14981). mergekit has none of these (a
``linear`` merge with hand-computed weights is the same numbers); a recipe with one of them runs through
``search merge``. They take no base: the checkpoints are the models.

>>> import torch
>>> first, deltas = torch.zeros(1), torch.tensor([[0.0], [1.0], [2.0], [3.0]])   # x = 0, 1, 2, 3
>>> checkpoint_weights("checkpoint_average", 4, {})
[0.25, 0.25, 0.25, 0.25]
>>> checkpoint_weights("checkpoint_ema", 3, {"decay": 0.5})
[0.25, 0.25, 0.5]
>>> LAWA.merge(first, deltas, TensorParams(globals={"k": 2}))
tensor([2.5000])
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch

from search.methods.base import MergeMethod, ParamSpec, TensorParams, global_value
from search.methods.linear import add_weighted_deltas

DECAY = ParamSpec(
    "decay", default=None, low=0.0, high=1.0, search_low=0.5, search_high=0.99,
    doc="EMA decay beta per checkpoint: weight of the average so far when the next checkpoint comes in",
)
K = ParamSpec(
    "k", kind="int", default=None, low=1, high=10_000, search_low=1, search_high=8,
    doc="how many of the latest checkpoints to average",
)


def checkpoint_weights(name: str, n: int, values: Mapping[str, Any]) -> list[float]:
    """The weight of each of ``n`` checkpoints (oldest first) under ``name``; they sum to 1."""
    if name == "checkpoint_average":
        return [1.0 / n] * n
    if name == "checkpoint_ema":
        beta = float(values["decay"])
        return [beta ** (n - 1)] + [(1.0 - beta) * beta ** (n - i) for i in range(2, n + 1)]
    if name == "lawa":
        k = int(round(float(values["k"])))  # as a searched (float) value is cast for the merge
        if k > n:
            raise ValueError(f"lawa averages the latest k={k} checkpoints but {n} are listed")
        return [0.0] * (n - k) + [1.0 / k] * k
    raise KeyError(name)


def _coefficients(params: TensorParams, k: int, *, name: str, specs: tuple[ParamSpec, ...]
                  ) -> tuple[float, list[float]]:
    """``(1, a)``: every row is a checkpoint (a reference row is all zeros), base + sum_i a_i d_i = sum_i a_i x_i
    because the weights sum to 1. Linear in the deltas, so LoRA checkpoints combine as factors."""
    return 1.0, checkpoint_weights(name, k, {p.name: global_value(params, p) for p in specs})


def _merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None,
    *, name: str, specs: tuple[ParamSpec, ...],
) -> torch.Tensor:
    _, weights = _coefficients(params, deltas.shape[0], name=name, specs=specs)
    return add_weighted_deltas(base, deltas, weights, out=out)


def linear_weight(name: str, n: int, i: int, param: str | None, value: Any) -> float:
    """Checkpoint ``i``'s weight in the ``linear`` merge that equals ``name`` at parameter value ``value``
    (mergekit has no checkpoint methods; its ``linear`` with these weights builds the same model)."""
    return checkpoint_weights(name, n, {} if param is None else {param: value})[i]


def _count_check(n: int, values: Mapping[str, Any]) -> str | None:
    k = values.get("k")
    if k is not None and int(round(float(k))) > n:
        return f"lawa averages the latest k={int(round(float(k)))} checkpoints but only {n} are listed"
    return None


def _method(name: str, specs: tuple[ParamSpec, ...], doc: str) -> MergeMethod:
    return MergeMethod(
        name=name,
        fn=functools.partial(_merge, name=name, specs=specs),
        params=specs,
        needs_base=False,
        takes_base=False,
        min_models=1,
        doc=doc,
        check_count=_count_check if name == "lawa" else None,
        linear_coefficients=functools.partial(_coefficients, name=name, specs=specs),
    )


CHECKPOINT_METHODS = ("checkpoint_average", "checkpoint_ema", "lawa")
CHECKPOINT_AVERAGE = _method(
    "checkpoint_average", (),
    "Uniform average of checkpoints of one run (as in SWA), https://arxiv.org/abs/1803.05407",
)
CHECKPOINT_EMA = _method(
    "checkpoint_ema", (DECAY,), "Exponential moving average of checkpoints by step order, "
                                "https://en.wikipedia.org/wiki/Exponential_smoothing",
)
LAWA = _method(
    "lawa", (K,), "LAWA: uniform average of the latest k checkpoints, https://arxiv.org/abs/2209.14981",
)
