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
from search.study.candidate import BASELINE_PREFIX, CandidateRecord, read_outside_baseline, read_record

# Baselines outside the searched space (another method, a value out of range) are kept in the study's user
# attributes under this prefix, not as trials: samplers that learn from the parameters all trials share
# (CMA-ES, GP, QMC, NSGA, multivariate TPE) would otherwise fall back to random search.
STUDY_ATTR_PREFIX = BASELINE_PREFIX

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
    record: CandidateRecord
    values: list[float] | None = None
    intermediate: dict[int, float] = field(default_factory=dict)  # scalarised partial score per slice
    trial: int | None = None

    @property
    def spec(self) -> MergeSpec | None:
        return self.record.spec

    @property
    def search(self) -> dict[str, float]:
        """Search-role score per objective."""
        return self.record.search

    @property
    def partials(self) -> list[list[float]]:
        return self.record.partials

    @property
    def fail_reason(self) -> str | None:
        return self.record.fail_reason


def recorded_baselines(study: Any) -> list[BaselineRecord]:
    """Every baseline a study has scored, in the order they were recorded (records of any version)."""
    from optuna.trial import TrialState

    out: list[BaselineRecord] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
        record = read_record(t.user_attrs)
        if record.baseline is None:
            continue
        out.append(BaselineRecord(name=record.baseline, state=t.state.name, record=record, values=t.values,
                                  intermediate=dict(t.intermediate_values), trial=t.number))
    for key, value in study.user_attrs.items():
        if key.startswith(BASELINE_PREFIX):
            b = read_outside_baseline(value)
            out.append(BaselineRecord(name=b.name, state=b.state, record=b.record, values=b.values,
                                      intermediate=b.intermediate))
    return out
