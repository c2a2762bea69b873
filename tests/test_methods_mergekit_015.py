"""mergekit 0.1.5's newer methods against mergekit's own code, tensor by tensor, in memory.

nuslerp, multislerp, karcher, sce, ram, ramplus_tl, nearswap, arcee_fusion and passthrough: the same names,
parameters, defaults and input rules, and the same tensors to 1e-5 in float32 (with a base and, where mergekit
allows it, without one; with the base listed among the models too). End to end through ``search merge`` with
gradients and filters: tests/test_merge_vs_mergekit_015.py.
"""

from __future__ import annotations

import pytest
import torch
from mergekit.merge_methods import get as mergekit_method
from mergekit.merge_methods import merge_tensors

from search.methods import METHODS, TensorParams, get_method
from search.methods.registry import MERGEKIT_METHODS

TOL = 1e-5
NEW = ["nuslerp", "multislerp", "karcher", "sce", "ram", "ramplus_tl", "nearswap", "arcee_fusion", "passthrough"]

pytestmark = pytest.mark.usefixtures("single_thread")


def _models(shape: tuple[int, ...], k: int, seed: int, spread: float = 0.5) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + spread * torch.randn(shape, generator=g) for _ in range(k)]


def _ours(name: str, base: torch.Tensor | None, models: list[torch.Tensor], per_model: dict[str, list[float]],
          globals_: dict, *, base_row_at: int | None = None) -> torch.Tensor:
    """Our method as ``search merge`` calls it: with a base, or (base None) the first model as reference."""
    has_base = base is not None
    reference = base if has_base else models[0]
    rows = [m - reference for m in models]
    flags = [False] * len(rows)
    values = {key: list(v) for key, v in per_model.items()}
    if base_row_at is not None:
        rows.insert(base_row_at, torch.zeros_like(reference))
        flags.insert(base_row_at, True)
        for v in values.values():
            v.insert(base_row_at, 0.123)  # must be ignored by methods that leave a listed base out
    params = TensorParams(
        per_model={key: torch.tensor(v, dtype=torch.float64) for key, v in values.items()},
        globals=globals_, is_base=torch.tensor(flags), has_base=has_base,
    )
    return get_method(name).merge(reference, torch.stack(rows), params)


def _theirs(name: str, base: torch.Tensor | None, models: list[torch.Tensor], parameters: dict) -> torch.Tensor:
    if base is None:
        return merge_tensors(models, name, parameters=parameters)
    return merge_tensors([base, *models], name, parameters=parameters, base_index=0)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_new_methods_are_registered_and_marked_as_mergekit_methods() -> None:
    assert set(NEW) <= set(METHODS)
    assert set(NEW) <= MERGEKIT_METHODS
    assert MERGEKIT_METHODS <= set(METHODS)


SHAPES = [(6, 10), (37,), (3, 4, 5)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("per_model", "globals_"), [
    ({"weight": [0.3, 0.7]}, {}),
    ({"weight": [1.0, 1.0]}, {"nuslerp_flatten": False}),
    ({"weight": [0.2, 0.6]}, {"nuslerp_flatten": False, "nuslerp_row_wise": True}),
    ({"weight": [1.0, -1.0]}, {}),  # weights summing to ~0: t = 0.5
])
@pytest.mark.parametrize("with_base", [True, False])
def test_nuslerp_matches_mergekit(shape, per_model, globals_, with_base: bool) -> None:
    base, models = _models(shape, 2, seed=11 + sum(shape))
    base = base if with_base else None
    expected = _theirs("nuslerp", base, models, {**per_model, **globals_})
    assert _close(_ours("nuslerp", base, models, per_model, globals_), expected) <= TOL
    if with_base:
        assert _close(_ours("nuslerp", base, models, per_model, globals_, base_row_at=1), expected) <= TOL


