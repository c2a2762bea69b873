"""Reinforced Agent Merging (RAM, RAM+ tensor-local), as mergekit's ``ram`` and ``ramplus_tl``.

For the task vectors ``d_i`` of the models that are not the base (no weights), per entry ``p``:

    nz_ip  = |d_ip| > epsilon,   c_p = sum_i nz_ip               (how many models changed the entry)
    ram:        merged_p = base_p + sum_i nz_ip d_ip * ([c_p == 1] + [c_p > 1] / c_p)
    ramplus_tl: per model, rho_i = #{p: nz_ip, c_p > 1} / max(#{p: nz_ip, c_p == 1}, epsilon)
                lambda_i = 1 + r * clamp(rho_i, 0, alpha)
                merged_p = base_p + sum_i nz_ip d_ip * (lambda_i [c_p == 1] + [c_p > 1] / c_p)

Entries only one model changed keep that model's change (rescaled by ``lambda_i`` in RAM+); shared entries are
averaged over the models that changed them, not diluted by those that did not.

>>> import torch
>>> deltas = torch.tensor([[1.0, 2.0, 0.0], [0.0, 4.0, 0.0]])
>>> ram_merge(torch.zeros(3), deltas, TensorParams(), None, None)
tensor([1., 3., 0.])
"""

from __future__ import annotations

import torch

from search.methods.base import MergeMethod, ParamSpec, TensorParams, global_value, model_rows, select_rows

EPSILON = ParamSpec(
    "epsilon", default=1e-5, low=0.0, high=1.0, doc="a task-vector entry counts as changed above this magnitude"
)
R = ParamSpec(
    "r", default=0.1, low=0.0, high=10.0, search_low=0.0, search_high=0.5,
    doc="strength of the rescaling of a model's unique entries",
)
ALPHA = ParamSpec(
    "alpha", default=0.2, low=0.0, high=10.0, search_low=0.0, search_high=1.0,
    doc="cap on the shared-to-unique ratio rho",
)


def _counts(base: torch.Tensor, deltas: torch.Tensor, params: TensorParams):
    rows = model_rows(params, deltas.shape[0])
    work = torch.promote_types(base.dtype, torch.float32)
    flat = select_rows(deltas, rows).to(work).reshape(len(rows), -1)
    epsilon = float(global_value(params, EPSILON))
    changed = flat.abs() > epsilon
    counts = changed.sum(dim=0, keepdim=True)
    return flat * changed, changed, counts, counts > 1, counts == 1, epsilon


def ram_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Unique changes kept whole, shared changes averaged over the models that made them."""
    if not model_rows(params, deltas.shape[0]):
        return base
    kept, _, counts, shared, unique, _ = _counts(base, deltas, params)
    merged = (kept * unique + kept * shared / counts.clamp(min=1)).sum(dim=0)
    return (base.to(merged.dtype) + merged.view(base.shape)).to(base.dtype)


def ramplus_tl_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """RAM with each model's unique changes scaled up by its (capped) shared-to-unique ratio."""
    if not model_rows(params, deltas.shape[0]):
        return base
    kept, changed, counts, shared, unique, epsilon = _counts(base, deltas, params)
    shared_counts = (changed & shared).sum(dim=1)
    unique_counts = (changed & unique).sum(dim=1)
    rho = shared_counts / unique_counts.clamp(min=epsilon)
    scale = 1 + float(global_value(params, R)) * rho.clamp(min=0, max=float(global_value(params, ALPHA)))
    merged = (kept * unique * scale.unsqueeze(-1) + kept * shared / counts.clamp(min=1)).sum(dim=0)
    return (base.to(merged.dtype) + merged.view(base.shape)).to(base.dtype)


RAM = MergeMethod(
    name="ram",
    fn=ram_merge,
    params=(EPSILON,),
    needs_base=True,
    min_models=1,
    doc="RAM: unique changes kept, shared changes averaged over who made them, https://arxiv.org/abs/2601.13572",
)
RAMPLUS_TL = MergeMethod(
    name="ramplus_tl",
    fn=ramplus_tl_merge,
    params=(R, ALPHA, EPSILON),
    needs_base=True,
    min_models=1,
    doc="RAM+ (tensor-local): RAM with unique changes rescaled by overlap, https://arxiv.org/abs/2601.13572",
)
