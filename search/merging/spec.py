"""A merge candidate, independent of where the models live: a method and its parameter settings.

The one-shot ``search merge`` builds a :class:`MergeSpec` from a mergekit recipe; the search builds one per
trial from Optuna's proposals. Both resolve it per tensor with :meth:`MergeSpec.tensor_params` and hand the
result to the same method functions.

>>> spec = MergeSpec(method="ties", parameters={"density": 0.5},
...                  model_parameters=({"weight": 1.0}, {"weight": [0.2, 0.8]}))
>>> spec.check()   # raises UserError on unknown methods, unknown or missing parameters, out-of-range values
"""

from __future__ import annotations

import difflib
import zlib
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from search.errors import UserError
from search.merging.coefficients import Setting, leaf_values, resolve_setting
from search.methods import METHODS, MergeMethod, TensorParams, get_method
from search.weights.layout import ModelLayout


class IgnoredParameterWarning(UserWarning):
    """A recipe sets parameters its method does not take; they are ignored (as mergekit ignores them)."""


class MergeSpec(BaseModel):
    """Method, shared parameters, and per-model parameters (one mapping per model, in ``models`` order).

    ``base_index`` marks a listed model that is the base itself (mergekit allows listing it); its delta is zero.
    ``base_appended`` says that row was not listed but added, as mergekit adds an unlisted ``base_model`` to the
    inputs (methods that ignore the base, linear and karcher, then merge it as one more model). ``has_base`` is
    False when there is no base at all (the first model is then only a reference for the deltas).
    Shared ``parameters`` also give the default of per-model ones, as in mergekit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    parameters: dict[str, Setting] = Field(default_factory=dict)
    model_parameters: tuple[dict[str, Setting], ...] = ()
    base_index: int | None = None
    seed: int | None = None
    has_base: bool = True
    base_appended: bool = False

    @property
    def merge_method(self) -> MergeMethod:
        return lookup_method(self.method)

    def check(self, *, file: str | None = None, models_field: str = "models",
              parameters_field: str = "parameters", method_field: str = "merge_method") -> None:
        """Refuse, before any work, an unknown method, an unknown/missing parameter or a value out of range."""
        method = lookup_method(self.method, file=file, field=method_field)
        known = {p.name: p for p in method.params}
        scopes: list[tuple[str, Mapping[str, Any]]] = [(parameters_field, self.parameters)]
        scopes += [(f"{models_field}[{i}].parameters", p) for i, p in enumerate(self.model_parameters)]
        for where, settings in scopes:
            for pname, setting in settings.items():
                spec = known.get(pname)
                if spec is None:
                    raise UserError(
                        f"'{pname}' is not a parameter of merge method '{method.name}'",
                        file=file, field=f"{where}.{pname}",
                        fix=_did_you_mean(str(pname), list(known))
                        + f"remove it, or use one of: {', '.join(known) or '(none)'}",
                    )
                if where != parameters_field and not spec.per_model:
                    raise UserError(
                        f"'{pname}' is a shared parameter of '{method.name}', not a per-model one",
                        file=file, field=f"{where}.{pname}", fix=f"move it to the top-level '{parameters_field}'",
                    )
                for value in leaf_values(setting):
                    problem = spec.check(value)
                    if problem:
                        low = "" if spec.low is None else f"{spec.low}"
                        high = "" if spec.high is None else f"{spec.high}"
                        raise UserError(problem, file=file, field=f"{where}.{pname}",
                                        fix=f"give a value in [{low}, {high}]" if spec.kind != "bool"
                                        else "write true or false")
        for spec in method.params:
            if not spec.required:
                continue
            if spec.per_model:
                for i, params in enumerate(self.model_parameters):
                    if i == self.base_index and method.excludes_base:
                        continue
                    missing = spec.name not in params and spec.name not in self.parameters
                    if missing and i == self.base_index and self.base_appended:
                        raise UserError(
                            f"'{method.name}' merges the base_model as one more model (as mergekit does when the "
                            f"base is not listed under models), and no '{spec.name}' applies to it",
                            file=file, field=f"{parameters_field}.{spec.name}",
                            fix=f"add '{spec.name}' to the top-level '{parameters_field}', list the base under "
                                f"'{models_field}' with its own '{spec.name}', or remove 'base_model'",
                        )
                    if missing:
                        raise UserError(
                            f"merge method '{method.name}' needs '{spec.name}' for every model",
                            file=file, field=f"{models_field}[{i}].parameters.{spec.name}",
                            fix=f"add '{spec.name}' to the model's parameters or to the top-level '{parameters_field}'",
                        )
            elif spec.name not in self.parameters:
                raise UserError(f"merge method '{method.name}' needs '{spec.name}'", file=file,
                                field=f"{parameters_field}.{spec.name}", fix=f"add '{spec.name}: <value>'")
        is_base = [i == self.base_index for i in range(len(self.model_parameters))]
        problem = method.check_model_count(is_base)
        if problem:
            raise UserError(problem, file=file, field=models_field, fix=self._count_fix(method, is_base))
        if method.check_count is not None:
            for spec in method.global_params:
                for value in leaf_values(self.parameters.get(spec.name)) if spec.name in self.parameters else ():
                    problem = method.check_count(method.count_models(is_base), {spec.name: value})
                    if problem:
                        raise UserError(problem, file=file, field=f"{parameters_field}.{spec.name}",
                                        fix=f"list more models or lower '{spec.name}'")

    def _count_fix(self, method: MergeMethod, is_base: list[bool]) -> str:
        """How to reach a model count ``method`` accepts, in the words of a recipe."""
        low, high = method.min_models, method.max_models
        want = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        what = ("model" if high == 1 else "models") + (" besides the base" if method.excludes_base else "")
        fix = f"list {want} {what} under 'models'"
        if self.base_appended and high is not None and method.count_models(is_base) > high:
            fix += f" ('{method.name}' counts an unlisted base_model as one more model: remove 'base_model')"
        if method.name == "nuslerp":
            fix += "; to interpolate more than two models use multislerp or karcher"
        return fix

    def ignored_parameters(self) -> list[str]:
        """Where this spec sets a parameter that its method does not take but another method does.

        mergekit resolves only the parameters of the method it runs and silently ignores the rest (a ``weight``
        on a ``karcher`` merge, a ``density`` on ``sce``); those recipes run here too, with a warning naming
        these. A name no method takes is still refused (a typo: ``densty``).
        """
        method = METHODS.get(self.method)
        if method is None:
            return []
        own = {p.name for p in method.params}
        anyone = {p.name for m in METHODS.values() for p in m.params}
        scopes = [("parameters", self.parameters)]
        scopes += [(f"models[{i}].parameters", p) for i, p in enumerate(self.model_parameters)]
        return [f"{where}.{name}" for where, params in scopes for name in params if name not in own and name in anyone]

    def without_ignored(self) -> MergeSpec:
        """This spec without the parameters :meth:`ignored_parameters` names."""
        method = METHODS.get(self.method)
        if method is None or not self.ignored_parameters():
            return self
        anyone = {p.name for m in METHODS.values() for p in m.params}
        own = {p.name for p in method.params}

        def keep(params: dict[str, Setting]) -> dict[str, Setting]:
            return {k: v for k, v in params.items() if k in own or k not in anyone}

        return self.model_copy(update={"parameters": keep(self.parameters),
                                       "model_parameters": tuple(keep(p) for p in self.model_parameters)})

    def tensor_params(self, name: str, layout: ModelLayout) -> TensorParams:
        """Resolve every parameter for one tensor (granularity, gradients and filters applied)."""
        method = self.merge_method
        role = layout.role(name)
        t = layout.gradient_position(name)
        shared: dict[str, Any] = {}
        for spec in method.global_params:
            value = resolve_setting(self.parameters.get(spec.name), name=name, role=role, t=t) \
                if spec.name in self.parameters else None
            shared[spec.name] = spec.default if value is None else _cast(value, spec.kind)
        per_model: dict[str, torch.Tensor] = {}
        for spec in method.per_model_params:
            values = []
            for i, params in enumerate(self.model_parameters):
                value = None
                for scope in (params, self.parameters):
                    if spec.name in scope:
                        value = resolve_setting(scope[spec.name], name=name, role=role, t=t)
                        if value is not None:
                            break
                if value is None:
                    value = spec.default if spec.default is not None else 0.0
                values.append(float(value))
            # float64 on the CPU: methods read these as Python numbers (int(density * n) must match mergekit's)
            per_model[spec.name] = torch.tensor(values, dtype=torch.float64)
        is_base = torch.tensor([i == self.base_index for i in range(len(self.model_parameters))], dtype=torch.bool)
        return TensorParams(per_model=per_model, globals=shared, is_base=is_base, has_base=self.has_base)

    def tensor_seed(self, name: str) -> int | None:
        """A per-tensor seed for stochastic methods: stable across runs, different across tensors."""
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def lookup_method(name: str, *, file: str | None = None, field: str = "merge_method") -> MergeMethod:
    """The registry entry for ``name``, or a UserError naming where it was asked for and the known methods."""
    try:
        return get_method(name)
    except UserError as exc:
        raise UserError(f"unknown merge method '{name}'", file=file, field=field, fix=exc.fix) from None


def _cast(value: Any, kind: str) -> Any:
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return int(round(float(value)))
    return float(value)


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean '{close[0]}'? " if close else ""
