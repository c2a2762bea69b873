"""A merge candidate as a differentiable function of its searched coefficients: ``theta -> merged weights``.

Refinement optimises the searched ``weight`` (per model) and ``lambda`` values of one trial, at the space's
granularity: ``theta`` holds exactly the Optuna parameters of those two names (``ties.weight.layer_group_1.
model_add``, ...), and each tensor reads the entries its layer group / module kind / model resolve to, the same
way :meth:`MergeSpec.tensor_params` resolves a trial's settings (checked: the index of each entry must resolve
exactly). Everything else of the trial is held fixed. Per tensor, with ``D_i`` the held part of model ``i``'s
task vector and ``w``, ``lam`` read from ``theta``:

- ``task_arithmetic`` / ``dare_linear`` / ``breadcrumbs`` / ``della_linear`` (no sign election):
  ``merged = base + lam * sum_i w_i D_i / div``, ``div = sum_i w_i`` with ``normalize`` (1 when
  ``|sum w| < 1e-8``), else 1. ``D_i`` is the task vector after the trial's sparsification mask and ``rescale``
  factor, both fixed: the masks depend on ``density`` / ``gamma`` / ``epsilon`` and the trial's seed, never on
  the weights, and the rescale factor is a ratio of L1 norms of the task vector before and after the mask.
- ``ties`` / ``dare_ties`` / ``breadcrumbs_ties`` / ``della`` (sign election): as above, and also held fixed
  from the trial's own weights are the elected sign of each entry and so which models agree with it
  (``A_i``): ``merged = base + lam * sum_i w_i A_i D_i / div``, ``div = sum_i w_i A_i`` per entry with
  ``normalize`` (1 where it is 0), else 1.
- ``linear``: ``merged = sum_i w_i (base + delta_i) / sum_i w_i`` (normalize) or without the division.

The recorded trial is then merged by the normal path (:meth:`Parents.merge_into`) from its refined parameters,
as the export and mergekit will merge it: for sign-electing methods, the signs are elected again with the
refined weights, so the scored model can differ from the optimised one where an entry's elected sign flips.

``weights`` maps each tensor name to its merged tensor, differentiable in ``theta``:

>>> merge = LinearMerge.build(parents, plan, trial.params)   # doctest: +SKIP
>>> weights = merge.weights(merge.theta0.requires_grad_())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from search.errors import UserError
from search.methods.base import model_rows, model_values
from search.methods.sparsify import apply_mask
from search.methods.task_arithmetic import Variant, generalized_task_arithmetic, sparse_rows
from search.study.space_to_optuna import SearchedParam, SearchPlan, spec_from_params

REFINED = ("weight", "lambda")  # the coefficients a linear merge is linear (or rational) in


def linear_kind(method_name: str) -> tuple[str, Variant | None] | None:
    """``("gta", variant)`` for the task-arithmetic family, ``("linear", None)`` for ``linear``, None for a
    method that is not linear in its task vectors (slerp, karcher, model_stock, ...)."""
    from search.merging.spec import lookup_method

    method = lookup_method(method_name)
    fn = method.fn
    if isinstance(fn, functools.partial) and fn.func is generalized_task_arithmetic:
        return "gta", fn.keywords["variant"]
    if method.name == "linear":
        return "linear", None
    return None


@dataclass
class _Tensor:
    """What one tensor's merge needs: the fixed parts and where its coefficients sit in ``theta``."""

    base: torch.Tensor
    parts: torch.Tensor            # (r, *shape): held task vectors (masked, rescaled; times A_i with consensus)
    agree: torch.Tensor | None     # (r, *shape) float 0/1, sign-electing methods with normalize only
    weight_index: list[int | None]  # per row: index into theta, or None (fixed weight)
    weight_fixed: list[float]
    lam_index: int | None
    lam_fixed: float
    normalize: bool


