"""The mergekit recipe of a selected model: the same weights, rebuilt (or tweaked) with mergekit.

- A single merge (a trial or a baseline) is one mergekit config. Our per-layer lists are mergekit gradients
  with exactly ``num_layers`` points (mergekit lands them on each layer); our ``{kind: ...}`` conditions
  become mergekit ``filter`` conditions: substrings of tensor names that select exactly the tensors of that
  module kind in this architecture, checked against the model's layout tensor by tensor. Our ``seed`` is
  dropped (mergekit has none): DARE / DELLA masks are random, so mergekit reproduces those merges in
  expectation only.
- A mixture (an interpolation or a soup) of task-arithmetic / linear merges collapses into one task-arithmetic
  config (the weights are linear in the task vectors). Any other mixture becomes a ``mergekit-multimerge``
  file: one named stage per ingredient, then a ``linear`` merge of the stages with the mixture's coefficients.

>>> recipe = mixture_recipe([(spec, 1.0)], base="/m/base", models=["/m/a"], layout=layout)  # doctest: +SKIP
>>> print(recipe.yaml_text())                                                               # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from search.errors import UserError
from search.merging.coefficients import Condition, resolve_setting
from search.merging.spec import MergeSpec
from search.methods.checkpoints import CHECKPOINT_METHODS, linear_weight
from search.methods.registry import MERGEKIT_METHODS  # same equations as mergekit 0.1.5 (tests/test_methods_*)
from search.weights.layout import MODULE_KINDS, ModelLayout

_TOLERANCE = 1e-12


class NotTranslatable(ValueError):
    """A setting that no set of name filters reproduces for this architecture."""


@dataclass
class ExportRecipe:
    """mergekit YAML documents (one config, or multimerge stages then the final merge) and what to know."""

    documents: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)

    @property
    def multistage(self) -> bool:
        return len(self.documents) > 1

    def yaml_text(self) -> str:
        return "---\n".join(yaml.safe_dump(doc, sort_keys=False) for doc in self.documents)


# -- settings: module kinds -> name filters ---------------------------------------------------------------

def _plain(setting: Any) -> Any:
    """A setting as plain YAML data (conditions as mappings without empty fields)."""
    if isinstance(setting, Condition):
        return {k: _plain(v) for k, v in setting.model_dump(exclude_none=True).items()}
    if isinstance(setting, Mapping):
        return {k: _plain(v) for k, v in setting.items() if v is not None}
    if isinstance(setting, (list, tuple)):
        return [_plain(v) for v in setting]
    return setting


def _conditions(setting: Any) -> list[Condition] | None:
    """The condition list of a setting, or None for a scalar / gradient."""
    if isinstance(setting, (Condition, Mapping)):
        setting = [setting]
    if isinstance(setting, list) and setting and all(isinstance(c, (Condition, Mapping)) for c in setting):
        return [c if isinstance(c, Condition) else Condition.model_validate(c) for c in setting]
    return None


def _segments(name: str) -> list[str]:
    parts = name.split(".")
    out = [p for p in parts if p and not p.isdigit()]
    out += [f"{a}.{b}" for a, b in zip(parts, parts[1:]) if not a.isdigit() and not b.isdigit()]
    return out + [name]


def cover_filters(targets: Sequence[str], others: Sequence[str]) -> list[str]:
    """Few name substrings that together match every target and no other name (greedy set cover).

    >>> cover_filters(["l.0.attn.q", "l.0.attn.k", "l.1.attn.q"], ["l.0.mlp.up", "l.1.mlp.up"])
    ['attn']
    """
    left = list(targets)
    chosen: list[str] = []
    while left:
        candidates = {s for n in left for s in _segments(n)}
        valid = [c for c in candidates if not any(c in o for o in others)]
        if not valid:
            raise NotTranslatable(f"no name filter selects '{left[0]}' without selecting other tensors")
        best = max(valid, key=lambda c: (sum(c in n for n in left), -len(c), c))
        chosen.append(best)
        left = [n for n in left if best not in n]
    return chosen


def to_filters(setting: Any, layout: ModelLayout) -> Any:
    """The setting with every ``kind`` condition replaced by ``filter`` conditions (exact for this layout)."""
    conditions = _conditions(setting)
    if conditions is None or all(c.kind is None for c in conditions):
        return _plain(setting)
    pool = list(layout.roles)
    out: list[dict[str, Any]] = []
    for cond in conditions:
        matched = [n for n in pool if cond.matches(n, layout.role(n))]
        rest = [n for n in pool if n not in set(matched)]
        value = _plain(cond.value)
        if cond.kind is None:
            out.append(_plain(cond))
        elif matched:
            # filters that say the kind on their own (match nothing else in the model) read best; else filters
            # that are exact given the conditions before them (first match wins, as in mergekit)
            everything_else = [n for n in layout.roles if n not in set(matched)]
            try:
                filters = cover_filters(matched, everything_else)
            except NotTranslatable:
                filters = cover_filters(matched, rest)
            out += [{"filter": f, "value": value} for f in filters]
        pool = rest
    check_same(setting, out, layout)
    return out


def check_same(original: Any, translated: Any, layout: ModelLayout) -> None:
    """Every tensor of the layout resolves to the same value under both settings, or NotTranslatable."""
    for name in layout.roles:
        role, t = layout.role(name), layout.gradient_position(name)
        a = resolve_setting(_plain(original), name=name, role=role, t=t)
        b = resolve_setting(translated, name=name, role=role, t=t)
        if (a is None) != (b is None) or (a is not None and abs(float(a) - float(b)) > _TOLERANCE):  # type: ignore[arg-type]
            raise NotTranslatable(f"'{name}' takes {a} but the translated setting gives {b}")


# -- one merge ---------------------------------------------------------------------------------------------

def map_setting(setting: Any, fn: Any) -> Any:
    """``setting`` with ``fn`` applied to every value (gradient points, condition values), structure kept."""
    if isinstance(setting, Condition):
        return setting.model_copy(update={"value": map_setting(setting.value, fn)})
    if isinstance(setting, dict):
        return {**setting, "value": map_setting(setting["value"], fn)}
    if isinstance(setting, list):
        return [map_setting(item, fn) for item in setting]
    return fn(setting)


def checkpoints_as_linear(spec: MergeSpec) -> MergeSpec:
    """A checkpoint average as the ``linear`` merge with the same weights, per checkpoint and per tensor.

    Exact for the settings a search writes (one value, or one point per layer): the weights are a nonlinear
    function of ``decay``, so a gradient with fewer points than layers would interpolate differently.
    """
    n = len(spec.model_parameters)
    param = next(iter(spec.parameters), None)
    weights = []
    for i in range(n):
        if param is None:
            weights.append({"weight": linear_weight(spec.method, n, i, None, None)})
        else:
            weights.append({"weight": map_setting(spec.parameters[param],
                                                  functools.partial(linear_weight, spec.method, n, i, param))})
    return MergeSpec(method="linear", parameters={"normalize": True}, model_parameters=tuple(weights),
                     has_base=False)


def spec_recipe(spec: MergeSpec, *, base: str, models: Sequence[str], layout: ModelLayout,
                dtype: str = "float32") -> dict[str, Any]:
    """The mergekit config of one merge spec over our parents (``models`` in the spec's order)."""
    if spec.method in CHECKPOINT_METHODS:  # mergekit has none: its linear merge with the same weights
        spec = checkpoints_as_linear(spec)
    method = spec.merge_method
    doc: dict[str, Any] = {"merge_method": spec.method}
    if method.needs_base or (method.optional_base and spec.has_base):  # nuslerp/multislerp: around the base
        doc["base_model"] = base
    listed = []
    for path, params in zip(models, spec.model_parameters):
        entry: dict[str, Any] = {"model": path}
        if params:
            entry["parameters"] = {k: to_filters(v, layout) for k, v in params.items()}
        listed.append(entry)
    if spec.method == "slerp":  # mergekit's slerp lists the base among its two models
        listed.insert(0, {"model": base})
    doc["models"] = listed
    if spec.parameters:
        doc["parameters"] = {k: to_filters(v, layout) for k, v in spec.parameters.items()}
    doc["dtype"] = dtype
    return doc


def spec_notes(spec: MergeSpec) -> list[str]:
    notes = []
    if spec.merge_method.stochastic and spec.seed is not None:
        notes.append(f"`{spec.method}` drops task-vector entries at random; merge-search fixed its masks "
                     f"with seed {spec.seed}, which mergekit has no field for: mergekit reproduces this "
                     "merge in expectation only (`search merge` with `seed:` added reproduces it exactly).")
    if spec.method in CHECKPOINT_METHODS:
        notes.append(f"mergekit 0.1.5 has no `{spec.method}` method: the recipe is the `linear` merge with the "
                     "same weights per checkpoint (the same model); `search merge` runs it too.")
    elif spec.merge_method.statistics is not None:
        notes.append(f"mergekit 0.1.5 has no `{spec.method}` method, and neither it nor `search merge` can rebuild "
                     f"this merge from the recipe alone: `{spec.method}` reads the parents' statistics over the "
                     "run's calibration data (the run folder's statistics/); the exported weights are the merge.")
    elif spec.method not in MERGEKIT_METHODS:
        notes.append(f"mergekit 0.1.5 has no `{spec.method}` method: run this recipe with `search merge` "
                     "(same YAML format).")
    return notes


# -- mixtures ----------------------------------------------------------------------------------------------

def _linear_coefficients(spec: MergeSpec, name: str, layout: ModelLayout) -> list[float] | None:
    """Per-model ``a`` with ``merge(spec) = base + sum_i a_i delta_i`` for this tensor, or None."""
    linear = spec.merge_method.linear_coefficients
    if spec.base_index is not None or linear is None:
        return None
    try:
        beta, coeffs = linear(spec.tensor_params(name, layout), len(spec.model_parameters))
    except UserError:  # linear, normalize: true, weights summing to 0
        return None
    return coeffs if beta == 1.0 else None  # base * beta: not base + sum a_i delta_i


def _setting_for(values: dict[str, float], layout: ModelLayout) -> Any:
    """A setting (kind conditions over per-layer lists) taking ``values[name]`` on every tensor, or None."""
    by_kind: dict[str, list[str]] = {k: [] for k in MODULE_KINDS}
    for name in values:
        by_kind[layout.role(name).kind].append(name)
    conditions: list[dict[str, Any]] = []
    for kind, names in by_kind.items():
        if not names:
            continue
        distinct = {round(values[n], 15) for n in names}
        if len(distinct) == 1:
            conditions.append({"kind": kind, "value": values[names[0]]})
            continue
        per_layer: dict[int, float] = {}
        for n in names:
            layer = layout.role(n).layer
            if layer is not None:
                per_layer.setdefault(layer, values[n])
        if not per_layer:
            return None
        points, last = [], per_layer[min(per_layer)]
        for layer in range(layout.num_layers):
            last = per_layer.get(layer, last)
            points.append(last)
        conditions.append({"kind": kind, "value": points})
    if len({repr(c["value"]) for c in conditions}) == 1:
        return conditions[0]["value"]
    conditions[-1] = {"value": conditions[-1]["value"]}  # the last one catches every remaining tensor
    for name, target in values.items():
        got = resolve_setting(conditions, name=name, role=layout.role(name), t=layout.gradient_position(name))
        if got is None or abs(float(got) - target) > _TOLERANCE:  # type: ignore[arg-type]
            return None
    return conditions


def collapse_linear(mixture: Sequence[tuple[MergeSpec, float]], layout: ModelLayout) -> MergeSpec | None:
    """One task-arithmetic spec equal to a mixture of task-arithmetic / linear specs, or None if none is.

    ``sum_j c_j (base + sum_i a_ij delta_i) = base + sum_i (sum_j c_j a_ij) delta_i`` when ``sum_j c_j = 1``.
    """
    if abs(sum(c for _, c in mixture) - 1.0) > 1e-9:
        return None
    k = len(mixture[0][0].model_parameters)
    combined: list[dict[str, float]] = [{} for _ in range(k)]
    for name in layout.roles:
        total = [0.0] * k
        for spec, c in mixture:
            coeffs = _linear_coefficients(spec, name, layout)
            if coeffs is None or len(coeffs) != k:
                return None
            total = [t + c * a for t, a in zip(total, coeffs)]
        for i in range(k):
            combined[i][name] = total[i]
    settings = [_setting_for(values, layout) for values in combined]
    if any(s is None for s in settings):
        return None
    return MergeSpec(method="task_arithmetic", parameters={"lambda": 1.0, "normalize": False},
                     model_parameters=tuple({"weight": s} for s in settings))


def mixture_recipe(mixture: Sequence[tuple[MergeSpec, float]], *, base: str, models: Sequence[str],
                   layout: ModelLayout, dtype: str = "float32", stage_names: Sequence[str] | None = None
                   ) -> ExportRecipe:
    """The mergekit recipe of ``sum_j c_j merge(spec_j)``: one config where possible, else multimerge."""
    if len(mixture) == 1 and mixture[0][1] == 1.0:
        spec = mixture[0][0]
        return ExportRecipe([spec_recipe(spec, base=base, models=models, layout=layout, dtype=dtype)],
                            spec_notes(spec))
    collapsed = collapse_linear(mixture, layout)
    if collapsed is not None:
        return ExportRecipe([spec_recipe(collapsed, base=base, models=models, layout=layout, dtype=dtype)], [
            "This mixture of task-arithmetic / linear merges is linear in the task vectors: the recipe is "
            "the one task-arithmetic merge it equals (per-layer weights summed over its ingredients)."])
    names = list(stage_names or [f"ingredient_{j}" for j in range(len(mixture))])
    documents, notes = [], []
    for name, (spec, _) in zip(names, mixture):
        stage = spec_recipe(spec, base=base, models=models, layout=layout, dtype=dtype)
        documents.append({"name": name, **stage})
        notes += spec_notes(spec)
    documents.append({"merge_method": "linear",
                      "models": [{"model": n, "parameters": {"weight": c}}
                                 for n, (_, c) in zip(names, mixture)],
                      "parameters": {"normalize": False}, "dtype": dtype})
    notes.insert(0, "This mixture is not one mergekit merge (its ingredients are not all linear in the "
                    "task vectors): the YAML is a `mergekit-multimerge` file, one named stage per "
                    "ingredient, then a linear merge of the stages with the mixture's coefficients. Run it "
                    "with `mergekit-multimerge FILE --intermediate-dir DIR --out-path OUT`.")
    return ExportRecipe(documents, list(dict.fromkeys(notes)))
