"""Isotropic merging, ISO-C and ISO-CTS (Marczak et al., ICML 2025, "No Task Left Behind: Isotropic Model
Merging with Common and Task-Specific Subspaces", https://arxiv.org/abs/2502.04959).

For a 2-D weight with task vectors ``D_i = w_i * delta_i`` (T models besides the base, ``r = min(m, n)``):

ISO-C (flatten the spectrum of the task-arithmetic sum):

    M = sum_i D_i = U S V^T
    merged = base + lambda * mean(S) * U V^T

ISO-CTS (a common subspace of M plus task-specific directions, then isotropic):

    c0 = int(r * common_space_fraction);  s = min(round((r - c0) / T), r // T);  c = r - T s
    U_c, V_c, S_c = top-c singular triplets of M                              (common subspace)
    R_i = D_i - U_c U_c^T D_i = U_i S_i V_i^T,  keep the top s of each        (task-specific residuals)
    U = polar([U_c, U_1[:, :s] ... U_T[:, :s]]),  V = polar([V_c, V_1[:, :s] ... V_T[:, :s]])
    merged = base + lambda * mean([S_c, S_1[:s] ... S_T[:s]]) * U V^T

Other tensors (not 2-D) take the task-arithmetic mean ``base + lambda * mean_i D_i``, as the authors' code
does.
The reference code rounds the task-specific size as above; ``min(..., r // T)`` keeps ``c >= 0`` for tiny
matrices (r < T), where the reference would index out of range. With ``s = 0`` ISO-CTS is ISO-C.

>>> import torch
>>> base = torch.zeros(2, 2)
>>> deltas = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])           # singular values 3, 1 -> both 2
>>> iso_c_merge(base, deltas, TensorParams(), None, None)
tensor([[2., 0.],
        [0., 2.]])
"""

from __future__ import annotations

import torch

from search.methods.base import MergeMethod, ParamSpec, TensorParams, global_value
from search.methods.task_vectors import (
    WEIGHT,
    add_update,
    lambda_spec,
    polar,
    task_inputs,
    task_vector_mean,
    weighted_sum,
    work_dtype,
)

LAMBDA = lambda_spec(0.5, 2.0)
COMMON_SPACE_FRACTION = ParamSpec(
    "common_space_fraction", default=0.8, low=0.0, high=1.0, search_low=0.5, search_high=0.95,
    doc="share of the rank given to the common subspace of the summed task vectors",
)


def iso_c_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """ISO-C on 2-D tensors, the task-arithmetic mean elsewhere."""
    rows, weights, lam = task_inputs(params, deltas.shape[0], LAMBDA)
    if not rows:
        return base
    if base.dim() != 2:
        return task_vector_mean(base, deltas, rows, weights, lam, out)
    total = weighted_sum(deltas, rows, weights, work_dtype(base.dtype))
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    return add_update(base, (u * s.mean()) @ vh, lam, out)


def iso_cts_sizes(rank: int, n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """``(common, per_task)`` subspace sizes with ``common + n_tasks * per_task == rank``."""
    common = int(rank * common_space_fraction)
    per_task = min(round((rank - common) / n_tasks), rank // n_tasks)
    return rank - n_tasks * per_task, per_task


def iso_cts_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """ISO-CTS on 2-D tensors, the task-arithmetic mean elsewhere."""
    rows, weights, lam = task_inputs(params, deltas.shape[0], LAMBDA)
    if not rows:
        return base
    if base.dim() != 2:
        return task_vector_mean(base, deltas, rows, weights, lam, out)
    dtype = work_dtype(base.dtype)
    fraction = float(global_value(params, COMMON_SPACE_FRACTION))
    common, per_task = iso_cts_sizes(min(base.shape), len(rows), fraction)
    u, s, vh = torch.linalg.svd(weighted_sum(deltas, rows, weights, dtype), full_matrices=False)
    us, ss, vhs = [u[:, :common]], [s[:common]], [vh[:common]]
    if per_task > 0:
        u_common = us[0]
        for i in rows:
            task = deltas[i].to(dtype) * weights[i]
            residual = task - u_common @ (u_common.T @ task)
            u_i, s_i, vh_i = torch.linalg.svd(residual, full_matrices=False)
            us.append(u_i[:, :per_task])
            ss.append(s_i[:per_task])
            vhs.append(vh_i[:per_task])
    u_perp = polar(torch.cat(us, dim=1))
    vh_perp = polar(torch.cat(vhs, dim=0))
    return add_update(base, (u_perp * torch.cat(ss).mean()) @ vh_perp, lam, out)


ISO_C = MergeMethod(
    name="iso_c",
    fn=iso_c_merge,
    params=(WEIGHT, LAMBDA),
    needs_base=True,
    min_models=1,
    doc="ISO-C: task-arithmetic sum with a flattened spectrum, https://arxiv.org/abs/2502.04959",
)
ISO_CTS = MergeMethod(
    name="iso_cts",
    fn=iso_cts_merge,
    params=(WEIGHT, LAMBDA, COMMON_SPACE_FRACTION),
    needs_base=True,
    min_models=1,
    doc="ISO-CTS: common and task-specific subspaces, isotropic, https://arxiv.org/abs/2502.04959",
)
