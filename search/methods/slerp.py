"""Spherical linear interpolation between the base and one model, as mergekit's ``slerp``.

The whole tensor is one vector (v0 = base, v1 = model). With unit vectors u0, u1 (a norm <= 1e-8 counts as 1):

    dot    = clamp(u0 . u1, -1, 1)
    merged = (1 - t) v0 + t v1                                           if |dot| > 0.9995 (near colinear)
    merged = sin((1 - t) theta) / sin(theta) v0 + sin(t theta) / sin(theta) v1,   theta = acos(dot)

``t = 0`` gives the base, ``t = 1`` the model. Computed in float32 (float64 for float64 inputs), returned in
the input dtype.

>>> import torch
>>> base, deltas = torch.tensor([1.0, 0.0]), torch.tensor([[-1.0, 1.0]])   # model = [0, 1]
>>> slerp_merge(base, deltas, TensorParams(globals={"t": 0.5}), None, None)
tensor([0.7071, 0.7071])
"""

from __future__ import annotations

import math

import torch

from search.methods.base import MergeMethod, ParamSpec, TensorParams, global_value, model_rows

DOT_THRESHOLD = 0.9995  # mergekit: above this |cos|, interpolate linearly
NORM_EPS = 1e-8  # mergekit: norms at or below this are taken as 1

T = ParamSpec(
    "t", default=None, low=0.0, high=1.0, search_low=0.0, search_high=1.0,
    doc="interpolation factor: 0 = base, 1 = the other model",
)


def slerp_coefficients(t: float, v0: torch.Tensor, v1: torch.Tensor) -> tuple[float, float]:
    """``(c0, c1)`` with ``slerp(v0, v1, t) = c0 * v0 + c1 * v1`` for flat float vectors."""
    norm0 = float(torch.linalg.vector_norm(v0))
    norm1 = float(torch.linalg.vector_norm(v1))
    norm0 = norm0 if norm0 > NORM_EPS else 1.0
    norm1 = norm1 if norm1 > NORM_EPS else 1.0
    dot = min(1.0, max(-1.0, float(torch.dot(v0, v1)) / (norm0 * norm1)))
    if abs(dot) > DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    return math.sin((1.0 - t) * theta) / sin_theta, math.sin(t * theta) / sin_theta


def slerp_merge(
    base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None, out: torch.Tensor | None
) -> torch.Tensor:
    """Slerp from the base (t = 0) to the one non-base model (t = 1)."""
    rows = model_rows(params, deltas.shape[0])
    if len(rows) != 1:
        raise ValueError(f"slerp merges the base with exactly one other model, got {len(rows)}")
    t = float(global_value(params, T))
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    v0 = base.reshape(-1).to(work)
    v1 = deltas[rows[0]].reshape(-1).to(work) + v0
    c0, c1 = slerp_coefficients(t, v0, v1)
    merged = v1.mul_(c1).add_(v0, alpha=c0)
    return merged.view(base.shape).to(base.dtype)


SLERP = MergeMethod(
    name="slerp",
    fn=slerp_merge,
    params=(T,),
    needs_base=True,
    min_models=1,
    max_models=1,
    doc="Spherical interpolation between the base and one model, https://en.wikipedia.org/wiki/Slerp",
)
