"""TSV-M, Task Singular Vectors merge (Gargiulo et al., CVPR 2025, https://arxiv.org/abs/2412.00081).

For a 2-D weight with task vectors ``D_i = w_i * delta_i`` (T models besides the base, ``r = min(m, n)``):

    D_i = U_i S_i V_i^T                                  (thin SVD)
    keep the top  k = max(1, r // T)  singular triplets of each task     (the paper's 1/T of the rank)
    U = [U_1[:, :k] ... U_T[:, :k]],  S = diag(S_1[:k] ... S_T[:k]),  V = [V_1[:, :k] ... V_T[:, :k]]
    U_perp = polar(U),  V_perp = polar(V)                (remove interference: orthogonalize, Procrustes)
    merged = base + lambda * U_perp S V_perp^T

Other tensors (biases, norms, anything not 2-D) take the task-arithmetic mean, as the authors' code does:
``base + lambda * mean_i D_i``. The paper uses lambda = 1. ``max(1, ...)`` keeps one direction per task when
``r < T`` (the reference code would keep none).

>>> import torch
>>> base = torch.zeros(2, 2)
>>> deltas = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]])
>>> tsv_merge(base, deltas, TensorParams(), None, None)       # orthogonal tasks: both kept whole
tensor([[2., 0.],
        [0., 3.]])
"""

from __future__ import annotations

import torch

from search.methods.base import MergeMethod, TensorParams
from search.methods.task_vectors import (
    WEIGHT,
    add_update,
    lambda_spec,
    polar,
    task_inputs,
    task_vector_mean,
    work_dtype,
)

LAMBDA = lambda_spec(0.5, 1.5)


def tsv_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """TSV-M on 2-D tensors, the task-arithmetic mean elsewhere."""
    rows, weights, lam = task_inputs(params, deltas.shape[0], LAMBDA)
    if not rows:
        return base
    if base.dim() != 2:
        return task_vector_mean(base, deltas, rows, weights, lam, out)
    keep = max(1, min(base.shape) // len(rows))
    dtype = work_dtype(base.dtype)
    us, ss, vhs = [], [], []
    for i in rows:
        u, s, vh = torch.linalg.svd(deltas[i].to(dtype) * weights[i], full_matrices=False)
        us.append(u[:, :keep])
        ss.append(s[:keep])
        vhs.append(vh[:keep])
    u_perp = polar(torch.cat(us, dim=1))
    vh_perp = polar(torch.cat(vhs, dim=0))
    merged = (u_perp * torch.cat(ss)) @ vh_perp
    return add_update(base, merged, lam, out)


TSV = MergeMethod(
    name="tsv",
    fn=tsv_merge,
    params=(WEIGHT, LAMBDA),
    needs_base=True,
    min_models=1,
    doc="TSV-M: per-task top singular vectors, decorrelated, https://arxiv.org/abs/2412.00081",
)
