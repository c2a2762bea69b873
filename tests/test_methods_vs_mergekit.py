"""Our merge methods against mergekit's own implementations, in memory, tensor by tensor.

mergekit 0.1.5 merges in memory through ``mergekit.merge_methods.merge_tensors(tensors, name, parameters=...,
base_index=...)``; per-model parameters are lists over the non-base inputs (all inputs for ``linear``).
Deterministic methods must agree to 1e-5 in float32. For the random ones (dare, della) the zero-drop limit
(density 1) must agree exactly, and over many seeds the sample means must agree within a bound derived from
the sample variances (and, where E[result] has a closed form, both must hit it).
"""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import merge_tensors

from search.methods import METHODS, TensorParams, get_method

TOL = 1e-5
SHARED = [
    "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "breadcrumbs",
    "breadcrumbs_ties", "della", "della_linear", "model_stock",
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _models(shape: tuple[int, ...], k: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + 0.5 * torch.randn(shape, generator=g) for _ in range(k)]


def _ours(
    name: str,
    base: torch.Tensor,
    models: list[torch.Tensor],
    per_model: dict[str, list[float]],
    globals_: dict[str, float | bool],
    *,
    base_row_at: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Merge with our method; ``base_row_at`` also lists the base itself (a zero row flagged is_base)."""
    rows = [m - base for m in models]
    flags = [False] * len(rows)
    values = {key: list(v) for key, v in per_model.items()}
    if base_row_at is not None:
        rows.insert(base_row_at, torch.zeros_like(base))
        flags.insert(base_row_at, True)
        for v in values.values():
            v.insert(base_row_at, 123.0)  # must be ignored
    params = TensorParams(
        per_model={key: torch.tensor(v, dtype=torch.float64) for key, v in values.items()},
        globals=globals_,
        is_base=torch.tensor(flags),
    )
    return get_method(name).merge(base, torch.stack(rows), params, seed=seed)


def _theirs(name: str, base: torch.Tensor, models: list[torch.Tensor], parameters: dict) -> torch.Tensor:
    return merge_tensors([base, *models], name, parameters=parameters, base_index=0)


def test_shared_methods_are_registered() -> None:
    assert set(SHARED) <= set(METHODS)


@pytest.mark.parametrize("shape", [(6, 10), (37,), (3, 4, 5)])
@pytest.mark.parametrize(
    ("name", "per_model", "globals_"),
    [
        ("task_arithmetic", {"weight": [1.0, 0.5, -0.3]}, {}),
        ("task_arithmetic", {"weight": [0.7, 0.5, 0.2]}, {"normalize": True, "lambda": 0.6}),
        ("task_arithmetic", {"weight": [1.0, -1.0, 0.0]}, {"normalize": True}),  # divisor ~0 -> 1
        ("ties", {"weight": [1.0, 0.5, 0.8], "density": [0.5, 0.3, 0.9]}, {}),
        ("ties", {"weight": [1.0, -0.5, 0.8], "density": [0.5, 1.0, 0.2]},
         {"normalize": False, "lambda": 1.3}),
        ("ties", {"weight": [0.6, 0.5, 0.8], "density": [0.4, 0.7, 0.1]}, {"rescale": True}),
        ("breadcrumbs", {"weight": [1.0, 0.5, 0.8], "density": [0.8, 0.5, 0.9], "gamma": [0.05, 0.1, 0.0]},
         {}),
        ("breadcrumbs", {"weight": [1.0, 0.5, 0.8], "density": [0.95, 0.6, 1.0], "gamma": [0.1, 0.5, 0.3]},
         {"normalize": True, "rescale": True}),
        ("breadcrumbs_ties",
         {"weight": [1.0, 0.5, 0.8], "density": [0.8, 0.5, 0.9], "gamma": [0.05, 0.1, 0.2]}, {"lambda": 0.8}),
        ("dare_linear", {"weight": [1.0, 0.5, 0.8]}, {}),  # density 1: no drop
        ("dare_ties", {"weight": [1.0, 0.5, 0.8], "density": [1.0, 1.0, 1.0]}, {"normalize": True}),
        ("della", {"weight": [1.0, 0.5, 0.8], "density": [1.0, 1.0, 1.0]}, {}),
        ("della_linear", {"weight": [1.0, 0.5, 0.8], "density": [1.0, 1.0, 1.0]}, {"lambda": 0.5}),
    ],
)
def test_task_arithmetic_family_matches_mergekit(
    name: str, per_model: dict[str, list[float]], globals_: dict, shape: tuple[int, ...]
) -> None:
    base, models = _models(shape, 3, seed=sum(map(ord, name)) + sum(shape))
    expected = _theirs(name, base, models, {**per_model, **globals_})
    got = _ours(name, base, models, per_model, globals_)
    assert (got - expected).abs().max().item() <= TOL
    # Listing the base among the models (with nonsense values) changes nothing.
    got_with_base = _ours(name, base, models, per_model, globals_, base_row_at=1)
    assert (got_with_base - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("normalize", [True, False])
def test_linear_matches_mergekit(normalize: bool) -> None:
    _, models = _models((5, 7), 3, seed=1)
    weights = [0.2, 0.5, 1.1]
    expected = merge_tensors(models, "linear", parameters={"weight": weights, "normalize": normalize})
    # Our base is a reference parent (the first model), listed as a model like any other.
    reference = models[0]
    deltas = torch.stack([m - reference for m in models])
    params = TensorParams(
        per_model={"weight": torch.tensor(weights, dtype=torch.float64)},
        globals={"normalize": normalize},
        is_base=torch.tensor([True, False, False]),
    )
    got = get_method("linear").merge(reference, deltas, params)
    assert (got - expected).abs().max().item() <= TOL


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("colinear", [False, True])
def test_slerp_matches_mergekit(t: float, colinear: bool) -> None:
    base, (other,) = _models((8, 9), 1, seed=2)
    if colinear:
        other = 2.0 * base + 1e-4 * other
    expected = _theirs("slerp", base, [other], {"t": t})
    got = _ours("slerp", base, [other], {}, {"t": t})
    assert (got - expected).abs().max().item() <= TOL
    got_with_base = _ours("slerp", base, [other], {}, {"t": t}, base_row_at=0)
    assert torch.equal(got_with_base, got)


@pytest.mark.parametrize("shape", [(6, 10), (37,), (3, 4, 5)])
@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("k", [2, 4])
def test_model_stock_matches_mergekit(shape: tuple[int, ...], filter_wise: bool, k: int) -> None:
    base, models = _models(shape, k, seed=3)
    # Correlated fine-tunes, so that t is far from 0.
    shared = models[0] - base
    models = [m + 2.0 * shared for m in models]
    expected = _theirs("model_stock", base, models, {"filter_wise": filter_wise})
    got = _ours("model_stock", base, models, {}, {"filter_wise": filter_wise})
    assert (got - expected).abs().max().item() <= TOL
    got_with_base = _ours("model_stock", base, models, {}, {"filter_wise": filter_wise}, base_row_at=1)
    assert (got_with_base - expected).abs().max().item() <= TOL


def _sample_stats(draw, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance (per element) of ``n`` draws ``draw(i)``."""
    samples = torch.stack([draw(i).double() for i in range(n)])
    return samples.mean(0), samples.var(0)


def _close_in_mean(mean_a, var_a, mean_b, var_b, n: int) -> bool:
    """|mean_a - mean_b| within 6 standard errors of the difference of two independent sample means."""
    bound = 6.0 * torch.sqrt((var_a + var_b) / n) + 1e-6
    return bool(((mean_a - mean_b).abs() <= bound).all())


STOCHASTIC_CASES = [
    ("dare_linear", {"weight": [1.0, 0.5], "density": [0.5, 0.3]}, {}),
    ("dare_linear", {"weight": [1.0, 0.5], "density": [0.5, 0.7]}, {"rescale": False}),
    ("dare_ties", {"weight": [1.0, 0.5], "density": [0.6, 0.4]}, {"normalize": True}),
    ("della", {"weight": [1.0, 0.5], "density": [0.5, 0.4], "epsilon": [0.2, 0.1]}, {}),
    ("della_linear", {"weight": [1.0, 0.7], "density": [0.5, 0.4], "epsilon": [0.3, 0.1]},
     {"rescale": False}),
]


@pytest.mark.parametrize(("name", "per_model", "globals_"), STOCHASTIC_CASES)
def test_random_methods_match_mergekit_in_mean(name: str, per_model: dict, globals_: dict) -> None:
    n = 300  # mergekit's della takes ~5 ms a call
    base, models = _models((4, 6), 2, seed=4)
    ours = _sample_stats(lambda i: _ours(name, base, models, per_model, globals_, seed=i), n)

    def theirs(i: int) -> torch.Tensor:
        torch.manual_seed(10_000 + i)
        return _theirs(name, base, models, {**per_model, **globals_})

    reference = _sample_stats(theirs, n)
    assert _close_in_mean(*ours, *reference, n)


def _expected_keep_probability_della(delta: torch.Tensor, density: float, epsilon: float) -> torch.Tensor:
    """DELLA's keep probability, from ranks along dim 1 computed independently (numpy argsort)."""
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    ranks = rows.abs().numpy().argsort(axis=1).argsort(axis=1)
    n = rows.shape[1]
    return torch.from_numpy(density - epsilon + 2 * epsilon * ranks / (n - 1)).reshape(delta.shape)


def _closed_form_mean(
    base: torch.Tensor, deltas: list[torch.Tensor], weights: list[float], probabilities: list[torch.Tensor],
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """E and Var of ``base + lam * sum_i w_i m_i d_i`` with independent Bernoulli(p) masks ``m_i``."""
    terms = [(lam * w * d.double(), p.double()) for w, d, p in zip(weights, deltas, probabilities)]
    mean = base.double() + sum(c * p for c, p in terms)
    variance = sum(c**2 * p * (1 - p) for c, p in terms)
    return mean, variance


@pytest.mark.parametrize("shape", [(4, 6), (3, 5, 2), (30,)])
def test_dropping_without_rescale_has_the_closed_form_mean(shape: tuple[int, ...]) -> None:
    """E[merged] = base + lambda * sum_i w_i p_i d_i without rescale (p: density, or DELLA's ranks)."""
    n = 1500
    base, models = _models(shape, 2, seed=5)
    deltas = [m - base for m in models]
    globals_ = {"rescale": False, "lambda": 0.9}
    cases = [
        ("dare_linear", {"weight": [1.0, 0.5], "density": [0.5, 0.3]},
         [torch.full(shape, 0.5), torch.full(shape, 0.3)]),
        ("della_linear", {"weight": [1.0, 0.5], "density": [0.5, 0.4], "epsilon": [0.3, 0.1]},
         [_expected_keep_probability_della(deltas[0], 0.5, 0.3),
          _expected_keep_probability_della(deltas[1], 0.4, 0.1)]),
    ]
    for name, per_model, probabilities in cases:
        expected, variance = _closed_form_mean(base, deltas, per_model["weight"], probabilities, 0.9)
        ours, _ = _sample_stats(lambda i: _ours(name, base, models, per_model, globals_, seed=i), n)
        bound = 5.0 * torch.sqrt(variance / n) + 1e-5
        assert ((ours - expected).abs() <= bound).all(), name
        undropped = _theirs(name, base, models, {"weight": per_model["weight"], **globals_}).double()
        assert not ((ours - undropped).abs() <= bound).all(), "the bound is too loose to tell"


def test_mergekit_della_has_the_same_closed_form_mean() -> None:
    """The closed form above is mergekit's semantics too: ranks along dim 1 of a 3-D tensor."""
    n = 400
    shape = (3, 5, 2)
    base, models = _models(shape, 1, seed=8)
    delta = models[0] - base
    probability = _expected_keep_probability_della(delta, 0.5, 0.3)
    expected, variance = _closed_form_mean(base, [delta], [1.0], [probability], 1.0)

    def theirs(i: int) -> torch.Tensor:
        torch.manual_seed(30_000 + i)
        return _theirs("della_linear", base, models, {"weight": [1.0], "density": [0.5], "epsilon": [0.3],
                                                      "rescale": False})

    mergekit_mean, _ = _sample_stats(theirs, n)
    assert ((mergekit_mean - expected).abs() <= 5.0 * torch.sqrt(variance / n) + 1e-5).all()


def test_della_refuses_epsilon_outside_density_like_mergekit() -> None:
    base, models = _models((4, 6), 1, seed=6)
    per_model = {"weight": [1.0], "density": [0.3], "epsilon": [0.3]}
    with pytest.raises(ValueError):
        _theirs("della", base, models, per_model)
    from search.errors import UserError

    with pytest.raises(UserError, match="density - epsilon"):
        _ours("della", base, models, per_model, {}, seed=0)
    assert get_method("della").check_values({"density": [0.3], "epsilon": [0.3]}, {}) is not None
    assert get_method("della").check_values({"density": [0.5], "epsilon": [0.3]}, {}) is None


def test_parameter_sets_defaults_and_scopes_match_mergekit() -> None:
    """Same names, same per-model vs shared scope, same defaults (required where mergekit requires)."""
    from mergekit.merge_methods import get as mergekit_method
    from mergekit.merge_methods.base import MISSING, ParameterScope

    for name in SHARED:
        spec = mergekit_method(name).spec
        theirs = {p.name: p for p in spec.parameters}
        ours = {p.name: p for p in get_method(name).params}
        assert set(ours) == set(theirs), name
        for key, p in theirs.items():
            assert ours[key].per_model == (p.scope != ParameterScope.SHARED), (name, key)
            expected_default = None if p.default is MISSING else p.default
            assert ours[key].default == expected_default, (name, key)
            assert ours[key].kind == ("bool" if p.value_type is bool else "float"), (name, key)
