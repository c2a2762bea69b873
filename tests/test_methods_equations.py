"""Merge methods against their equations on small tensors: by hand, or by a direct numpy computation.

TSV-M, ISO-C, ISO-CTS and MagMax (which mergekit lacks) follow their papers (and the authors' code); TIES sign
election and disjoint mean, slerp, Model Stock's t and the sparsifiers are checked on hand-worked cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search.methods import TensorParams, get_method
from search.methods.iso import iso_cts_sizes
from search.methods.sparsify import magnitude_mask, outlier_mask, top_mask

pytestmark = pytest.mark.usefixtures("single_thread")


def merge(
    name: str,
    base: torch.Tensor | list,
    deltas: torch.Tensor | list,
    per_model: dict[str, list[float]] | None = None,
    is_base: list[bool] | None = None,
    seed: int | None = None,
    **globals_: float | bool,
) -> torch.Tensor:
    base = torch.as_tensor(base, dtype=torch.float64 if isinstance(base, np.ndarray) else torch.float32)
    deltas = torch.as_tensor(deltas, dtype=base.dtype)
    params = TensorParams(
        per_model={k: torch.tensor(v, dtype=torch.float64) for k, v in (per_model or {}).items()},
        globals=globals_,
        is_base=None if is_base is None else torch.tensor(is_base),
    )
    return get_method(name).merge(base, deltas, params, seed=seed)


def close(got: torch.Tensor, expected, tol: float = 1e-5) -> bool:
    expected = torch.as_tensor(np.asarray(expected), dtype=torch.float64)
    return bool((got.double() - expected).abs().max() <= tol)


# ---------------------------------------------------------------------------------------------- MagMax


def test_magmax_by_hand() -> None:
    deltas = [[1.0, -3.0, 0.5], [-2.0, 2.0, -0.5]]
    assert close(merge("magmax", [0.0, 0.0, 0.0], deltas), [-2.0, -3.0, 0.5])  # |0.5| tie: the first model
    # Weights scale the entries before the magnitude contest: |2 * 1| ties |-2| (first wins), |2 * -3| wins.
    got = merge("magmax", [1.0, 1.0, 1.0], deltas, {"weight": [2.0, 1.0]}, **{"lambda": 0.5})
    assert close(got, [1.0 + 0.5 * 2.0, 1.0 + 0.5 * -6.0, 1.0 + 0.5 * 1.0])


def test_magmax_equals_numpy_and_ignores_the_base_row() -> None:
    rng = np.random.default_rng(0)
    base, deltas = rng.normal(size=(5, 4)), rng.normal(size=(3, 5, 4))
    pick = np.abs(deltas).argmax(axis=0)
    expected = base + 0.7 * np.take_along_axis(deltas, pick[None], axis=0)[0]
    with_base = np.concatenate([np.zeros((1, 5, 4)), deltas])
    got = merge("magmax", base, with_base, is_base=[True, False, False, False], **{"lambda": 0.7})
    assert close(got, expected, 1e-12)


# ----------------------------------------------------------------------------------------------- TSV-M


def _polar(x: np.ndarray) -> np.ndarray:
    p, _, qh = np.linalg.svd(x, full_matrices=False)
    return p @ qh


def _tsv_reference(deltas: np.ndarray) -> np.ndarray:
    """The authors' compute_and_sum_svd_mem_reduction: zero-padded sum_u/sum_s/sum_v, then polar factors."""
    t = len(deltas)
    m, n = deltas[0].shape
    r = min(m, n)
    keep = int(r * (1 / t))
    sum_u, sum_s, sum_v = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for i, d in enumerate(deltas):
        u, s, vh = np.linalg.svd(d, full_matrices=False)
        sum_u[:, i * keep:(i + 1) * keep] = u[:, :keep]
        sum_s[i * keep:(i + 1) * keep] = s[:keep]
        sum_v[i * keep:(i + 1) * keep] = vh[:keep]
    return _polar(sum_u) @ np.diag(sum_s) @ _polar(sum_v)


