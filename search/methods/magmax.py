"""MagMax (Marczak et al., ECCV 2024, "MagMax: Leveraging Model Merging for Seamless Continual Learning",
https://arxiv.org/abs/2407.06322).

Per parameter ``p``, take the task-vector entry of largest magnitude across the models besides the base:

    i*(p)    = argmax_i |w_i d_ip|                   (first model on ties)
    merged_p = base_p + lambda * w_{i*} d_{i*p}

Elementwise, so it applies to every tensor. The paper tunes lambda (the scaling of the merged task vector) on
held-out data.

>>> import torch
>>> deltas = torch.tensor([[1.0, -3.0], [-2.0, 2.0]])
>>> magmax_merge(torch.zeros(2), deltas, TensorParams(), None, None)
tensor([-2., -3.])
"""

from __future__ import annotations

import torch

from search.methods.base import MergeMethod, TensorParams
from search.methods.task_vectors import WEIGHT, lambda_spec, task_inputs

LAMBDA = lambda_spec(0.3, 1.5)


def magmax_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Keep, per parameter, the largest-magnitude (weighted) task-vector entry."""
    rows, weights, lam = task_inputs(params, deltas.shape[0], LAMBDA)
    if not rows:
        return base
    # One elementwise pass per model (an argmax across a stacked dim 0 is ~100x slower on CPU).
    first = rows[0]
    picked = torch.mul(deltas[first], weights[first])
    largest = picked.abs()
    for i in rows[1:]:
        candidate = torch.mul(deltas[i], weights[i])
        magnitude = candidate.abs()
        wins = magnitude > largest  # strict: the first model keeps ties
        picked = torch.where(wins, candidate, picked)
        largest = torch.maximum(largest, magnitude)
    # Not add(..., out=out): torch may round a half-precision alpha*x differently when writing into ``out``.
    return torch.add(base, picked, alpha=lam)


MAGMAX = MergeMethod(
    name="magmax",
    fn=magmax_merge,
    params=(WEIGHT, LAMBDA),
    needs_base=True,
    min_models=1,
    doc="MagMax: per parameter, the task-vector entry of largest magnitude, https://arxiv.org/abs/2407.06322",
)
