"""Intervals for the figures a report states: bootstrap over documents, paired where two models are compared.

Pure functions of per-document values (numpy only). A figure is a weighted sum over objectives of each
objective's mean over its documents (the space's weighted view); each objective has its own documents, so each
is resampled on its own, and a paired comparison resamples the SAME documents for both models (the difference
of two models on one document is what varies, not the documents' difficulty).

>>> a = [1.0] * 80 + [0.0] * 20
>>> iv = mean_interval([(1.0, a)], seed=0)
>>> round(iv.estimate, 2), iv.low < 0.8 < iv.high
(0.8, True)
>>> paired_interval([(1.0, a, a)], seed=0).high
0.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Group = tuple[float, Sequence[float]]                      # (weight, per-document values)
PairedGroup = tuple[float, Sequence[float], Sequence[float]]  # (weight, model a's values, model b's values)

ITERATIONS = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile-bootstrap interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _resampled_means(values: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Mean of each of ``iterations`` resamples (with replacement) of the rows of ``values`` (n, k) -> (it, k)."""
    n = values.shape[0]
    idx = rng.integers(0, n, size=(iterations, n))
    return values[idx].mean(axis=1)


def _interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def _check(groups: Sequence[Sequence[Sequence[float]]]) -> None:
    if not groups:
        raise ValueError("no objective to compute an interval of")
    for g in groups:
        lengths = {len(v) for v in g}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"per-document values must be non-empty and paired (lengths {sorted(lengths)})")


def mean_interval(groups: Sequence[Group], *, iterations: int = ITERATIONS, seed: int = 0,
                  level: float = LEVEL) -> Interval:
    """The weighted sum of per-objective means, with a bootstrap interval (documents resampled per objective).

    >>> iv = mean_interval([(0.5, [1.0, 0.0] * 50), (0.5, [1.0] * 100)], seed=1)
    >>> iv.estimate, iv.low < 0.75 < iv.high
    (0.75, True)
    """
    _check([[v] for _, v in groups])
    rng = np.random.default_rng(seed)
    estimate = 0.0
    total = np.zeros(iterations)
    for weight, values in groups:
        arr = np.asarray(values, dtype=float)[:, None]
        estimate += weight * float(arr.mean())
        total += weight * _resampled_means(arr, iterations, rng)[:, 0]
    return _interval(estimate, total, level)


def paired_interval(groups: Sequence[PairedGroup], *, iterations: int = ITERATIONS, seed: int = 0,
                    level: float = LEVEL) -> Interval:
    """The difference a − b of two models' weighted sums, with a paired bootstrap interval: each resample draws
    one set of documents per objective and scores both models on it.

    >>> a, b = [1.0] * 60 + [0.0] * 40, [1.0] * 50 + [0.0] * 50   # a right on 10 documents b gets wrong
    >>> iv = paired_interval([(1.0, a, b)], seed=0)
    >>> round(iv.estimate, 2), iv.low > 0
    (0.1, True)
    """
    _check([[a, b] for _, a, b in groups])
    rng = np.random.default_rng(seed)
    estimate = 0.0
    total = np.zeros(iterations)
    for weight, a, b in groups:
        diff = (np.asarray(a, dtype=float) - np.asarray(b, dtype=float))[:, None]
        estimate += weight * float(diff.mean())
        total += weight * _resampled_means(diff, iterations, rng)[:, 0]
    return _interval(estimate, total, level)


def in_points(groups: Sequence[Sequence[Sequence[float]]]) -> bool:
    """Whether every per-document value lies in [0, 1] (accuracies, exact match): differences then read as
    percentage points."""
    return all(0.0 <= x <= 1.0 for g in groups for values in g for x in values)


def comparison_sentence(diff: Interval, *, maximize: bool, points: bool, other: str = "the best hand-set merge"
                        ) -> str:
    """The plain sentence a report leads with.

    >>> comparison_sentence(Interval(0.031, 0.012, 0.05), maximize=True, points=True)
    'better than the best hand-set merge by 3.1 points (95% CI 1.2 to 5.0)'
    >>> comparison_sentence(Interval(0.004, -0.01, 0.02), maximize=True, points=True)
    'not distinguishable from the best hand-set merge (difference +0.4 points, 95% CI -1.0 to 2.0)'
    """
    scale, unit = (100.0, " points") if points else (1.0, "")
    fmt = "{:.1f}" if points else "{:.4g}"
    est, low, high = (scale * v for v in (diff.estimate, diff.low, diff.high))
    ci = f"{diff.level:.0%} CI {fmt.format(low)} to {fmt.format(high)}"
    if not diff.excludes_zero():
        sign = "+" if est >= 0 else ""
        return f"not distinguishable from {other} (difference {sign}{fmt.format(est)}{unit}, {ci})"
    better = (diff.low > 0) == maximize
    return f"{'better' if better else 'worse'} than {other} by {fmt.format(abs(est))}{unit} ({ci})"
