"""Spherical merges of mergekit 0.1.5: ``nuslerp``, ``multislerp`` and ``karcher``.

Each works on vectors ``v_i``: the task vectors ``delta_i`` when a base is given (and the base is added back),
the models themselves when none is. ``karcher`` ignores the base (mergekit's ``BasePolicy.IGNORED``): a base
the recipe names is one more model in its mean.

**nuslerp** (two models; ``t = w_1 / (w_0 + w_1)``, 0.5 when ``|w_0 + w_1| < 1e-6``), per row of the last
dimension (``nuslerp_row_wise``: of the first; ``nuslerp_flatten``, the default: the whole tensor as one row):

    u_i    = v_i / max(|v_i|, 1e-7),   cos = clamp(u_0 . u_1, -1, 1),   theta = acos(cos)
    merged = (sin((1 - t) theta) v_0 + sin(t theta) v_1) / sin(theta)
    merged = (1 - t) v_0 + t v_1                                 where 1 - cos^2 <= 1e-16 (colinear)

**multislerp** (barycentric interpolation on the sphere; ``w`` divided by its sum when ``normalize_weights``):

    u_i    = v_i / (|v_i| + eps),  m = sum_i w_i u_i / |sum_i w_i u_i|
    tau    = sum_i w_i (u_i - (u_i . m) m),   r = |tau| + eps
    merged = (cos(r) m + sin(r) / r tau) * sum_i w_i |v_i|         (one model: that model)
    (every v_i zero: 0, the base, where mergekit raises for 3+ models; a zero weighted mean otherwise: refused)

**karcher** (the Riemannian mean on the unit sphere of every input ``x_i``, uniform weights ``a_i = 1/n``; inputs
with ``|x_i| <= tol`` leave the mean but keep their ``a_i`` in the scale):

    u_i = x_i / |x_i|,   m_0 = sum_i a_i u_i / |.|   (u_first when that norm < tol)
    repeat max_iter times:  theta_i = acos(clamp(m . u_i, -1, 1)),
        g = sum_{theta_i >= tol} a_i theta_i / sin(theta_i) (u_i - (m . u_i) m);   stop when |g| < tol
        m = normalize(cos(|g|) m + sin(|g|) g / |g|)
    merged = (sum_i a_i |x_i|) m

>>> import torch
>>> base = torch.zeros(2)
>>> deltas = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
>>> weights = torch.tensor([1.0, 1.0], dtype=torch.float64)
>>> nuslerp_merge(base, deltas, TensorParams(per_model={"weight": weights}), None, None)
tensor([0.7071, 0.7071])
"""

from __future__ import annotations

import torch

from search.errors import UserError
from search.methods.base import (
    MergeMethod,
    ParamSpec,
    TensorParams,
    global_value,
    model_rows,
    model_values,
)

WEIGHT = ParamSpec(
    "weight", per_model=True, default=None, low=-10.0, high=10.0, search_low=0.0, search_high=1.0,
    doc="relative weight of the model (interpolation position)",
)
NUSLERP_ROW_WISE = ParamSpec(
    "nuslerp_row_wise", kind="bool", default=False, doc="interpolate rows (dim 0) instead of columns (dim -1)"
)
NUSLERP_FLATTEN = ParamSpec(
    "nuslerp_flatten", kind="bool", default=True, doc="interpolate the whole tensor as one vector"
)
NORMALIZE_WEIGHTS = ParamSpec(
    "normalize_weights", kind="bool", default=True, doc="divide the weights by their sum"
)
EPS = ParamSpec("eps", default=1e-8, low=0.0, high=1.0, doc="numerical floor of norms")
MAX_ITER = ParamSpec("max_iter", kind="int", default=10, low=1, high=1000, doc="Karcher mean iterations")
TOL = ParamSpec("tol", default=1e-5, low=0.0, high=1.0, doc="convergence tolerance (and zero-norm threshold)")


def _work(dtype: torch.dtype) -> torch.dtype:
    """Half precision computes in float32 (mergekit computes in the input dtype; equal in float32)."""
    return torch.promote_types(dtype, torch.float32)


def _vectors(base: torch.Tensor, deltas: torch.Tensor, rows: list[int], params: TensorParams,
             dtype: torch.dtype) -> list[torch.Tensor]:
    """The vectors a spherical merge interpolates: task vectors with a base, the models without one."""
    if params.has_base:
        return [deltas[i].to(dtype) for i in rows]
    reference = base.to(dtype)
    return [reference + deltas[i].to(dtype) for i in rows]


def _finish(base: torch.Tensor, merged: torch.Tensor, params: TensorParams) -> torch.Tensor:
    if params.has_base:
        merged = base.to(merged.dtype) + merged
    return merged.to(base.dtype)


