"""The hand-set merges a mergekit user would try first; every study scores them before it samples.

Uniform task arithmetic at a few lambdas, TIES and DARE-TIES at common settings, the uniform soup, and each
fine-tune alone. Reports compare the search with the best of them, on held-out data.

>>> [b.name for b in hand_set_baselines(("code", "chat"), seed=0)][:3]
['task_arithmetic_0.3', 'task_arithmetic_0.5', 'task_arithmetic_0.7']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from search.merging.spec import MergeSpec

# Baselines outside the searched space (another method, a value out of range) are kept in the study's user
# attributes under this prefix, not as trials: samplers that learn from the parameters all trials share
# (CMA-ES, GP, QMC, NSGA, multivariate TPE) would otherwise fall back to random search.
STUDY_ATTR_PREFIX = "baseline:"

TA_LAMBDAS = (0.3, 0.5, 0.7, 1.0)


@dataclass(frozen=True)
class Baseline:
    name: str
    spec: MergeSpec
    uniform: dict[str, float]  # the value every group of each parameter takes (to place it in the space)


def hand_set_baselines(model_names: tuple[str, ...], *, seed: int, has_base: bool = True) -> list[Baseline]:
    """The baselines; without a base (checkpoints of one run) only those that need none: the soup, each alone."""
    k = len(model_names)

    def each(**params: float) -> tuple[dict[str, float], ...]:
        return tuple(dict(params) for _ in range(k))

    out = [Baseline(f"task_arithmetic_{lam}", MergeSpec(method="task_arithmetic", model_parameters=each(weight=lam)),
                    {"weight": lam}) for lam in TA_LAMBDAS]
    out.append(Baseline("ties", MergeSpec(method="ties", model_parameters=each(weight=1.0, density=0.5)),
                        {"weight": 1.0, "density": 0.5}))
    out.append(Baseline("dare_ties", MergeSpec(method="dare_ties", model_parameters=each(weight=1.0, density=0.5),
                                               seed=seed), {"weight": 1.0, "density": 0.5}))
    out.append(Baseline("uniform_soup", MergeSpec(method="linear", model_parameters=each(weight=1.0)),
                        {"weight": 1.0}))
    for i, name in enumerate(model_names):
        weights = tuple({"weight": 1.0 if j == i else 0.0} for j in range(k))
        out.append(Baseline(f"only_{name}", MergeSpec(method="linear", model_parameters=weights), {}))
    return out if has_base else [b for b in out if not b.spec.merge_method.needs_base]


@dataclass(frozen=True)
class BaselineRecord:
    """A scored baseline, wherever the study keeps it (a trial when it lies in the space, else a study attribute)."""

    name: str
    state: str  # COMPLETE | FAIL
    spec: str  # MergeSpec JSON
    search: dict[str, float] = field(default_factory=dict)  # search-split score per objective
    values: list[float] | None = None
    intermediate: dict[int, float] = field(default_factory=dict)  # scalarised partial score per slice
    partials: list[list[float]] = field(default_factory=list)  # per slice, per objective
    trial: int | None = None
    fail_reason: str | None = None


def recorded_baselines(study: Any) -> list[BaselineRecord]:
    """Every baseline a study has scored, in the order they were recorded."""
    from optuna.trial import TrialState

    out: list[BaselineRecord] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        if "baseline" not in t.user_attrs:
            continue
        a = t.user_attrs
        out.append(BaselineRecord(
            name=a["baseline"], state=t.state.name, spec=a.get("spec", ""), values=t.values,
            search={k.removeprefix("search."): v for k, v in a.items() if k.startswith("search.")},
            intermediate=dict(t.intermediate_values),
            partials=[a[f"partial_{i}"] for i in range(a.get("slices_scored", 0)) if f"partial_{i}" in a],
            trial=t.number, fail_reason=a.get("fail_reason")))
    for key, record in study.user_attrs.items():
        if key.startswith(STUDY_ATTR_PREFIX):
            out.append(BaselineRecord(**{**record, "intermediate": {int(k): v for k, v in
                                                                     record.get("intermediate", {}).items()}}))
    return out
