"""Coefficient settings and how one resolves to a number for one tensor.

A setting (a parameter's value in a recipe or a candidate) takes mergekit's forms, plus module kinds:

- one value: ``0.5`` — every tensor;
- a gradient: ``[0.1, 0.5, 0.9]`` — interpolated along the layer stack (layer ``i`` of ``L`` sits at
  ``i / (L - 1)``; embeddings, the final norm and ``lm_head`` sit at 0, as in mergekit);
- one value per layer: a gradient with exactly ``num_layers`` points lands on each layer exactly;
- conditions, first match wins: ``[{filter: self_attn, value: 0.3}, {kind: mlp, value: [0, 1]}, {value: 0.5}]``.
  ``filter`` is mergekit's substring match on the tensor name; ``kind`` (ours) matches the module kind from the
  model's layout (attention, mlp, norm, embedding, lm_head, other), whatever the family calls it.
  A condition's value may itself be a gradient.

>>> from search.weights.layout import TensorRole
>>> resolve_setting([0.0, 1.0], name="model.layers.1.mlp.up_proj.weight", role=TensorRole(1, "mlp"), t=0.5)
0.5
>>> resolve_setting([{"kind": "mlp", "value": 2.0}, {"value": 1.0}], name="x", role=TensorRole(1, "mlp"), t=0.5)
2.0
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Union

from pydantic import BaseModel, ConfigDict

from search.weights.layout import ModuleKind, TensorRole

Scalar = Union[bool, int, float, str]
ScalarOrGradient = Union[Scalar, list[Scalar]]


class Condition(BaseModel):
    """One conditional value: applies where ``filter`` is in the tensor's name and/or ``kind`` is its module kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    value: ScalarOrGradient
    filter: str | None = None
    kind: ModuleKind | None = None

    def matches(self, name: str, role: TensorRole) -> bool:
        if self.kind is not None and role.kind != self.kind:
            return False
        if self.filter is None or self.filter == "*":
            return True
        return self.filter in name


Setting = Union[Condition, list[Condition], ScalarOrGradient]


def resolve_setting(setting: Any, *, name: str, role: TensorRole, t: float) -> Scalar | None:
    """The value a setting takes for one tensor, or None when no condition matches it.

    Mirrors ``mergekit.config.evaluate_setting`` (numeric gradients interpolate, other gradients pick the
    nearest point below), with ``kind`` conditions added.
    """
    if isinstance(setting, Mapping):
        setting = Condition.model_validate(setting)
    if isinstance(setting, Condition):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return setting
    if not isinstance(setting, list):
        raise TypeError(f"unexpected setting {setting!r}")
    if not setting:
        return None
    if all(isinstance(e, (bool, int, float, str)) for e in setting):
        return _interpolate(setting, t)
    for cond in setting:
        cond = Condition.model_validate(cond) if isinstance(cond, Mapping) else cond
        if cond.matches(name, role):
            return resolve_setting(cond.value, name=name, role=role, t=t)
    return None


def _interpolate(points: list[Scalar], t: float) -> Scalar:
    if not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in points):
        return points[int(t * (len(points) - 1))]
    scaled = t * (len(points) - 1)
    i0 = int(scaled)
    i1 = min(len(points) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * points[i0] + frac * points[i1]  # type: ignore[operator]


def leaf_values(setting: Any) -> Iterator[Scalar]:
    """Every literal value a setting can produce (for range checks before any work)."""
    if isinstance(setting, Mapping):
        setting = Condition.model_validate(setting)
    if isinstance(setting, Condition):
        yield from leaf_values(setting.value)
    elif isinstance(setting, list):
        for item in setting:
            yield from leaf_values(item)
    else:
        yield setting