def nuslerp(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int = -1, flatten: bool = False,
            eps: float = 1e-8) -> torch.Tensor:
    """mergekit's ``nuslerp``: slerp of the rows of ``v0``/``v1`` along ``dim`` (or of the flattened tensors)."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(u0 * u1, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(colinear, (1 - t) * v0 + t * v1, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


def nuslerp_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Slerp between the two non-base models (or their task vectors) at ``t = w_1 / (w_0 + w_1)``."""
    rows = model_rows(params, deltas.shape[0])
    if len(rows) != 2:
        raise ValueError(f"nuslerp merges exactly 2 models besides the base, got {len(rows)}")
    weights = model_values(params, WEIGHT, deltas.shape[0])
    w0, w1 = weights[rows[0]], weights[rows[1]]
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    v0, v1 = _vectors(base, deltas, rows, params, _work(base.dtype))
    merged = nuslerp(t, v0, v1, dim=0 if global_value(params, NUSLERP_ROW_WISE) else -1,
                     flatten=bool(global_value(params, NUSLERP_FLATTEN)))
    return _finish(base, merged, params)


def multislerp_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere (tangent space at the weighted mean direction)."""
    rows = model_rows(params, deltas.shape[0])
    if not rows:
        return base
    dtype = _work(base.dtype)
    if len(rows) == 1:
        return (base.to(dtype) + deltas[rows[0]].to(dtype)).to(base.dtype)
    eps = float(global_value(params, EPS))
    tensors = torch.stack(_vectors(base, deltas, rows, params, dtype))
    flat = tensors.view(len(rows), -1)
    all_weights = model_values(params, WEIGHT, deltas.shape[0])
    weights = torch.tensor([all_weights[i] for i in rows], dtype=dtype, device=base.device)
    if global_value(params, NORMALIZE_WEIGHTS):
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    if not bool(norms.any()):
        # every model equals the base here (a tensor no fine-tune changed): the base. mergekit raises instead,
        # for 3+ models, as for antipodal ones.
        return _finish(base, torch.zeros_like(tensors[0]), params)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(rows) == 2:  # mergekit: antipodal pair, fall back to linear interpolation
            merged = (tensors[0] * weights[0] + tensors[1] * weights[1]).view(base.shape)
            return _finish(base, merged, params)
        raise UserError(
            "multislerp: the weighted mean of the models' directions is zero (antipodal models whose weights "
            "balance out)", field="weight", fix="use different weights",
        )
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = ((units - dots * mean) * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    merged = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    merged = (merged * (norms.squeeze(-1) * weights).sum()).view(base.shape)
    return _finish(base, merged, params)


def karcher_mean(tensors: list[torch.Tensor], alphas: list[float], *, max_iter: int, tol: float) -> torch.Tensor:
    """mergekit's ``karcher_merge_tensors``: the weighted Karcher mean of ``tensors``, rescaled."""
    if len(tensors) == 1:
        return tensors[0]
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(x.to(dtype)) for x in tensors]
    units = [torch.zeros_like(x) if n.item() == 0.0 else (x / n).to(x.dtype) for x, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    weights = [alphas[i] / total for i in valid]
    kept = [units[i] for i in valid]
    mean = torch.zeros_like(kept[0])
    for a, u in zip(weights, kept):
        mean += a * u
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = kept[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for a, u in zip(weights, kept):
            dot = torch.clamp(torch.dot(mean.flatten(), u.flatten()), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    scale = sum(a * n for a, n in zip(alphas, norms))
    return scale * mean


def karcher_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Karcher mean of every listed model (a listed base too), with equal weights."""
    dtype = _work(base.dtype)
    reference = base.to(dtype)
    tensors = [reference + deltas[i].to(dtype) for i in range(deltas.shape[0])]
    if not tensors:
        return base
    n = len(tensors)
    merged = karcher_mean(tensors, [1.0 / n] * n, max_iter=int(global_value(params, MAX_ITER)),
                          tol=float(global_value(params, TOL)))
    return merged.to(base.dtype)


NUSLERP = MergeMethod(
    name="nuslerp",
    fn=nuslerp_merge,
    params=(WEIGHT, NUSLERP_ROW_WISE, NUSLERP_FLATTEN),
    needs_base=False,
    optional_base=True,
    min_models=2,
    max_models=2,
    doc="NuSLERP: slerp of two models (of their task vectors with a base), weights set t, "
        "https://github.com/arcee-ai/mergekit",
)
MULTISLERP = MergeMethod(
    name="multislerp",
    fn=multislerp_merge,
    params=(WEIGHT, NORMALIZE_WEIGHTS, EPS),
    needs_base=False,
    optional_base=True,
    min_models=1,
    doc="Multi-SLERP: weighted barycentre of several models on the hypersphere, "
        "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea",
)
KARCHER = MergeMethod(
    name="karcher",
    fn=karcher_merge,
    params=(MAX_ITER, TOL),
    needs_base=False,
    min_models=1,
    doc="Karcher mean: the Riemannian mean of the models' directions, rescaled, https://arxiv.org/abs/2603.04972",
)
