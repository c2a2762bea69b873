"""Model Stock (Jang et al. 2024), as mergekit's ``model_stock``.

For the ``k >= 2`` task vectors of the models that are not the base, taken whole (or, with ``filter_wise``,
one vector per row along the last dimension; a 1-D tensor is one row):

    cos    = mean over pairs i < j of clamp(d_i . d_j / max(|d_i| |d_j|, 1e-6), -1, 1)
    t      = k cos / (1 + (k - 1) cos)            (t = 0 where |1 + (k - 1) cos| < 1e-6)
    merged = base + t * mean_i d_i                (= t * mean_i model_i + (1 - t) * base)

>>> import torch
>>> base = torch.zeros(2)
>>> deltas = torch.tensor([[1.0, 0.0], [0.0, 1.0]])          # orthogonal: cos = 0, t = 0
>>> model_stock_merge(base, deltas, TensorParams(), None, None)
tensor([0., 0.])
"""

from __future__ import annotations

import torch

from search.methods.base import (
    MergeMethod,
    ParamSpec,
    TensorParams,
    flat_out,
    global_value,
    model_rows,
    select_rows,
)

FILTER_WISE = ParamSpec("filter_wise", kind="bool", default=False, doc="one t per row (last dimension)")


def stock_ratio(vectors: torch.Tensor) -> torch.Tensor:
    """Model Stock's ``t`` for ``vectors`` shaped ``(k, m, L)``: one value per ``m``, shape ``(m,)``."""
    k = vectors.shape[0]
    norms = torch.linalg.vector_norm(vectors, dim=-1)  # (k, m)
    cos_sum = torch.zeros_like(norms[0])
    for i in range(k):
        for j in range(i + 1, k):
            dot = torch.linalg.vecdot(vectors[i], vectors[j]) if vectors.shape[1] > 1 else torch.dot(
                vectors[i, 0], vectors[j, 0]
            ).view(1)
            cos_sum += (dot / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
    cos = cos_sum / (k * (k - 1) // 2)
    denominator = 1 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    return torch.where(singular, torch.zeros_like(cos), k * cos / torch.where(singular, 1, denominator))


def model_stock_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Move from the base towards the models' average by Model Stock's ``t``."""
    rows = model_rows(params, deltas.shape[0])
    if len(rows) < 2:
        raise ValueError(f"model_stock needs at least 2 models besides the base, got {len(rows)}")
    chosen = select_rows(deltas, rows)
    k = len(rows)
    if bool(global_value(params, FILTER_WISE)) and base.dim() >= 2:
        length = base.shape[-1]
    else:
        length = base.numel()
    vectors = chosen.reshape(k, -1, length)
    work = torch.promote_types(base.dtype, torch.float32)  # half-precision dots are slow and coarse on CPU
    t = stock_ratio(vectors.to(work)).to(base.dtype)
    mean = vectors.mean(dim=0)
    target = flat_out(out)
    result = torch.addcmul(
        base.reshape(-1, length), t.unsqueeze(-1), mean,
        out=None if target is None else target.view(-1, length),
    )
    return result.view(base.shape)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    fn=model_stock_merge,
    params=(FILTER_WISE,),
    needs_base=True,
    min_models=2,
    doc="Model Stock: towards the average by the task vectors' angle, https://arxiv.org/abs/2403.19522",
)