def test_tsv_by_hand() -> None:
    # Tasks on orthogonal directions do not interfere: TSV-M keeps each whole, the sum.
    deltas = [[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]]
    assert close(merge("tsv", [[1.0, 1.0], [1.0, 1.0]], deltas), [[3.0, 1.0], [1.0, 4.0]])
    # One task keeps its full rank: TSV-M is task arithmetic.
    one = [[[1.0, 2.0], [3.0, -4.0]]]
    assert close(merge("tsv", [[0.0, 0.0], [0.0, 0.0]], one, **{"lambda": 0.5}), [[0.5, 1.0], [1.5, -2.0]])


@pytest.mark.parametrize(("shape", "tasks"), [((6, 4), 2), ((5, 9), 3), ((8, 8), 4)])
def test_tsv_equals_the_reference_code(shape: tuple[int, int], tasks: int) -> None:
    rng = np.random.default_rng(1)
    base, deltas = rng.normal(size=shape), rng.normal(size=(tasks, *shape))
    expected = base + 0.8 * _tsv_reference(deltas)
    assert close(merge("tsv", base, deltas, **{"lambda": 0.8}), expected, 1e-9)


def test_tsv_and_iso_average_non_matrix_tensors() -> None:
    deltas = [[1.0, 2.0, 3.0], [3.0, 0.0, -1.0]]
    for name in ("tsv", "iso_c", "iso_cts"):
        got = merge(name, [1.0, 1.0, 1.0], deltas, {"weight": [1.0, 0.5]}, **{"lambda": 2.0})
        assert close(got, [1.0 + (1.0 + 1.5), 1.0 + 2.0, 1.0 + (3.0 - 0.5)]), name


def test_tsv_weights_scale_each_task_before_the_svd() -> None:
    rng = np.random.default_rng(2)
    base, deltas = rng.normal(size=(6, 5)), rng.normal(size=(2, 6, 5))
    expected = base + _tsv_reference(deltas * np.array([0.5, -2.0])[:, None, None])
    assert close(merge("tsv", base, deltas, {"weight": [0.5, -2.0]}), expected, 1e-9)


# ------------------------------------------------------------------------------------------------- ISO


def test_iso_c_by_hand() -> None:
    # diag(1, 3) summed from two tasks: singular values 3, 1 -> their mean 2 on the same singular vectors.
    deltas = [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]]
    assert close(merge("iso_c", [[0.0, 0.0], [0.0, 0.0]], deltas), [[2.0, 0.0], [0.0, 2.0]])
    # A rotation R times diag(3, 1): the spectrum flattens to 2, the result is 2 R.
    c, s = math.cos(0.3), math.sin(0.3)
    rotated = [[[3 * c, -s], [3 * s, c]]]
    assert close(merge("iso_c", [[1.0, 0.0], [0.0, 1.0]], rotated), [[1 + 2 * c, -2 * s], [2 * s, 1 + 2 * c]])


def _iso_c_reference(deltas: np.ndarray) -> np.ndarray:
    u, s, vh = np.linalg.svd(deltas.sum(0), full_matrices=False)
    return u @ np.diag(np.full_like(s, s.mean())) @ vh


def _iso_cts_reference(deltas: np.ndarray, fraction: float) -> np.ndarray:
    """The authors' iso_cts: common subspace of the sum, task residuals, stacked, polar, isotropic."""
    t = len(deltas)
    r = min(deltas[0].shape)
    common = int(r * fraction)
    common = r - round((r - common) / t) * t
    per_task = int((r - common) / t)
    u, s, vh = np.linalg.svd(deltas.sum(0), full_matrices=False)
    uc, sc, vc = u[:, :common], s[:common], vh[:common]
    us, ss, vs = [], [], []
    for d in deltas:
        ut, st, vt = np.linalg.svd(d - uc @ uc.T @ d, full_matrices=False)
        us.append(ut[:, :per_task])
        ss.append(st[:per_task])
        vs.append(vt[:per_task])
    u_all = np.concatenate([*us, uc], axis=1)
    s_all = np.concatenate([*ss, sc])
    v_all = np.concatenate([*vs, vc], axis=0)
    return _polar(u_all) @ np.diag(np.full_like(s_all, s_all.mean())) @ _polar(v_all)


