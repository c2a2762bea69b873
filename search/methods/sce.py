"""SCE: select, calculate, erase (Wan et al. 2024, FuseChat), as mergekit's ``sce``.

For the task vectors ``D = [d_1 ... d_n]`` of the models that are not the base (mergekit takes no weights):

    select:    keep the  k = int(nnz(var) * select_topk)  entries of largest variance across models,
               var_p = (1/n) sum_i (d_ip - mean_i d_ip)^2      (select_topk >= 1 keeps all, <= 0 none)
    calculate: w_i = mean_p d_ip^2 / sum_j mean_p d_jp^2       (1/n each when that sum is below 1e-6)
    erase:     s_p = +1 if sum_i d_ip >= 0 else -1,  a_ip = [sign(d_ip) == s_p]
    merged_p = base_p + sum_i a_ip w_i d_ip / max(sum_i a_ip w_i, 1e-6)

``int8_mask`` only saves memory in mergekit; it is accepted and changes nothing here.

>>> import torch
>>> deltas = torch.tensor([[1.0, -2.0], [3.0, 2.0]])
>>> sce_merge(torch.zeros(2), deltas, TensorParams(), None, None)
tensor([2.4444, 2.0000])
"""

from __future__ import annotations

import torch

from search.methods.base import MergeMethod, ParamSpec, TensorParams, global_value, model_rows, select_rows

INT8_MASK = ParamSpec("int8_mask", kind="bool", default=False, doc="mergekit memory option; no effect here")
SELECT_TOPK = ParamSpec(
    "select_topk", default=1.0, low=0.0, high=1.0, search_low=0.1, search_high=1.0,
    doc="fraction of the entries of highest variance across models kept (by nonzero-variance count)",
)


def sce_mask(task_vectors: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 at the ``int(nnz(var) * fraction)`` entries of largest variance across models, 0 elsewhere."""
    if fraction <= 0:
        return torch.zeros_like(task_vectors[0])
    if fraction >= 1:
        return torch.ones_like(task_vectors[0])
    var = torch.var(task_vectors, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * fraction)
    mask = torch.zeros_like(var)
    if k == 0:
        return mask
    _, indices = torch.topk(var.abs().view(-1), k=k, largest=True)
    mask.view(-1)[indices] = 1
    return mask


def sce_weights(task_vectors: torch.Tensor) -> torch.Tensor:
    """Each model's share of the mean squared task-vector entries (uniform when they are all ~0)."""
    weights = task_vectors.square().reshape(task_vectors.shape[0], -1).mean(dim=1)
    total = torch.sum(weights).item()
    if abs(total) < 1e-6:
        return torch.ones_like(weights) / weights.shape[0]
    return weights / total


def sce_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Select by variance, weight by energy, erase minority signs, average what is left."""
    rows = model_rows(params, deltas.shape[0])
    if not rows:
        return base
    work = torch.promote_types(base.dtype, torch.float32)
    task_vectors = select_rows(deltas, rows).to(work)
    fraction = float(global_value(params, SELECT_TOPK))
    if fraction < 1:
        task_vectors = task_vectors * sce_mask(task_vectors, fraction).unsqueeze(0)
    majority = (task_vectors.sum(dim=0) >= 0).to(work) * 2 - 1
    agree = task_vectors.sign() == majority
    weights = sce_weights(task_vectors)
    while weights.dim() < task_vectors.dim():
        weights = weights.unsqueeze(-1)
    kept = weights * agree
    merged = (task_vectors * kept).sum(dim=0) / torch.sum(kept, dim=0).clamp(min=1e-6)
    return (base.to(work) + merged).to(base.dtype)


SCE = MergeMethod(
    name="sce",
    fn=sce_merge,
    params=(INT8_MASK, SELECT_TOPK),
    needs_base=True,
    min_models=1,
    doc="SCE: select by variance, weight by energy, erase minority signs, https://arxiv.org/abs/2408.07990",
)