@dataclass
class LinearMerge:
    """The differentiable merge of one trial (see the module docstring)."""

    method: str
    kind: str
    refined: tuple[SearchedParam, ...]   # theta's entries, in order
    theta0: torch.Tensor                 # the trial's values (float64 on the CPU)
    low: torch.Tensor
    high: torch.Tensor
    tensors: dict[str, _Tensor]
    fixed: dict[str, torch.Tensor]       # tensors the coefficients do not reach (non-float)

    @classmethod
    def build(cls, parents: Any, plan: SearchPlan, params: dict[str, Any],
              bounds: dict[str, tuple[float, float]] | None = None,
              devices: dict[str, torch.device] | None = None) -> LinearMerge:
        """Hold a trial's merge fixed except its searched ``weight`` / ``lambda`` values (refused: UserError).
        ``devices``: where each tensor's merge must land (the working model's; parents streamed from the CPU
        are held there)."""
        spec = spec_from_params(params, plan)
        kind = linear_kind(spec.method)
        if kind is None:
            raise UserError(f"merge method '{spec.method}' is not linear in its task vectors, so its coefficients "
                            "cannot be refined by gradient", field="refine.from",
                            fix="refine a trial of task_arithmetic, linear, ties, dare_linear, dare_ties, "
                                "breadcrumbs(_ties) or della(_linear)")
        refined = tuple(p for p in plan.searched[spec.method] if p.param in REFINED)
        if not refined:
            raise UserError(f"the space searches no weight or lambda of '{spec.method}': nothing to refine",
                            field=f"methods.{spec.method}", fix="give weight (or lambda) a range to search")
        low, high = check_bounds(refined, bounds or {})
        theta0 = torch.tensor([float(params[p.name]) for p in refined], dtype=torch.float64)
        # the same spec with each refined value replaced by its index in theta: resolving it per tensor says
        # which entry of theta each model's coefficient of that tensor reads
        index_spec = spec_from_params({**params, **{p.name: float(j) for j, p in enumerate(refined)}}, plan)
        searched_names = {p.param for p in refined}
        kind_name, variant = kind
        tensors: dict[str, _Tensor] = {}
        with torch.no_grad():
            for name in parents.names:
                base = parents.base[name]
                deltas = parents.stacked_deltas(name)
                real = spec.tensor_params(name, parents.layout)
                where = index_spec.tensor_params(name, parents.layout)
                held = _held(base, deltas, real, where, variant, searched_names, seed=spec.tensor_seed(name),
                             name=name)
                target = devices.get(name) if devices else None
                if target is not None and held.base.device != target:
                    held.base, held.parts = held.base.to(target), held.parts.to(target)
                    held.agree = None if held.agree is None else held.agree.to(target)
                tensors[name] = held
        return cls(method=spec.method, kind=kind_name, refined=refined, theta0=theta0.clamp(low, high),
                   low=low, high=high, tensors=tensors, fixed=dict(parents.fixed))

    def weights(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every merged tensor for coefficients ``theta`` (differentiable in ``theta``)."""
        out: dict[str, torch.Tensor] = {}
        for name, t in self.tensors.items():
            dtype = t.base.dtype
            th = theta.to(device=t.base.device, dtype=dtype)
            w = torch.stack([th[i] if i is not None else th.new_tensor(f)
                             for i, f in zip(t.weight_index, t.weight_fixed)])
            lam = th[t.lam_index] if t.lam_index is not None else th.new_tensor(t.lam_fixed)
            if self.kind == "linear":
                out[name] = _linear(t, w)
            else:
                out[name] = _gta(t, w, lam)
        return out

    def values(self, theta: torch.Tensor) -> dict[str, float]:
        """Trial parameters (Optuna names) for ``theta``."""
        return {p.name: float(v) for p, v in zip(self.refined, theta.detach().cpu().tolist())}


def check_bounds(refined: tuple[SearchedParam, ...], bounds: dict[str, tuple[float, float]], *,
                 every_name: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip range of each entry: the space's range, or the narrower ``bounds`` (refused when wider).
    ``every_name``: refuse a bound that names no refined parameter of this method."""
    names = {p.param for p in refined}
    for pname in bounds if every_name else ():
        if pname not in names:
            raise UserError(f"refine.bounds names '{pname}', which is not a refined coefficient of this method",
                            field=f"refine.bounds.{pname}", fix=f"bound one of: {', '.join(sorted(names))}")
    low, high = [], []
    for p in refined:
        lo, hi = bounds.get(p.param, (p.low, p.high))
        if lo < p.low - 1e-12 or hi > p.high + 1e-12:
            raise UserError(f"refine.bounds.{p.param} [{lo}, {hi}] reaches outside the space's range "
                            f"[{p.low}, {p.high}] of {p.method}.{p.param}", field=f"refine.bounds.{p.param}",
                            fix=f"give bounds inside [{p.low}, {p.high}] (or widen the range in methods)")
        low.append(lo)
        high.append(hi)
    return torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)