def test_nuslerp_colinear_falls_back_to_linear_like_mergekit() -> None:
    base, (a,) = _models((4, 5), 1, seed=12)
    b = base + 3.0 * (a - base)  # colinear task vectors
    expected = _theirs("nuslerp", base, [a, b], {"weight": [0.25, 0.75]})
    got = _ours("nuslerp", base, [a, b], {"weight": [0.25, 0.75]}, {})
    assert _close(got, expected) <= TOL
    assert _close(got, base + 0.25 * (a - base) + 0.75 * (b - base)) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("per_model", "globals_"), [
    ({"weight": [0.2, 0.5, 0.3]}, {}),
    ({"weight": [1.0, 2.0, 0.5]}, {"normalize_weights": False}),
    ({"weight": [0.5, 0.5, 1.0]}, {"eps": 1e-6}),
])
@pytest.mark.parametrize("with_base", [True, False])
def test_multislerp_matches_mergekit(shape, per_model, globals_, with_base: bool) -> None:
    base, models = _models(shape, 3, seed=13 + sum(shape))
    base = base if with_base else None
    expected = _theirs("multislerp", base, models, {**per_model, **globals_})
    assert _close(_ours("multislerp", base, models, per_model, globals_), expected) <= TOL
    if with_base:
        assert _close(_ours("multislerp", base, models, per_model, globals_, base_row_at=0), expected) <= TOL


def test_multislerp_one_model_and_antipodal_pair_like_mergekit() -> None:
    base, (a,) = _models((3, 4), 1, seed=14)
    assert _close(_ours("multislerp", base, [a], {"weight": [0.4]}, {}), a) <= TOL
    b = base - (a - base)  # antipodal task vectors, equal weights: the weighted mean direction is zero
    expected = _theirs("multislerp", base, [a, b], {"weight": [0.5, 0.5]})
    assert _close(_ours("multislerp", base, [a, b], {"weight": [0.5, 0.5]}, {}), expected) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("globals_", [{}, {"max_iter": 3, "tol": 1e-3}])
def test_karcher_matches_mergekit(shape, k: int, globals_: dict) -> None:
    _, models = _models(shape, k, seed=15 + k)
    expected = merge_tensors(models, "karcher", parameters=globals_)
    assert _close(_ours("karcher", None, models, {}, globals_), expected) <= TOL


def test_karcher_counts_a_listed_base_as_one_more_model_like_mergekit() -> None:
    base, models = _models((5, 6), 2, seed=16)
    expected = _theirs("karcher", base, models, {})  # mergekit: the base is one of the inputs
    assert _close(_ours("karcher", base, models, {}, {}, base_row_at=0), expected) <= TOL
    without = merge_tensors(models, "karcher")
    assert _close(expected, without) > 1e-3, "the base must make a difference for the test to mean anything"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("globals_", [{}, {"select_topk": 0.5}, {"select_topk": 0.1, "int8_mask": True},
                                      {"select_topk": 0.0}])
def test_sce_matches_mergekit(shape, globals_: dict) -> None:
    base, models = _models(shape, 3, seed=17 + sum(shape))
    expected = _theirs("sce", base, models, globals_)
    assert _close(_ours("sce", base, models, {}, globals_), expected) <= TOL
    assert _close(_ours("sce", base, models, {}, globals_, base_row_at=2), expected) <= TOL


