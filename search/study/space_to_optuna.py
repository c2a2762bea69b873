"""The search space as Optuna sees it, and the way back from a trial's parameters to a merge candidate.

Two encodings:

- **conditional** (TPE, NSGA-II/III, random): ``method`` is a categorical and each method's coefficients are
  suggested only when it is chosen (define-by-run);
- **relaxed** (CMA-ES, GP, QMC, which have no categoricals): ``method_index`` is a float in ``[0, M)`` whose floor
  picks the method, and every method's coefficients are suggested in every trial, so the sampler sees one fixed
  continuous space (the unchosen methods' values are simply unused).

Parameter names read in the dashboard: ``ties.density.layer_group_2.model_code``, ``ties.lambda.global``,
``task_arithmetic.weight.mlp.layer_group_0.model_chat``, ``slerp.t.embedding``.

>>> params = {"method": "ties", "ties.weight.global.model_a": 0.8, "ties.density.global.model_a": 0.5}
>>> spec_from_params(params, plan)            # doctest: +SKIP
MergeSpec(method='ties', ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from search.config.space import Space
from search.merging.spec import MergeSpec, lookup_method
from search.methods import ParamSpec

KINDS_WITH_LAYERS = ("attention", "mlp", "norm")
KINDS_WITHOUT_LAYERS = ("embedding", "lm_head")


@dataclass(frozen=True)
class SearchedParam:
    """One coefficient the sampler chooses: which method/parameter/group/model it is and its range."""

    name: str
    method: str
    param: str
    group: str
    model: str | None
    low: float
    high: float


@dataclass(frozen=True)
class SearchPlan:
    """Everything needed to go from a space to Optuna parameters and back (pure data, no Optuna objects)."""

    methods: tuple[str, ...]
    model_names: tuple[str, ...]
    num_layers: int
    layer_groups: int
    module_kinds: bool
    relaxed: bool
    searched: dict[str, tuple[SearchedParam, ...]]  # method -> its searched coefficients
    fixed: dict[str, dict[str, float | bool]]  # method -> fixed parameter values
    seed: int
    has_base: bool = True  # False: checkpoints without a base (the first is only the reference of the deltas)

    @property
    def groups(self) -> tuple[str, ...]:
        layer = tuple(f"layer_group_{g}" for g in range(self.layer_groups)) if self.layer_groups > 1 else ("global",)
        if not self.module_kinds:
            return layer
        return tuple(f"{k}.{g}" for k in KINDS_WITH_LAYERS for g in layer) + KINDS_WITHOUT_LAYERS


def build_plan(space: Space, num_layers: int) -> SearchPlan:
    """Which coefficients are searched (with ranges) and which are fixed, for every method of the space."""
    groups_n = num_layers if space.granularity.per_layer else min(space.granularity.layer_groups, num_layers)
    model_names = tuple(space.models)
    plan_stub = SearchPlan(methods=tuple(space.methods), model_names=model_names, num_layers=num_layers,
                           layer_groups=groups_n, module_kinds=space.granularity.module_kinds,
                           relaxed=space.relaxed, searched={}, fixed={}, seed=space.seed,
                           has_base=space.base_model is not None)
    searched: dict[str, tuple[SearchedParam, ...]] = {}
    fixed: dict[str, dict[str, float | bool]] = {}
    for method_name, given in space.methods.items():
        method = lookup_method(method_name)
        out: list[SearchedParam] = []
        fixed[method_name] = {}
        for spec in method.params:
            value = given.get(spec.name)
            rng = _range(spec, value)
            if rng is not None and value is None and method.check_count is not None:
                rng = (rng[0], min(rng[1], float(len(model_names))))  # lawa: a window of at most every model
            if rng is None:
                if value is not None:
                    fixed[method_name][spec.name] = value  # type: ignore[assignment]
                continue
            for group in plan_stub.groups:
                owners: tuple[str | None, ...] = model_names if spec.per_model else (None,)
                for model in owners:
                    name = f"{method_name}.{spec.name}.{group}" + (f".model_{model}" if model else "")
                    out.append(SearchedParam(name, method_name, spec.name, group, model, rng[0], rng[1]))
        searched[method_name] = tuple(out)
    return SearchPlan(**{**plan_stub.__dict__, "searched": searched, "fixed": fixed})


def _range(spec: ParamSpec, value: Any) -> tuple[float, float] | None:
    """A range to search, or None when the value is fixed (given, or left at a default)."""
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[1])
    if value is not None or spec.kind == "bool":
        return None
    if spec.required:  # e.g. a weight: nothing to default to, so search its usual range
        low = spec.search_low if spec.search_low is not None else spec.low
        high = spec.search_high if spec.search_high is not None else spec.high
        if low is None or high is None:
            raise ValueError(f"parameter {spec.name} has no search range")
        return float(low), float(high)
    return None


def suggest(trial: Any, plan: SearchPlan) -> dict[str, Any]:
    """Ask ``trial`` for a candidate's parameters (the two encodings above); return them as a flat dict."""
    if plan.relaxed:
        index = trial.suggest_float("method_index", 0.0, float(len(plan.methods)))
        method = plan.methods[min(int(math.floor(index)), len(plan.methods) - 1)]
        for m in plan.methods:
            for p in plan.searched[m]:
                trial.suggest_float(p.name, p.low, p.high)
    else:
        method = trial.suggest_categorical("method", list(plan.methods)) if len(plan.methods) > 1 \
            else plan.methods[0]
        for p in plan.searched[method]:
            trial.suggest_float(p.name, p.low, p.high)
    return {**trial.params, "method": method}


