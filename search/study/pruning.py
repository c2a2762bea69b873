"""Early stopping: which pruner judges a candidate's partial scores, single- or multi-objective.

Single objective (or the weighted view): the scalarised partial score is reported with ``trial.report`` at each
slice and an Optuna pruner decides — ``median``, ``successive_halving``, or :class:`BaselinePruner` (below the
best hand-set baseline at the same slice, by a margin). ``wilcoxon`` is Optuna's ``WilcoxonPruner``: each
document of a slice is reported as its own step (its value in the weighted view), and a candidate is stopped
when a paired signed-rank test on the documents both have scored says it is worse than the best trial
(``p_threshold``, default 0.1): a decision that knows how many documents it rests on. Multi-objective studies cannot ``report`` in Optuna, so
:func:`dominated_by_front` decides there: a candidate whose partial scores are dominated, by a margin on every
objective, by a trial of the current front at the same slice is stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial


class BaselinePruner(BasePruner):
    """Prune when the partial value is worse than the best baseline's at the same step by more than ``margin``."""

    def __init__(self, margin: float = 0.0) -> None:
        self.margin = margin

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        value = trial.intermediate_values[step]
        from search.study.baselines import recorded_baselines

        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best = None
        for b in recorded_baselines(study):
            if b.state == "COMPLETE" and step in b.intermediate:
                v = b.intermediate[step]
                best = v if best is None else (max(best, v) if maximize else min(best, v))
        if best is None:
            return False
        return value < best - self.margin if maximize else value > best + self.margin


def make_pruner(name: str, margin: float, args: dict[str, Any]) -> BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(**{"n_startup_trials": 5, **args})
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(**args)
    if name == "baseline":
        return BaselinePruner(margin)
    if name == "wilcoxon":
        import warnings

        with warnings.catch_warnings():  # experimental since Optuna 3.6
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.WilcoxonPruner(**{"p_threshold": 0.1, **args})
    return optuna.pruners.NopPruner()


def dominated_by_front(partial: Sequence[float], front: Sequence[Sequence[float]], maximize: Sequence[bool],
                       margin: float) -> bool:
    """True when some front point beats ``partial`` by more than ``margin`` on every objective.

    >>> dominated_by_front([0.2, 0.3], [[0.5, 0.6]], [True, True], margin=0.1)
    True
    >>> dominated_by_front([0.2, 0.7], [[0.5, 0.6]], [True, True], margin=0.0)
    False
    """
    for point in front:
        if all((q - p > margin) if mx else (p - q > margin) for p, q, mx in zip(partial, point, maximize)):
            return True
    return False