def _index(value: float, name: str) -> int:
    j = round(value)
    if abs(value - j) > 1e-6:  # a setting that blends two groups (never written by a search) cannot be refined
        raise ValueError(f"tensor {name}: coefficient resolves to a blend of searched values ({value})")
    return int(j)


def _held(base: torch.Tensor, deltas: torch.Tensor, real: Any, where: Any, variant: Variant | None,
          searched: set[str], *, seed: int | None, name: str) -> _Tensor:
    """The fixed parts of one tensor's merge, from the trial's resolved parameters ``real`` and the indices
    ``where`` of its refined entries."""
    k = deltas.shape[0]
    if variant is None:  # linear: every listed row takes part
        rows = list(range(k))
        weights_real = [float(v) for v in real.per_model["weight"].tolist()]
        normalize = bool(real.globals.get("normalize", True))
        index = [_index(float(v), name) for v in where.per_model["weight"].tolist()] if "weight" in searched \
            else [None] * k
        parts = deltas
        return _Tensor(base, parts, None, index, weights_real, None, 1.0, normalize)
    rows = model_rows(real, k)
    weights_real = model_values(real, _weight_spec(), k)
    lam_real = float(real.globals.get("lambda", 1.0))
    normalize = bool(real.globals.get("normalize", variant.normalize.default))
    rescale = bool(real.globals.get("rescale", variant.rescale.default))
    held = []
    for i, mask in sparse_rows(deltas, rows, variant, real, seed):
        held.append(apply_mask(deltas[i], mask, rescale=rescale, scale=1.0))
    parts = torch.stack(held) if held else deltas[:0]
    agree = None
    if variant.consensus and held:
        w = torch.tensor([weights_real[i] for i in rows], dtype=parts.dtype, device=parts.device)
        weighted = parts * w.view(-1, *[1] * (parts.dim() - 1))
        sign = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(parts.dtype)
        agreeing = (weighted * sign > 0).to(parts.dtype)
        parts = parts * agreeing
        agree = agreeing if normalize else None
    w_index = [_index(float(where.per_model["weight"][i]), name) if "weight" in searched else None for i in rows]
    lam_index = _index(float(where.globals["lambda"]), name) if "lambda" in searched else None
    return _Tensor(base, parts, agree, w_index, [weights_real[i] for i in rows], lam_index, lam_real, normalize)


def _weight_spec() -> Any:
    from search.methods.task_arithmetic import WEIGHT

    return WEIGHT


def _contract(w: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i stack_i``."""
    return torch.tensordot(w, stack, dims=1)


def _gta(t: _Tensor, w: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    if t.parts.shape[0] == 0:
        return t.base
    mixed = _contract(w, t.parts)
    if t.agree is not None:  # sign election with normalize: a divisor per entry, over the agreeing models
        div = _contract(w, t.agree)
        div = torch.where(div == 0, torch.ones_like(div), div)
        return t.base + lam * mixed / div
    if t.normalize:
        total = w.sum()
        div = torch.where(total.abs() < 1e-8, torch.ones_like(total), total)
        return t.base + lam * mixed / div
    return t.base + lam * mixed


def _linear(t: _Tensor, w: torch.Tensor) -> torch.Tensor:
    total = w.sum()  # (.item() below: a plain number, no autograd warning)
    mixed = _contract(w, t.parts)
    if t.normalize:
        if not math.isfinite(total.item()) or abs(total.item()) < 1e-8:
            raise ValueError("linear with normalize: the weights sum to 0")
        return t.base + mixed / total
    return total * t.base + mixed
