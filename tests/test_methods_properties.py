"""Properties every merge method keeps, on small random tensors (hypothesis), and the registry's contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.errors import UserError
from search.methods import METHODS, MergeMethod, TensorParams, get_method

ORDER = [
    "linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "breadcrumbs",
    "breadcrumbs_ties", "della", "della_linear", "model_stock",
    "nuslerp", "multislerp", "karcher", "sce", "ram", "ramplus_tl", "nearswap", "arcee_fusion", "passthrough",
    "tsv", "iso_c", "iso_cts", "magmax", "checkpoint_average", "checkpoint_ema", "lawa",
    "fisher", "regmean",
]
# identical models give the base only up to rounding (a norm and a direction recombined, or a convex combination
# of equal numbers) or, for passthrough, the model times its scale
NOT_EXACTLY_THE_BASE = {"karcher", "nearswap", "passthrough", "fisher", "regmean"}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("single_thread")


@st.composite
def cases(draw, names: list[str] = ORDER, dtypes: list[torch.dtype] = DTYPES):
    """A method, a base, deltas (maybe with the base listed as a zero row) and valid parameters."""
    name = draw(st.sampled_from(names))
    method = METHODS[name]
    dtype = draw(st.sampled_from(dtypes))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    if method.max_models is not None:
        n_models = method.max_models
    else:
        n_models = draw(st.integers(max(method.min_models, 1), 4))
    base_at = draw(st.one_of(st.none(), st.integers(0, n_models))) if method.needs_base else None
    k = n_models + (base_at is not None)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    deltas = (0.3 * torch.randn((k, *shape), generator=g)).to(dtype)
    is_base = torch.zeros(k, dtype=torch.bool)
    if base_at is not None:
        deltas[base_at] = 0
        is_base[base_at] = True
    return method, base, deltas, draw(params_for(method, k, is_base, shape)), seed


@st.composite
def params_for(draw, method: MergeMethod, k: int, is_base: torch.Tensor, shape: tuple[int, ...] = (1,)):
    """Valid values: numbers from each parameter's search range, booleans either way."""
    per_model, globals_ = {}, {}
    for spec in method.params:
        if spec.kind == "bool":
            value = draw(st.booleans())
        elif spec.kind == "int" and spec.search_low is not None:  # lawa's window: at most the number of models
            value = st.integers(int(spec.search_low), min(int(spec.search_high), k))
        elif spec.search_low is None:
            value = spec.default
        else:
            low = max(spec.search_low, 0.1) if spec.name == "weight" else spec.search_low
            value = st.floats(low, spec.search_high, allow_nan=False)
        if spec.per_model:
            values = [draw(value) if isinstance(value, st.SearchStrategy) else value for _ in range(k)]
            per_model[spec.name] = torch.tensor(values, dtype=torch.float64)
        else:
            globals_[spec.name] = draw(value) if isinstance(value, st.SearchStrategy) else value
    return TensorParams(per_model=per_model, globals=globals_, is_base=is_base,
                        statistics=draw(statistics_for(method, k, shape)))


@st.composite
def statistics_for(draw, method: MergeMethod, k: int, shape: tuple[int, ...]):
    """Data-aware methods' per-parent statistics: Fishers (>= 0) per entry; a Gram (positive definite) per
    parent for a 2-D tensor, the weight of a linear layer (other tensors have none: the plain mean)."""
    if method.statistics is None:
        return {}
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    if method.statistics == "fisher":
        fisher = torch.rand((k, *shape), generator=g)
        return {"fisher": fisher, "fisher_norm": torch.linalg.vector_norm(fisher.reshape(k, -1), dim=1)}
    if len(shape) != 2:
        return {}
    x = torch.randn(k, 3 * shape[1] + 2, shape[1], generator=g, dtype=torch.float64)
    return {"gram": (x.transpose(1, 2) @ x / x.shape[1]).float()}


@pytest.mark.parametrize("name", ORDER)
@SETTINGS
@given(data=st.data())
def test_result_has_the_base_shape_dtype_and_is_finite(name: str, data: st.DataObject) -> None:
    method, base, deltas, params, seed = data.draw(cases(names=[name]))
    merged = method.merge(base, deltas, params, seed=seed)
    assert merged.shape == base.shape and merged.dtype == base.dtype and merged.device == base.device
    assert bool(torch.isfinite(merged).all())


@pytest.mark.parametrize("name", ORDER)
@SETTINGS
@given(data=st.data())
def test_merging_identical_models_returns_the_base(name: str, data: st.DataObject) -> None:
    method, base, deltas, params, seed = data.draw(cases(names=[name]))
    if method.name == "linear":  # without normalize, linear returns (sum of weights) * base
        params = TensorParams(params.per_model, {**params.globals, "normalize": True}, params.is_base)
    merged = method.merge(base, torch.zeros_like(deltas), params, seed=seed)
    if method.name == "slerp":  # (1 - t) * base + t * base, in float32, then cast back
        assert torch.allclose(merged.float(), base.float(), rtol=2e-7, atol=0)
    elif method.name == "passthrough":
        scale = float(params.per_model["scale"][0])
        assert torch.allclose(merged.float(), (base.float() * scale).to(base.dtype).float(), rtol=1e-2, atol=1e-6)
    elif method.name in NOT_EXACTLY_THE_BASE:
        assert torch.allclose(merged.float(), base.float(), rtol=4 * torch.finfo(base.dtype).eps, atol=1e-7)
    else:
        assert torch.equal(merged, base)


