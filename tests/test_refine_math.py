"""Gradient refinement's parts on tiny real models: the differentiable merge equals the normal merge at the
trial's coefficients, its gradient matches a finite difference, steps lower the loss, refusals before loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.config.space import Space
from search.errors import UserError
from search.refine.documents import Example
from search.refine.linear import LinearMerge, check_bounds, linear_kind
from search.refine.loss import batch_loss, encode, encode_pair
from search.study.space_to_optuna import build_plan, spec_from_params
from search.weights.parents import Parents
from tiny import make_family

METHODS = {
    "task_arithmetic": {"weight": [0.0, 1.2], "lambda": [0.5, 1.5]},
    "ties": {"weight": [0.0, 1.5], "density": [0.3, 1.0]},
    "dare_ties": {"weight": [0.0, 1.5], "density": 0.6},
    "dare_linear": {"weight": [0.0, 1.5], "density": 0.7},
    "breadcrumbs_ties": {"weight": [0.0, 1.0], "density": 0.8, "normalize": True},
    "della": {"weight": [0.0, 1.0], "density": 0.5},
    "linear": {"weight": [0.1, 1.0]},
}


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("refine"), 2, layers=4, hidden=32, scale=0.05)


def _space(family: tuple[Path, list[Path]], methods: dict, granularity: dict) -> Space:
    base, fts = family
    return Space.model_validate({
        "base_model": str(base), "models": {"a": str(fts[0]), "b": str(fts[1])}, "methods": methods,
        "granularity": granularity, "seed": 5,
        "objectives": [{"name": "x", "evaluator": {"type": "lm_eval", "task": "t"}, "metric": "acc"}],
    })


def _params(plan, method: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    params = {p.name: float(p.low + (p.high - p.low) * torch.rand((), generator=g)) for p in plan.searched[method]}
    return {**params, "method": method} if len(plan.methods) > 1 else params


@pytest.fixture(scope="module")
def parents64(family: tuple[Path, list[Path]]) -> Parents:
    base, fts = family
    return Parents.load(base, fts, dtype=torch.float64, device="cpu")


@pytest.mark.parametrize("granularity", [{"layer_groups": 2}, {"layer_groups": 2, "module_kinds": True},
                                         {"per_layer": True}])
@pytest.mark.parametrize("method", list(METHODS))
def test_held_merge_equals_the_normal_merge_at_the_trial(parents64: Parents, family, method: str,
                                                         granularity: dict) -> None:
    space = _space(family, METHODS, granularity)
    plan = build_plan(space, 4)
    params = _params(plan, method, seed=len(method))
    merge = LinearMerge.build(parents64, plan, params)
    ours = merge.weights(merge.theta0)
    normal = parents64.merged_state(spec_from_params(params, plan))
    assert set(ours) == set(parents64.names)
    for name, value in ours.items():
        torch.testing.assert_close(value, normal[name], rtol=1e-10, atol=1e-12, msg=name)
    # every searched weight/lambda is an entry of theta, and moving one entry moves the tensors of its group only
    assert [p.name for p in merge.refined] == [p.name for p in plan.searched[method]
                                               if p.param in ("weight", "lambda")]


def _examples() -> list[Example]:
    return [Example("x", "ab+c", " 12"), Example("x", "xyz?", " q"), Example("y", "hello", " world"),
            Example("y", "k", " mm n")]


@pytest.mark.parametrize(("method", "loss"), [("task_arithmetic", "loglik"), ("ties", "entropy"),
                                             ("linear", "loglik")])
def test_gradient_matches_a_finite_difference(parents64: Parents, family, method: str, loss: str) -> None:
    from transformers import AutoTokenizer

    from search.refine.run import loss_and_grad

    space = _space(family, METHODS, {"layer_groups": 2, "module_kinds": True})
    plan = build_plan(space, 4)
    params = _params(plan, method, seed=3)
    merge = LinearMerge.build(parents64, plan, params)
    model = parents64.build_model()
    tokenizer = AutoTokenizer.from_pretrained(str(family[0]))
    batch = encode(tokenizer, _examples(), {"x": 1.0, "y": 3.0})
    theta = merge.theta0.clone().requires_grad_(True)
    value = loss_and_grad(model, merge, theta, batch.split(3), loss)  # two pieces: accumulation is exact
    grad = theta.grad.clone()
    assert grad.abs().max() > 0

    def at(t: torch.Tensor) -> float:
        with torch.no_grad():
            return float(batch_loss(model, {**merge.fixed, **merge.weights(t)}, batch, loss))

    assert value == pytest.approx(at(merge.theta0), rel=1e-10)
    # central differences; Llama's RMSNorm computes in float32 even in a float64 model, so the loss carries
    # ~1e-7 relative noise: a step of 1e-3 keeps it (and the O(eps^2) truncation) near 1e-4 of the gradient
    eps = 1e-3
    for j in sorted({0, 1, len(theta) // 3, len(theta) // 2, len(theta) - 2, len(theta) - 1}):  # kinds, models
        step = torch.zeros_like(theta.detach())
        step[j] = eps
        numeric = (at(merge.theta0 + step) - at(merge.theta0 - step)) / (2 * eps)
        assert grad[j].item() == pytest.approx(numeric, rel=1e-3, abs=1e-4), merge.refined[j].name
    # the model's own weights were never written
    state = model.state_dict()
    for name in parents64.names:
        torch.testing.assert_close(state[name], parents64.base[name])


def test_steps_lower_the_loss_and_stay_inside_the_bounds(parents64: Parents, family) -> None:
    from transformers import AutoTokenizer

    from search.config.refine import Refine
    from search.refine.run import optimise

    space = _space(family, METHODS, {"layer_groups": 2})
    plan = build_plan(space, 4)
    params = _params(plan, "task_arithmetic", seed=1)
    merge = LinearMerge.build(parents64, plan, params, bounds={"weight": (0.2, 0.9)})
    tokenizer = AutoTokenizer.from_pretrained(str(family[0]))
    train = encode(tokenizer, _examples()[:3], {"x": 1.0, "y": 1.0})
    check = encode(tokenizer, _examples()[3:], {"x": 1.0, "y": 1.0})
    settings = Refine(steps=6, lr=0.1, check_every=2, patience=100)
    fit = optimise(parents64.build_model(), merge, train, check, settings, progress=False)
    losses = [p["search_loss"] for p in fit.curve if "search_loss" in p]
    assert len(losses) == 6 and losses[-1] < losses[0]
    weights = [v for p, v in zip(merge.refined, fit.theta.tolist()) if p.param == "weight"]
    assert all(0.2 <= v <= 0.9 for v in weights)
    assert fit.passes["train"] == 6 * 3 * 3 and fit.passes["check"] == 4 * 1  # checks at steps 0, 2, 4, 6
    assert fit.passes["train_forward_tokens"] == 6 * int(train.input_ids.numel())


def test_early_stopping_keeps_the_best_checked_coefficients(parents64: Parents, family) -> None:
    from transformers import AutoTokenizer

    from search.config.refine import Refine
    from search.refine.run import evaluate_loss, optimise

    space = _space(family, METHODS, {"layer_groups": 1})
    plan = build_plan(space, 4)
    params = _params(plan, "task_arithmetic", seed=2)
    merge = LinearMerge.build(parents64, plan, params)
    tokenizer = AutoTokenizer.from_pretrained(str(family[0]))
    # a huge step size: the select loss gets worse after the first checks, patience runs out
    train = encode(tokenizer, _examples()[:2], {"x": 1.0, "y": 1.0})
    check = encode(tokenizer, _examples()[2:], {"x": 1.0, "y": 1.0})
    model = parents64.build_model()
    fit = optimise(model, merge, train, check, Refine(steps=60, lr=2.0, check_every=1, patience=2), progress=False)
    checked = [p["select_loss"] for p in fit.curve if "select_loss" in p]
    assert fit.stopped_early and len(checked) < 61
    kept = evaluate_loss(model, merge, fit.theta, check.split(16), "loglik")
    assert kept == pytest.approx(min(checked), rel=1e-9)


def test_refusals_before_loading(family) -> None:
    space = _space(family, {**METHODS, "nuslerp": {"weight": [0.0, 1.0]}, "ties": {"weight": 0.5, "density": 0.5}},
                   {"layer_groups": 2})
    plan = build_plan(space, 4)
    assert linear_kind("slerp") is None and linear_kind("nuslerp") is None and linear_kind("karcher") is None and linear_kind("model_stock") is None
    assert linear_kind("ties") is not None and linear_kind("linear") is not None
    with pytest.raises(UserError, match="not linear in its task vectors"):
        LinearMerge.build(None, plan, {**_params(plan, "nuslerp", 0), "method": "nuslerp"})
    with pytest.raises(UserError, match="searches no weight or lambda"):
        LinearMerge.build(None, plan, {"method": "ties"})
    refined = tuple(p for p in plan.searched["task_arithmetic"] if p.param == "weight")
    with pytest.raises(UserError, match=r"outside the space's range \[0.0, 1.2\]"):
        check_bounds(refined, {"weight": (0.0, 2.0)})
    with pytest.raises(UserError, match="not a refined coefficient"):
        check_bounds(refined, {"density": (0.0, 1.0)})


def test_answers_are_tokenized_as_lm_eval_does(family) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(family[0]))
    prompt, answer = encode_pair(tokenizer, "ab ", "cd")  # the trailing space moves to the answer
    assert "".join(tokenizer.convert_ids_to_tokens(prompt)) == "ab"
    assert "".join(tokenizer.convert_ids_to_tokens(answer)) == " cd"
    batch = encode(tokenizer, [Example("x", "ab", " c"), Example("y", "abcd", " e")], {"x": 1.0, "y": 3.0})
    assert batch.answer.sum(dim=1).tolist() == [2, 2]
    assert batch.last.tolist() == [1, 3]
    assert batch.weight.tolist() == pytest.approx([0.25, 0.75])