@pytest.mark.parametrize("shape", [(6, 4), (5, 9)])
def test_iso_c_equals_the_reference_code(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    base, deltas = rng.normal(size=shape), rng.normal(size=(3, *shape))
    expected = base + 1.5 * _iso_c_reference(deltas)
    assert close(merge("iso_c", base, deltas, **{"lambda": 1.5}), expected, 1e-9)


def test_iso_cts_by_hand() -> None:
    # No common space (fraction 0): one direction per task; already orthogonal; singular values 3, 1 -> 2.
    deltas = [[[3.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]]
    got = merge("iso_cts", [[0.0, 0.0], [0.0, 0.0]], deltas, common_space_fraction=0.0)
    assert close(got, [[2.0, 0.0], [0.0, 2.0]])


@pytest.mark.parametrize(
    ("shape", "tasks", "fraction"),
    [((8, 6), 2, 0.5), ((8, 6), 2, 0.8), ((10, 12), 3, 0.5), ((7, 7), 2, 0.2)],
)
def test_iso_cts_equals_the_reference_code(shape: tuple[int, int], tasks: int, fraction: float) -> None:
    rng = np.random.default_rng(4)
    base, deltas = rng.normal(size=shape), rng.normal(size=(tasks, *shape))
    expected = base + _iso_cts_reference(deltas, fraction)
    assert close(merge("iso_cts", base, deltas, common_space_fraction=fraction), expected, 1e-9)


def test_iso_cts_sizes() -> None:
    # The reference's rounding: common grows so the task-specific part splits evenly.
    assert iso_cts_sizes(6, 2, 0.5) == (2, 2)
    assert iso_cts_sizes(10, 3, 0.5) == (4, 2)
    assert iso_cts_sizes(5, 2, 0.8) == (5, 0)   # round(0.5) == 0: ISO-CTS is then ISO-C
    assert iso_cts_sizes(2, 3, 0.0) == (2, 0)   # r < T: the reference would make common negative
    for rank in range(1, 20):
        for tasks in range(1, 6):
            common, per_task = iso_cts_sizes(rank, tasks, 0.8)
            assert common >= 0 and per_task >= 0 and common + tasks * per_task == rank


def test_iso_cts_without_task_space_is_iso_c() -> None:
    rng = np.random.default_rng(5)
    base, deltas = rng.normal(size=(5, 7)), rng.normal(size=(2, 5, 7))
    got = merge("iso_cts", base, deltas, common_space_fraction=1.0)
    assert close(got, base + _iso_c_reference(deltas), 1e-9)


# ------------------------------------------------------------------------------------------------ TIES


TIES_DELTAS = [[1.0, -2.0, 0.5, 3.0], [2.0, 1.0, -0.5, 3.0], [-4.0, 1.0, 0.0, 0.0]]


def test_ties_sign_election_and_disjoint_mean_by_hand() -> None:
    ones = {"weight": [1.0, 1.0, 1.0]}
    zeros = [0.0, 0.0, 0.0, 0.0]
    # col 0: sum -1 -> '-': only -4.   col 1: sum 0 -> '+' (a tie elects +): 1, 1 -> mean 1.
    # col 2: sum 0 -> '+': 0.5 alone.   col 3: 3, 3 and a zero (a zero never agrees) -> mean 3.
    assert close(merge("ties", zeros, TIES_DELTAS, ones), [-4.0, 1.0, 0.5, 3.0])
    assert close(merge("ties", zeros, TIES_DELTAS, ones, normalize=False), [-4.0, 2.0, 0.5, 6.0])
    # Weights 1, 2, 1: elect on the weighted deltas, divide by the agreeing weights.
    # col 0: 1, 4, -4 -> '+': (1 + 4) / 3.  col 1: -2, 2, 1 -> '+': 3 / 3.  col 2: .5, -1, 0 -> '-': -1 / 2.
    weighted = merge("ties", zeros, TIES_DELTAS, {"weight": [1.0, 2.0, 1.0]})
    assert close(weighted, [5.0 / 3.0, 1.0, -0.5, 3.0])


def test_ties_trims_each_task_vector_first() -> None:
    # density 0.5 of 4 keeps 2 per model: [0,-2,0,3], [2,0,0,3], [-4,1,0,0].
    per_model = {"weight": [1.0] * 3, "density": [0.5] * 3}
    got = merge("ties", [0.0] * 4, TIES_DELTAS, per_model, **{"lambda": 2.0})
    assert close(got, [2 * -4.0, 2 * -2.0, 0.0, 2 * 3.0])


def test_dare_ties_with_seed_is_reproducible_and_drops() -> None:
    rng = np.random.default_rng(6)
    base, deltas = rng.normal(size=50), rng.normal(size=(2, 50))
    per_model = {"weight": [1.0, 1.0], "density": [0.3, 0.3]}
    a = merge("dare_ties", base, deltas, per_model, seed=7)
    assert torch.equal(a, merge("dare_ties", base, deltas, per_model, seed=7))
    assert not torch.equal(a, merge("dare_ties", base, deltas, per_model, seed=8))
    assert (a == torch.as_tensor(base)).sum() >= 10  # entries where both models were dropped


# ----------------------------------------------------------------------------------------- sparsifiers


def test_breadcrumbs_keeps_the_middle_band() -> None:
    magnitudes = torch.tensor([5.0, -1.0, 9.0, 3.0, -10.0, 7.0, 2.0, -8.0, 4.0, 6.0])
    # n 10, density 0.5 -> 5 kept; gamma 0.2 -> the 2 largest (10, 9) go, then the 3 smallest (1, 2, 3).
    keep = outlier_mask(magnitudes, 0.5, 0.2)
    assert sorted(magnitudes[keep].abs().tolist()) == [4.0, 5.0, 6.0, 7.0, 8.0]
    # density + gamma > 1: the outlier cut shrinks to keep the density (only 10 - 9 = 1 outlier goes).
    keep = outlier_mask(magnitudes, 0.9, 0.5)
    assert sorted(magnitudes[keep].abs().tolist()) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert outlier_mask(magnitudes, 1.0, 0.5) is None  # density 1: everything, gamma ignored (as mergekit)


def test_breadcrumbs_merge_by_hand() -> None:
    deltas = [[5.0, -1.0, 9.0, 3.0, -10.0, 7.0, 2.0, -8.0, 4.0, 6.0]]
    got = merge("breadcrumbs", [0.0] * 10, deltas, {"weight": [1.0], "density": [0.5], "gamma": [0.2]})
    assert close(got, [5.0, 0.0, 0.0, 0.0, 0.0, 7.0, 0.0, -8.0, 4.0, 6.0])


def test_magnitude_mask_counts_exactly_even_with_ties() -> None:
    assert magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5).tolist() == [False, True, True, False]
    tied = torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5], dtype=torch.bfloat16)
    assert int(magnitude_mask(tied, 0.4).sum()) == 2
    assert int(magnitude_mask(tied, 0.01).sum()) == 1  # max(1, int(density * n))
    for k in range(6):
        small, large = top_mask(tied.abs().float(), k), top_mask(tied.abs().float(), min(k + 1, 5))
        assert int(small.sum()) == k and bool((small <= large).all())


