"""Helpers shared by the methods that combine task vectors beyond plain task arithmetic (tsv, iso, magmax).

- ``WEIGHT`` / ``lambda_spec``: a per-model coefficient applied to each task vector before merging (1 = the
  paper's method) and the global scale of the merged update (the papers' alpha / lambda).
- ``task_vector_mean``: what the papers do for tensors that are not 2-D matrices (biases, norms):
  ``base + lambda * mean_i w_i d_i``.
- ``polar``: the orthogonal polar factor ``P Q^T`` of ``X = P S Q^T``, the nearest matrix with orthonormal
  columns (rows, for a wide ``X``): how TSV and ISO-CTS decorrelate stacked singular vectors.
- ``add_update``: ``base + lambda * update`` computed in the update's (float32) precision, cast once.

>>> import torch
>>> polar(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))
tensor([[1., 0.],
        [0., 1.]])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from search.methods.base import ParamSpec, TensorParams, global_value, model_rows, model_values
from search.methods.linear import add_weighted_deltas

WEIGHT = ParamSpec(
    "weight", per_model=True, default=1.0, low=-10.0, high=10.0, search_low=0.0, search_high=1.0,
    doc="coefficient of the model's task vector before merging (1 = the paper's method)",
)


def lambda_spec(search_low: float, search_high: float) -> ParamSpec:
    return ParamSpec(
        "lambda", default=1.0, low=-10.0, high=10.0, search_low=search_low, search_high=search_high,
        doc="global scale of the merged task vector (the paper's alpha)",
    )


def task_inputs(params: TensorParams, k: int, lam: ParamSpec) -> tuple[list[int], list[float], float]:
    """The rows to merge (the base's rows left out), every model's weight, and lambda."""
    return model_rows(params, k), model_values(params, WEIGHT, k), float(global_value(params, lam))


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype for SVDs: float64 stays, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def polar(x: torch.Tensor) -> torch.Tensor:
    """Orthogonal polar factor of a matrix (``P @ Qh`` of its thin SVD)."""
    p, _, qh = torch.linalg.svd(x, full_matrices=False)
    return p @ qh


def task_vector_mean(
    base: torch.Tensor,
    deltas: torch.Tensor,
    rows: Sequence[int],
    weights: Sequence[float],
    lam: float,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """``base + lam * mean over rows of w_i * delta_i`` (one fused pass)."""
    coeffs = [0.0] * deltas.shape[0]
    for i in rows:
        coeffs[i] = lam * weights[i] / len(rows)
    return add_weighted_deltas(base, deltas, coeffs, out=out)


def weighted_sum(
    deltas: torch.Tensor, rows: Sequence[int], weights: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """``sum over rows of w_i * delta_i`` in ``dtype``."""
    total = torch.zeros(deltas.shape[1:], dtype=dtype, device=deltas.device)
    for i in rows:
        total.add_(deltas[i], alpha=weights[i])
    return total


def add_update(
    base: torch.Tensor, update: torch.Tensor, lam: float, out: torch.Tensor | None
) -> torch.Tensor:
    """``base + lam * update`` in ``update``'s precision, in ``base``'s dtype (into ``out`` if given)."""
    if out is not None:
        return torch.add(base, update, alpha=lam, out=out)
    return torch.add(base, update, alpha=lam).to(base.dtype)
