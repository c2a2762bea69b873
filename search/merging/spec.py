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
from search.methods import MergeMethod, TensorParams, get_method
from search.weights.layout import ModelLayout


class MergeSpec(BaseModel):
    """Method, shared parameters, and per-model parameters (one mapping per model, in ``models`` order).

    ``base_index`` marks a listed model that is the base itself (mergekit allows listing it); its delta is zero.
    Shared ``parameters`` also give the default of per-model ones, as in mergekit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    parameters: dict[str, Setting] = Field(default_factory=dict)
    model_parameters: tuple[dict[str, Setting], ...] = ()
    base_index: int | None = None
    seed: int | None = None

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
                    if i == self.base_index:
                        continue
                    if spec.name not in params and spec.name not in self.parameters:
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
            raise UserError(problem, file=file, field=models_field, fix="list the right number of models")

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
        return TensorParams(per_model=per_model, globals=shared, is_base=is_base)

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
