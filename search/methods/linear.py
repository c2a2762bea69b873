"""Linear merge (model soup): a weighted average of the listed models, as mergekit's ``linear``.

    merged = sum_i w_i * model_i / sum_i w_i        (normalize: true, the default)
    merged = sum_i w_i * model_i                    (normalize: false)

With ``model_i = base + delta_i`` this is ``base * beta + sum_i c_i * delta_i``, one fused ``addmm`` that runs
near memory bandwidth and writes straight into ``out``. Rows that are the base count like any other model
(mergekit's linear ignores which model is the base).

>>> import torch
>>> base, deltas = torch.tensor([1.0, 1.0]), torch.tensor([[0.0, 0.0], [2.0, -2.0]])
>>> linear_merge(base, deltas, TensorParams(per_model={"weight": torch.tensor([1.0, 3.0])}), None, None)
tensor([ 2.5000, -0.5000])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from search.errors import UserError
from search.methods.base import MergeMethod, ParamSpec, TensorParams, flat_out, global_value, model_values

WEIGHT = ParamSpec(
    "weight", per_model=True, default=None, low=-10.0, high=10.0, search_low=0.0, search_high=1.0,
    doc="weight of the model in the average",
)
NORMALIZE = ParamSpec("normalize", kind="bool", default=True, doc="divide by the sum of the weights")


def add_weighted_deltas(
    base: torch.Tensor,
    deltas: torch.Tensor,
    coeffs: Sequence[float],
    *,
    beta: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``beta * base + sum_i coeffs[i] * deltas[i]`` in one pass, written into ``out`` when it is contiguous.

    ``out`` must not overlap ``base`` or ``deltas``. Rows whose coefficient is 0 are skipped when the others
    form a contiguous block (no copy).
    """
    k = deltas.shape[0]
    used = [i for i, c in enumerate(coeffs) if c != 0.0]
    target = flat_out(out)
    if not used:
        return torch.mul(base.reshape(-1), beta, out=target).view(base.shape)
    if used == list(range(used[0], used[-1] + 1)):
        deltas = deltas.narrow(0, used[0], len(used))
        coeffs = [coeffs[i] for i in used]
        k = len(used)
    rows = deltas.reshape(k, -1)
    if base.device.type == "cpu" and base.dtype in (torch.bfloat16, torch.float16):
        # CPU half-precision addmm runs ~5x slower than adds (measured). Sum the deltas first and add the base
        # last, so the base-scale result is rounded once (adding each delta to the base would round away
        # deltas below half an ulp of the weight).
        result = torch.mul(rows[0], coeffs[0], out=target)
        for i in range(1, k):
            result.add_(rows[i], alpha=coeffs[i])
        return result.add_(base.reshape(-1), alpha=beta).view(base.shape)
    weights = torch.tensor(coeffs, dtype=base.dtype, device=base.device)
    result = torch.addmm(
        base.reshape(1, -1), weights.view(1, k), rows, beta=beta,
        out=None if target is None else target.view(1, -1),
    )
    return result.view(base.shape)


def linear_coefficients(params: TensorParams, k: int) -> tuple[float, list[float]]:
    """``(beta, c)`` with ``merged = beta * base + sum_i c_i * delta_i``."""
    weights = model_values(params, WEIGHT, k)
    total = sum(weights)
    if global_value(params, NORMALIZE):
        if abs(total) < 1e-8:
            raise UserError(
                f"linear with normalize: true needs weights whose sum is not 0, got {weights}",
                field="weight", fix="change the weights, or set normalize: false",
            )
        return 1.0, [w / total for w in weights]
    return total, weights


def linear_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Weighted average of all listed models (the base row too, when it is listed)."""
    beta, coeffs = linear_coefficients(params, deltas.shape[0])
    return add_weighted_deltas(base, deltas, coeffs, beta=beta, out=out)


LINEAR = MergeMethod(
    name="linear",
    fn=linear_merge,
    params=(WEIGHT, NORMALIZE),
    needs_base=False,
    min_models=1,
    elementwise=True,
    linear_coefficients=linear_coefficients,
    doc="Weighted average of the models (model soup), https://arxiv.org/abs/2203.05482",
)