def test_della_keep_probability_follows_the_rank() -> None:
    # 4000 draws of one row of 5: smallest kept with p = density - eps, largest with density + eps.
    deltas = torch.tensor([[0.1, -0.5, 0.3, 0.9, -0.7]]).repeat(4000, 1)
    from search.methods.sparsify import della_mask

    mask = della_mask(deltas, 0.5, 0.2, torch.Generator().manual_seed(0)).double().mean(0)
    expected = torch.tensor([0.3, 0.5, 0.4, 0.7, 0.6], dtype=torch.float64)
    assert bool(((mask - expected).abs() <= 5 * (0.25 / 4000) ** 0.5).all())  # 5 standard errors


# ----------------------------------------------------------------------------------------------- slerp


def test_slerp_by_hand() -> None:
    base, to = [1.0, 0.0], [[-1.0, 2.0]]  # model [0, 2]: orthogonal, theta = pi / 2
    assert torch.equal(merge("slerp", base, to, t=0.0), torch.tensor(base))
    assert close(merge("slerp", base, to, t=1.0), [0.0, 2.0])
    h = math.sqrt(0.5)
    assert close(merge("slerp", base, to, t=0.5), [h, 2 * h])  # sin(pi/4) / sin(pi/2) on each
    third = merge("slerp", base, to, t=1 / 3)
    assert close(third, [math.sin(math.pi / 3), 2 * math.sin(math.pi / 6)])