@pytest.mark.parametrize("name", ORDER)
@SETTINGS
@given(data=st.data())
def test_out_gives_the_same_result_as_no_out(name: str, data: st.DataObject) -> None:
    method, base, deltas, params, seed = data.draw(cases(names=[name]))
    expected = method.merge(base, deltas, params, seed=seed)
    out = torch.full_like(base, float("nan"))
    assert method.merge(base, deltas, params, seed=seed, out=out) is out
    assert torch.equal(out, expected)
    if base.dim() == 2:  # a strided out: the result is copied in
        strided = torch.full(base.shape[::-1], float("nan"), dtype=base.dtype).T
        method.merge(base, deltas, params, seed=seed, out=strided)
        assert torch.equal(strided, expected)


@pytest.mark.parametrize("name", [n for n in ORDER if METHODS[n].stochastic])
@SETTINGS
@given(data=st.data())
def test_a_fixed_seed_is_deterministic(name: str, data: st.DataObject) -> None:
    method, base, deltas, params, seed = data.draw(cases(names=[name]))
    first = method.merge(base, deltas, params, seed=seed)
    assert torch.equal(first, method.merge(base, deltas, params, seed=seed))


def test_different_seeds_draw_different_masks() -> None:
    base, deltas = torch.zeros(200), torch.randn(2, 200)
    params = TensorParams(per_model={"weight": torch.ones(2), "density": torch.full((2,), 0.5)})
    for name in ("dare_linear", "dare_ties", "della", "della_linear"):
        a = get_method(name).merge(base, deltas, params, seed=1)
        assert not torch.equal(a, get_method(name).merge(base, deltas, params, seed=2)), name
        assert not torch.equal(a, get_method(name).merge(base, deltas, params, seed=None)), name


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    weight=st.floats(0.05, 3.0),
    dtype=st.sampled_from(DTYPES),
)
def test_linear_of_one_model_returns_it(shape: list[int], weight: float, dtype: torch.dtype) -> None:
    base, model = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    params = TensorParams(per_model={"weight": torch.tensor([weight], dtype=torch.float64)})
    merged = get_method("linear").merge(base, (model - base).unsqueeze(0), params)
    # model - base, rounded to dtype, then added back to base: two roundings.
    tol = 2 * torch.finfo(dtype).eps * (base.float().abs() + model.float().abs())
    assert bool(((merged.float() - model.float()).abs() <= tol).all())


@SETTINGS
@given(
    w1=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    w2=st.lists(st.floats(-2, 2), min_size=3, max_size=3),
    lam=st.floats(0.1, 2.0),
)
def test_task_arithmetic_is_linear_in_the_weights(w1: list[float], w2: list[float], lam: float) -> None:
    g = torch.Generator().manual_seed(0)
    base, deltas = torch.randn(4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    method = get_method("task_arithmetic")

    def update(weights: list[float]) -> torch.Tensor:
        per_model = {"weight": torch.tensor(weights, dtype=torch.float64)}
        params = TensorParams(per_model=per_model, globals={"lambda": lam})
        return method.merge(base, deltas, params) - base

    both = update([a + b for a, b in zip(w1, w2)])
    assert torch.allclose(both, update(w1) + update(w2), atol=1e-5)
    assert torch.allclose(update([2 * a for a in w1]), 2 * update(w1), atol=1e-5)


# -------------------------------------------------------------------------------------------- registry


def test_registry_lists_every_method_in_reading_order() -> None:
    assert list(METHODS) == ORDER
    for name, method in METHODS.items():
        assert get_method(name) is method and method.name == name


def test_unknown_method_names_the_known_ones_and_a_near_miss() -> None:
    with pytest.raises(UserError) as error:
        get_method("tiez")
    message = str(error.value)
    assert "did you mean 'ties'" in message and "merge_method" in message and "magmax" in message
    with pytest.raises(UserError, match="use one of: linear, task_arithmetic"):
        get_method("zzzzzz")


def test_every_parameter_has_a_valid_range_and_a_search_range_inside_it() -> None:
    for method in METHODS.values():
        for spec in method.params:
            if spec.kind == "bool":
                assert spec.check(True) is None and spec.check(1) is not None
                continue
            assert spec.low is not None and spec.high is not None, (method.name, spec.name)
            if spec.search_low is not None:
                assert spec.low <= spec.search_low <= spec.search_high <= spec.high, (method.name, spec.name)
            if spec.default is not None:
                assert spec.check(spec.default) is None, (method.name, spec.name)
            assert spec.check(spec.high + 0.7) is not None and spec.check(spec.low - 0.7) is not None
            assert spec.check(float("nan")) is not None and spec.check("0.5") is not None


def test_density_above_one_is_refused() -> None:
    assert "must be <= 1.0" in get_method("ties").param("density").check(1.7)


def test_model_counts() -> None:
    assert get_method("slerp").check_model_count([True, False]) is None
    assert "exactly 1" in get_method("slerp").check_model_count([True, False, False])
    assert "at least 2" in get_method("model_stock").check_model_count([True, False])
    assert get_method("linear").check_model_count([True]) is None  # linear counts the base like any model
    assert get_method("ties").check_model_count([True]) is not None
    flags = {name: (m.needs_base, m.stochastic) for name, m in METHODS.items()}
    assert flags["linear"] == (False, False) and flags["dare_ties"] == (True, True)
    assert [n for n, (_, s) in flags.items() if s] == ["dare_linear", "dare_ties", "della", "della_linear"]
