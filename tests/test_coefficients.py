"""Settings resolve per tensor exactly as mergekit's evaluate_setting, plus module-kind conditions."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from search.merging.coefficients import resolve_setting
from search.weights.layout import TensorRole

ROLE = TensorRole(2, "mlp")


@settings(max_examples=200, deadline=None)
@given(points=st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=8), t=st.floats(0, 1))
def test_gradient_equals_mergekit(points: list[float], t: float) -> None:
    from mergekit.config import evaluate_setting

    ours = resolve_setting(points, name="model.layers.2.mlp.up_proj.weight", role=ROLE, t=t)
    theirs = evaluate_setting("model.layers.2.mlp.up_proj.weight", points, t, validate=float)
    assert abs(ours - theirs) <= 1e-12


def test_filters_equal_mergekit() -> None:
    from mergekit.config import ConditionalParameter, evaluate_setting

    setting = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"filter": "mlp", "value": 0.3}, {"value": 0.9}]
    theirs_setting = [ConditionalParameter(**c) for c in setting]
    for name in ("model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "lm_head.weight"):
        ours = resolve_setting(setting, name=name, role=ROLE, t=0.25)
        assert ours == evaluate_setting(name, theirs_setting, 0.25, validate=float)


def test_per_layer_list_lands_on_each_layer() -> None:
    per_layer = [0.1, 0.2, 0.3, 0.4]
    for layer, expected in enumerate(per_layer):
        got = resolve_setting(per_layer, name="x", role=TensorRole(layer, "mlp"), t=layer / 3)
        assert abs(got - expected) < 1e-12


def test_module_kind_conditions() -> None:
    setting = [{"kind": "attention", "value": 0.2}, {"kind": "mlp", "value": [0.0, 1.0]}, {"value": 0.7}]
    assert resolve_setting(setting, name="a", role=TensorRole(1, "attention"), t=0.5) == 0.2
    assert resolve_setting(setting, name="b", role=TensorRole(1, "mlp"), t=0.5) == 0.5
    assert resolve_setting(setting, name="c", role=TensorRole(None, "lm_head"), t=0.0) == 0.7


def test_unmatched_condition_falls_through() -> None:
    assert resolve_setting([{"filter": "nothing", "value": 1.0}], name="x", role=ROLE, t=0) is None
