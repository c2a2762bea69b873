"""The hand-set merges a mergekit user would try first; every study scores them before it samples.

Uniform task arithmetic at a few lambdas, TIES and DARE-TIES at common settings, the uniform soup, and each
fine-tune alone. Reports compare the search with the best of them, on held-out data.

>>> [b.name for b in hand_set_baselines(("code", "chat"), seed=0)][:3]
['task_arithmetic_0.3', 'task_arithmetic_0.5', 'task_arithmetic_0.7']
"""

from __future__ import annotations

from dataclasses import dataclass

from search.merging.spec import MergeSpec

TA_LAMBDAS = (0.3, 0.5, 0.7, 1.0)


@dataclass(frozen=True)
class Baseline:
    name: str
    spec: MergeSpec
    uniform: dict[str, float]  # the value every group of each parameter takes (to place it in the space)


def hand_set_baselines(model_names: tuple[str, ...], *, seed: int) -> list[Baseline]:
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
    return out