def test_slerp_falls_back_to_lerp_when_colinear() -> None:
    # Parallel (cos 1) and antiparallel (cos -1): plain linear interpolation.
    assert close(merge("slerp", [1.0, 2.0], [[1.0, 2.0]], t=0.25), [1.25, 2.5])
    assert close(merge("slerp", [1.0, 2.0], [[-3.0, -6.0]], t=0.25), [0.25, 0.5])  # model [-2, -4]
    # cos just above the threshold 0.9995 (angle 0.03 rad): lerp, not slerp.
    a = 0.03
    got = merge("slerp", [1.0, 0.0], [[math.cos(a) - 1.0, math.sin(a)]], t=0.5)
    assert close(got, [(1 + math.cos(a)) / 2, math.sin(a) / 2], 1e-6)  # slerp would be 5.6e-5 away
    # A zero base (norm at most 1e-8) counts as norm 1, so cos = 0: theta = pi / 2, no division by zero.
    h = math.sqrt(0.5)
    assert close(merge("slerp", [0.0, 0.0], [[1.0, 1.0]], t=0.5), [h, h])


# ----------------------------------------------------------------------------------------- Model Stock


def test_model_stock_t_by_hand() -> None:
    # d1 = [1, 0], d2 = [1, 1]: cos = 1/sqrt(2); t = 2 cos / (1 + cos); merged = base + t * mean.
    cos = 1 / math.sqrt(2)
    t = 2 * cos / (1 + cos)
    got = merge("model_stock", [1.0, -1.0], [[1.0, 0.0], [1.0, 1.0]])
    assert close(got, [1.0 + t * 1.0, -1.0 + t * 0.5])
    # Three models, pairwise cos 0.5 (equilateral): t = 3 * 0.5 / (1 + 2 * 0.5) = 0.75.
    d = [[1.0, 0.0, 0.0], [0.5, math.sqrt(3) / 2, 0.0], [0.5, math.sqrt(3) / 6, math.sqrt(2 / 3)]]
    mean = np.mean(d, axis=0)
    assert close(merge("model_stock", [0.0, 0.0, 0.0], d), 0.75 * mean)
    # Opposite task vectors: 1 + cos = 0, a singular t, so the base stays.
    assert close(merge("model_stock", [3.0, 3.0], [[1.0, 0.0], [-1.0, 0.0]]), [3.0, 3.0])


def test_model_stock_filter_wise_by_hand() -> None:
    # Row 0: orthogonal (t = 0, stays base). Row 1: parallel (cos 1, t = 1, base + mean).
    deltas = [[[1.0, 0.0], [1.0, 2.0]], [[0.0, 1.0], [2.0, 4.0]]]
    base = [[0.0, 0.0], [1.0, 1.0]]
    assert close(merge("model_stock", base, deltas, filter_wise=True), [[0.0, 0.0], [2.5, 4.0]])
    # Whole-tensor: one cos for all of it.
    flat = np.array(deltas).reshape(2, -1)
    cos = flat[0] @ flat[1] / (np.linalg.norm(flat[0]) * np.linalg.norm(flat[1]))
    t = 2 * cos / (1 + cos)
    assert close(merge("model_stock", base, deltas), np.array(base) + t * np.mean(deltas, axis=0))