def distributions(plan: SearchPlan, method: str) -> dict[str, Any]:
    """The Optuna distributions a trial of ``method`` has under ``plan`` (to add finished trials by hand)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out: dict[str, Any] = {}
    if plan.relaxed:
        out["method_index"] = FloatDistribution(0.0, float(len(plan.methods)))
        for m in plan.methods:
            out.update({p.name: FloatDistribution(p.low, p.high) for p in plan.searched[m]})
    else:
        if len(plan.methods) > 1:
            out["method"] = CategoricalDistribution(list(plan.methods))
        out.update({p.name: FloatDistribution(p.low, p.high) for p in plan.searched[method]})
    return out


def spec_from_params(params: dict[str, Any], plan: SearchPlan) -> MergeSpec:
    """The merge candidate a trial's parameters describe (pure; used by trials, selection and export)."""
    method = params.get("method")
    if method is None and "method_index" in params:
        method = plan.methods[min(int(math.floor(params["method_index"])), len(plan.methods) - 1)]
    if method is None:
        method = plan.methods[0]
    shared: dict[str, Any] = dict(plan.fixed.get(method, {}))
    per_model: dict[str, dict[str, Any]] = {m: {} for m in plan.model_names}
    by_param: dict[tuple[str, str | None], dict[str, float]] = {}
    for p in plan.searched[method]:
        by_param.setdefault((p.param, p.model), {})[p.group] = float(params[p.name])
    for (pname, model), values in by_param.items():
        setting = _setting(values, plan)
        if model is None:
            shared[pname] = setting
        else:
            per_model[model][pname] = setting
    return MergeSpec(method=method, parameters=shared,
                     model_parameters=tuple(per_model[m] for m in plan.model_names), seed=plan.seed,
                     has_base=plan.has_base)


def _setting(values: dict[str, float], plan: SearchPlan) -> Any:
    """Group values as a mergekit-style setting: a scalar, a per-layer list, or module-kind conditions."""

    def per_layer(prefix: str) -> float | list[float]:
        if plan.layer_groups == 1:
            return values[f"{prefix}global"]
        return [values[f"{prefix}layer_group_{layer * plan.layer_groups // plan.num_layers}"]
                for layer in range(plan.num_layers)]

    if not plan.module_kinds:
        return per_layer("")
    conditions: list[dict[str, Any]] = [{"kind": k, "value": values[k]} for k in KINDS_WITHOUT_LAYERS]
    conditions += [{"kind": k, "value": per_layer(f"{k}.")} for k in KINDS_WITH_LAYERS]
    conditions.append({"value": per_layer("mlp.")})  # tensors of no known kind follow the MLP values
    return conditions


def params_for_uniform(plan: SearchPlan, method: str, values: dict[str, float]) -> dict[str, float] | None:
    """Trial parameters giving every group of each searched parameter the value in ``values`` (by parameter
    name), when that candidate lies inside the plan's space; None when it does not (other method, out of range)."""
    if method not in plan.methods:
        return None
    params: dict[str, Any] = {}
    for p in plan.searched[method]:
        v = values.get(p.param)
        if v is None or not p.low <= v <= p.high:
            return None
        params[p.name] = v
    for name, fixed in plan.fixed.get(method, {}).items():
        if name in values and values[name] != fixed:
            return None
    if plan.relaxed:
        params["method_index"] = plan.methods.index(method) + 0.5
        for m in plan.methods:
            if m != method:
                params.update({p.name: (p.low + p.high) / 2 for p in plan.searched[m]})
    elif len(plan.methods) > 1:
        params["method"] = method
    return params