def _sparse_models(shape, k: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Fine-tunes that each change a random part of the entries (so RAM's unique/shared split matters)."""
    base, models = _models(shape, k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return base, [torch.where(torch.rand(shape, generator=g) < 0.5, m, base) for m in models]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("name", "globals_"), [
    ("ram", {}), ("ram", {"epsilon": 0.3}),
    ("ramplus_tl", {}), ("ramplus_tl", {"r": 0.5, "alpha": 0.8}), ("ramplus_tl", {"r": 1.0, "epsilon": 0.2}),
])
def test_ram_matches_mergekit(shape, name: str, globals_: dict) -> None:
    base, models = _sparse_models(shape, 3, seed=19 + sum(shape))
    expected = _theirs(name, base, models, globals_)
    assert _close(_ours(name, base, models, {}, globals_), expected) <= TOL
    assert _close(_ours(name, base, models, {}, globals_, base_row_at=0), expected) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("t", [0.0, 0.05, 0.3, 5.0])
def test_nearswap_matches_mergekit(shape, t: float) -> None:
    base, models = _models(shape, 1, seed=21 + sum(shape))
    expected = _theirs("nearswap", base, models, {"t": t})
    assert _close(_ours("nearswap", base, models, {}, {"t": t}), expected) <= TOL
    assert _close(_ours("nearswap", base, models, {}, {"t": t}, base_row_at=0), expected) <= TOL


@pytest.mark.parametrize("shape", SHAPES + [(64, 300)])
def test_arcee_fusion_matches_mergekit(shape) -> None:
    base, models = _models(shape, 1, seed=23 + sum(shape), spread=0.3)
    expected = _theirs("arcee_fusion", base, models, {})
    got = _ours("arcee_fusion", base, models, {}, {})
    assert _close(got, expected) <= TOL
    kept = (got != base).float().mean().item()
    assert 0.0 < kept < 1.0, "some but not all of the model's changes are kept"


@pytest.mark.parametrize("scale", [None, 0.5, -1.0])
def test_passthrough_matches_mergekit(scale: float | None) -> None:
    _, (model,) = _models((4, 7), 1, seed=25)
    params = {} if scale is None else {"scale": [scale]}
    expected = merge_tensors([model], "passthrough", parameters=params)
    assert _close(_ours("passthrough", None, [model], params, {}), expected) <= TOL


# Input rules: mergekit's contract for each method, and ours.
@pytest.mark.parametrize(("name", "base", "count", "ok"), [
    ("nuslerp", True, 2, True), ("nuslerp", False, 2, True), ("nuslerp", True, 3, False),
    ("nuslerp", False, 1, False),
    ("nearswap", True, 1, True), ("nearswap", True, 2, False),
    ("arcee_fusion", True, 1, True), ("arcee_fusion", True, 2, False),
    ("multislerp", False, 1, True), ("multislerp", True, 4, True),
    ("passthrough", False, 1, True), ("passthrough", False, 2, False),
    ("karcher", False, 3, True), ("sce", True, 3, True), ("ram", True, 1, True),
])
def test_model_counts_follow_mergekit(name: str, base: bool, count: int, ok: bool) -> None:
    ids = [f"m{i}" for i in range(count)]
    base_id = "base" if base else None
    try:
        mergekit_method(name).validate_inputs(ids + ([base_id] if base else []), base_id)
        theirs = True
    except ValueError:
        theirs = False
    assert theirs is ok
    ours = get_method(name).check_model_count([False] * count)
    assert (ours is None) is ok, ours


def test_parameter_sets_defaults_and_scopes_match_mergekit() -> None:
    """Same names, same per-model vs shared scope, same defaults (required where mergekit requires)."""
    from mergekit.merge_methods.base import MISSING, ParameterScope

    for name in NEW:
        theirs = {p.name: p for p in mergekit_method(name).spec.parameters}
        ours = {p.name: p for p in get_method(name).params}
        assert set(ours) == set(theirs), name
        for key, p in theirs.items():
            assert ours[key].per_model == (p.scope != ParameterScope.SHARED), (name, key)
            expected = None if p.default is MISSING else p.default
            if (name, key) == ("passthrough", "scale"):
                expected = 1.0  # mergekit: None, which leaves the tensor unchanged; 1.0 does the same here
            assert ours[key].default == expected, (name, key)
        contract = mergekit_method(name).spec.contract
        method = get_method(name)
        assert method.needs_base == (contract.base.value == "required"), name
        assert method.optional_base == (contract.base.value == "optional"), name
