"""The generalized task-arithmetic family, as mergekit's ``GeneralizedTaskArithmeticMerge``.

One equation, three switches (sparsification, sign consensus, defaults). For each model ``i`` that is not the
base, with per-model ``weight`` w_i and ``density`` (plus ``gamma`` / ``epsilon``):

    x_i     = w_i * sparsify(delta_i)               (sparsify.py; identity for task_arithmetic)
    mixed   = sum_i x_i,  divisor = sum_i w_i       (|divisor| < 1e-8 -> 1)          without consensus
    mixed   = disjoint sum, divisor per parameter   (consensus.py)                      ties-style
    merged  = base + lambda * mixed / divisor       (normalize: true)
    merged  = base + lambda * mixed                 (normalize: false)

==================  ==================  =========  =========  =======
method              sparsification      consensus  normalize  rescale
==================  ==================  =========  =========  =======
task_arithmetic     none                no         false      false
ties                magnitude           sum        true       false
dare_linear         random              no         false      true
dare_ties           random              sum        false      true
breadcrumbs         magnitude_outliers  no         false      false
breadcrumbs_ties    magnitude_outliers  sum        false      false
della               della_magprune      sum        true       true
della_linear        della_magprune      no         false      true
==================  ==================  =========  =========  =======

Rows of ``deltas`` that are the base take no part (mergekit merges ``group.non_base``). A negative weight
subtracts its task vector (negation). ``int8_mask`` only saves memory in mergekit; it is accepted so mergekit
recipes load, and changes nothing here. Every method accepts mergekit's full parameter set, so ``density`` and
``rescale`` are accepted (and, as in mergekit, have no effect) for ``task_arithmetic``.

>>> import torch
>>> base = torch.zeros(2)
>>> deltas = torch.tensor([[1.0, -2.0], [3.0, 1.0]])
>>> params = TensorParams(per_model={"weight": torch.tensor([1.0, 1.0])}, globals={"lambda": 0.5})
>>> TASK_ARITHMETIC.merge(base, deltas, params)
tensor([ 2.0000, -0.5000])
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from search.methods.base import (
    MergeMethod,
    ParamSpec,
    TensorParams,
    flat_out,
    global_value,
    make_generator,
    model_rows,
    model_values,
)
from search.methods.consensus import ties_combine
from search.methods.linear import add_weighted_deltas
from search.methods.sparsify import (
    apply_mask,
    della_mask,
    della_problem,
    magnitude_mask,
    outlier_mask,
    random_mask,
)

Sparsification = Literal["magnitude", "random", "magnitude_outliers", "della_magprune"]

WEIGHT = ParamSpec(
    "weight", per_model=True, default=None, low=-10.0, high=10.0, search_low=0.0, search_high=1.0,
    doc="coefficient of the model's task vector; negative subtracts it",
)
LAMBDA = ParamSpec(
    "lambda", default=1.0, low=-10.0, high=10.0, search_low=0.5, search_high=1.5,
    doc="global scale of the merged task vector",
)
INT8_MASK = ParamSpec("int8_mask", kind="bool", default=False, doc="mergekit memory option; no effect here")
GAMMA = ParamSpec(
    "gamma", per_model=True, default=0.01, low=0.0, high=1.0, search_low=0.0, search_high=0.1,
    doc="fraction of largest-magnitude entries removed as outliers (only when density < 1)",
)
EPSILON = ParamSpec(
    "epsilon", per_model=True, default=0.15, low=0.0, high=0.5, search_low=0.0, search_high=0.15,
    doc="half-width of the keep-probability range around density, by magnitude rank",
)


@dataclass(frozen=True)
class Variant:
    """One member of the family: what it does to each task vector and how it combines them."""

    sparsification: Sparsification | None
    consensus: bool
    normalize: ParamSpec
    rescale: ParamSpec
    density: ParamSpec

    @property
    def random(self) -> bool:
        return self.sparsification in ("random", "della_magprune")


def _normalize(default: bool) -> ParamSpec:
    return ParamSpec("normalize", kind="bool", default=default, doc="divide by the sum of the weights")


def _rescale(default: bool) -> ParamSpec:
    return ParamSpec(
        "rescale", kind="bool", default=default, doc="rescale kept entries to keep the task vector's L1 norm"
    )


def _density(search: tuple[float, float] | None) -> ParamSpec:
    if search is None:
        return ParamSpec(
            "density", per_model=True, default=1.0, low=0.0, high=1.0, doc="no effect (no sparsification)"
        )
    return ParamSpec(
        "density", per_model=True, default=1.0, low=0.0, high=1.0,
        search_low=search[0], search_high=search[1], doc="fraction of the task vector's entries kept",
    )


def _sparse_rows(
    deltas: torch.Tensor,
    rows: Sequence[int],
    variant: Variant,
    params: TensorParams,
    seed: int | None,
):
    """Yield ``(row, mask)`` for each model row, masks drawn in row order from one generator."""
    k = deltas.shape[0]
    densities = model_values(params, variant.density, k)
    gammas = model_values(params, GAMMA, k) if variant.sparsification == "magnitude_outliers" else None
    epsilons = model_values(params, EPSILON, k) if variant.sparsification == "della_magprune" else None
    generator = make_generator(seed) if variant.random else None
    for i in rows:
        delta = deltas[i]
        if variant.sparsification == "magnitude":
            mask = magnitude_mask(delta, densities[i])
        elif variant.sparsification == "magnitude_outliers":
            mask = outlier_mask(delta, densities[i], gammas[i])
        elif variant.sparsification == "random":
            mask = random_mask(delta, densities[i], generator)
        elif variant.sparsification == "della_magprune":
            mask = della_mask(delta, densities[i], epsilons[i], generator)
        else:
            mask = None
        yield i, mask


sparse_rows = _sparse_rows  # public: gradient refinement (search/refine) holds the same masks fixed


def generalized_task_arithmetic(
    base: torch.Tensor,
    deltas: torch.Tensor,
    params: TensorParams,
    seed: int | None,
    out: torch.Tensor | None,
    *,
    variant: Variant,
) -> torch.Tensor:
    """Merge one tensor with the family member ``variant`` (see the module docstring)."""
    k = deltas.shape[0]
    rows = model_rows(params, k)
    if not rows:
        return base
    weights = model_values(params, WEIGHT, k)
    lam = float(global_value(params, LAMBDA))
    normalize = bool(global_value(params, variant.normalize))
    rescale = bool(global_value(params, variant.rescale))

    if variant.consensus:
        weighted = torch.empty((len(rows), base.numel()), dtype=base.dtype, device=base.device)
        for j, (i, mask) in enumerate(_sparse_rows(deltas, rows, variant, params, seed)):
            apply_mask(deltas[i], mask, rescale=rescale, scale=weights[i], out=weighted[j].view(base.shape))
        return ties_combine(base, weighted, [weights[i] for i in rows], normalize=normalize, lam=lam, out=out)

    divisor = sum(weights[i] for i in rows)
    if not normalize or abs(divisor) < 1e-8:
        divisor = 1.0
    if variant.sparsification is None:
        _, coeffs = _plain_coefficients(params, k, variant=variant)
        return add_weighted_deltas(base, deltas, coeffs, out=out)

    mixed: torch.Tensor | None = None
    for i, mask in _sparse_rows(deltas, rows, variant, params, seed):
        scale = weights[i] * lam / divisor
        if mixed is None:
            mixed = apply_mask(deltas[i], mask, rescale=rescale, scale=scale)
        else:
            mixed.add_(apply_mask(deltas[i], mask, rescale=rescale, scale=scale))
    target = flat_out(out)
    return torch.add(base.reshape(-1), mixed.reshape(-1), out=target).view(base.shape)


def _plain_coefficients(params: TensorParams, k: int, *, variant: Variant) -> tuple[float, list[float]]:
    """``(1, c)`` with ``merged = base + sum_i c_i * delta_i`` (members without sparsification or consensus)."""
    rows = model_rows(params, k)
    weights = model_values(params, WEIGHT, k)
    lam = float(global_value(params, LAMBDA))
    divisor = sum(weights[i] for i in rows)
    if not bool(global_value(params, variant.normalize)) or abs(divisor) < 1e-8:
        divisor = 1.0
    return 1.0, [weights[i] * lam / divisor if i in rows else 0.0 for i in range(k)]


def _della_check(
    per_model: Mapping[str, Sequence[float]], globals_: Mapping[str, float | bool | int]
) -> str | None:
    densities = per_model.get("density", ())
    epsilons = per_model.get("epsilon", [EPSILON.default] * len(densities))
    for density, epsilon in zip(densities, epsilons):
        problem = della_problem(float(density), float(epsilon))
        if problem:
            return problem
    return None


def _family_member(
    name: str,
    *,
    sparsification: Sparsification | None,
    consensus: bool,
    normalize: bool,
    rescale: bool,
    density_search: tuple[float, float] | None,
    doc: str,
) -> MergeMethod:
    variant = Variant(
        sparsification=sparsification,
        consensus=consensus,
        normalize=_normalize(normalize),
        rescale=_rescale(rescale),
        density=_density(density_search),
    )
    params: tuple[ParamSpec, ...] = (
        INT8_MASK, variant.normalize, variant.rescale, LAMBDA, WEIGHT, variant.density,
    )
    if sparsification == "magnitude_outliers":
        params += (GAMMA,)
    if sparsification == "della_magprune":
        params += (EPSILON,)
    return MergeMethod(
        name=name,
        fn=functools.partial(generalized_task_arithmetic, variant=variant),
        params=params,
        needs_base=True,
        min_models=1,
        stochastic=variant.random,
        elementwise=sparsification is None and not consensus,
        doc=doc,
        check_values=_della_check if sparsification == "della_magprune" else None,
        linear_coefficients=(functools.partial(_plain_coefficients, variant=variant)
                             if sparsification is None and not consensus else None),
    )


TASK_ARITHMETIC = _family_member(
    "task_arithmetic", sparsification=None, consensus=False, normalize=False, rescale=False,
    density_search=None,
    doc="Task arithmetic: base + lambda * sum_i w_i delta_i, https://arxiv.org/abs/2212.04089",
)
TIES = _family_member(
    "ties", sparsification="magnitude", consensus=True, normalize=True, rescale=False,
    density_search=(0.1, 1.0),
    doc="TIES: trim by magnitude, elect sign, disjoint mean, https://arxiv.org/abs/2306.01708",
)
DARE_LINEAR = _family_member(
    "dare_linear", sparsification="random", consensus=False, normalize=False, rescale=True,
    density_search=(0.1, 1.0),
    doc="DARE: random drop and rescale, summed, https://arxiv.org/abs/2311.03099",
)
DARE_TIES = _family_member(
    "dare_ties", sparsification="random", consensus=True, normalize=False, rescale=True,
    density_search=(0.1, 1.0),
    doc="DARE drop and rescale with TIES sign election, https://arxiv.org/abs/2311.03099",
)
BREADCRUMBS = _family_member(
    "breadcrumbs", sparsification="magnitude_outliers", consensus=False, normalize=False, rescale=False,
    density_search=(0.5, 1.0),
    doc="Model Breadcrumbs: drop outliers and small entries, https://arxiv.org/abs/2312.06795",
)
BREADCRUMBS_TIES = _family_member(
    "breadcrumbs_ties", sparsification="magnitude_outliers", consensus=True, normalize=False, rescale=False,
    density_search=(0.5, 1.0),
    doc="Model Breadcrumbs with TIES sign election, https://arxiv.org/abs/2312.06795",
)
DELLA = _family_member(
    "della", sparsification="della_magprune", consensus=True, normalize=True, rescale=True,
    density_search=(0.2, 0.8),
    doc="DELLA: magnitude-ranked random drop, sign election, https://arxiv.org/abs/2406.11617",
)
DELLA_LINEAR = _family_member(
    "della_linear", sparsification="della_magprune", consensus=False, normalize=False, rescale=True,
    density_search=(0.2, 0.8),
    doc="DELLA without sign election, https://arxiv.org/abs/2406.11617",
)
