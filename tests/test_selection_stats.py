"""The statistics of the report's headline, against cases whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from search.selection.stats import Interval, comparison_sentence, in_points, mean_interval, paired_interval


def test_mean_interval_matches_the_normal_approximation_of_a_proportion():
    values = [1.0] * 300 + [0.0] * 200  # p = 0.6, n = 500: se = sqrt(.6*.4/500) = 0.0219
    iv = mean_interval([(1.0, values)], seed=3)
    se = math.sqrt(0.6 * 0.4 / 500)
    assert iv.estimate == pytest.approx(0.6)
    assert iv.low == pytest.approx(0.6 - 1.96 * se, abs=0.006)
    assert iv.high == pytest.approx(0.6 + 1.96 * se, abs=0.006)


def test_weighted_sum_of_objectives_with_their_own_documents():
    a, b = [1.0] * 10 + [0.0] * 30, [1.0] * 90 + [0.0] * 10  # 0.25 on 40 documents, 0.9 on 100
    iv = mean_interval([(0.5, a), (0.5, b)], seed=0)
    assert iv.estimate == pytest.approx(0.575)
    # variance of the weighted sum: 0.25 * (p1 q1 / n1 + p2 q2 / n2)
    se = 0.5 * math.sqrt(0.25 * 0.75 / 40 + 0.9 * 0.1 / 100)
    assert iv.high - iv.low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_paired_interval_is_narrower_than_unpaired_when_models_agree_on_most_documents():
    rng = np.random.default_rng(0)
    hard = rng.random(400) < 0.5
    a = (~hard).astype(float)
    b = a.copy()
    b[:12] = 1.0 - b[:12]  # b differs from a on 12 documents
    diff = paired_interval([(1.0, a, b)], seed=0)
    assert diff.estimate == pytest.approx(float(a.mean() - b.mean()))
    ia, ib = mean_interval([(1.0, a)], seed=1), mean_interval([(1.0, b)], seed=2)
    assert diff.high - diff.low < 0.5 * ((ia.high - ia.low) + (ib.high - ib.low)) / 2


def test_identical_models_differ_by_exactly_zero_and_a_clear_win_excludes_zero():
    a = [1.0, 0.0, 1.0, 1.0] * 25
    same = paired_interval([(1.0, a, a)], seed=0)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero()
    better = [1.0] * 100
    win = paired_interval([(1.0, better, a)], seed=0)
    assert win.estimate == pytest.approx(0.25) and win.low > 0.1


def test_seeded_and_refuses_unpaired_values():
    a, b = [1.0, 0.0] * 30, [0.0, 1.0, 1.0] * 20
    assert paired_interval([(1.0, a, b)], seed=7) == paired_interval([(1.0, a, b)], seed=7)
    with pytest.raises(ValueError):
        paired_interval([(1.0, a, b[:-1])])
    with pytest.raises(ValueError):
        mean_interval([])


def test_sentences():
    assert comparison_sentence(Interval(-0.02, -0.03, -0.01), maximize=True, points=True).startswith(
        "worse than the best hand-set merge by 2.0 points")
    # lower is better (perplexity): a negative difference is better, in metric units
    assert comparison_sentence(Interval(-0.5, -0.8, -0.2), maximize=False, points=False).startswith(
        "better than the best hand-set merge by 0.5 (95% CI")
    assert in_points([[[0.0, 1.0]], [[0.5]]]) and not in_points([[[3.2]]])
