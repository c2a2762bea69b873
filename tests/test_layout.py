"""Layer index and module kind come from the model's own modules, for every common decoder family."""

from __future__ import annotations

import pytest
from tiny import tiny_config

from search.weights.layout import ModelLayout, TensorRole

CASES = {
    "llama": {
        "model.embed_tokens.weight": TensorRole(None, "embedding"),
        "model.layers.0.self_attn.q_proj.weight": TensorRole(0, "attention"),
        "model.layers.3.mlp.down_proj.weight": TensorRole(3, "mlp"),
        "model.layers.2.input_layernorm.weight": TensorRole(2, "norm"),
        "model.norm.weight": TensorRole(None, "norm"),
        "lm_head.weight": TensorRole(None, "lm_head"),
    },
    "mistral": {"model.layers.1.self_attn.o_proj.weight": TensorRole(1, "attention")},
    "qwen2": {"model.layers.1.self_attn.k_proj.bias": TensorRole(1, "attention"),
              "model.layers.3.mlp.gate_proj.weight": TensorRole(3, "mlp")},
    "gemma": {"model.layers.0.post_attention_layernorm.weight": TensorRole(0, "norm")},
    "gpt2": {
        "transformer.wte.weight": TensorRole(None, "embedding"),
        "transformer.wpe.weight": TensorRole(None, "embedding"),
        "transformer.h.2.attn.c_attn.weight": TensorRole(2, "attention"),
        "transformer.h.1.mlp.c_fc.bias": TensorRole(1, "mlp"),
        "transformer.h.0.ln_1.weight": TensorRole(0, "norm"),
        "transformer.ln_f.bias": TensorRole(None, "norm"),
    },
    "gpt_neox": {
        "gpt_neox.embed_in.weight": TensorRole(None, "embedding"),
        "gpt_neox.layers.2.attention.query_key_value.weight": TensorRole(2, "attention"),
        "gpt_neox.layers.3.mlp.dense_h_to_4h.weight": TensorRole(3, "mlp"),
        "embed_out.weight": TensorRole(None, "lm_head"),
    },
    "phi": {
        "model.layers.1.self_attn.dense.weight": TensorRole(1, "attention"),
        "model.layers.1.mlp.fc2.weight": TensorRole(1, "mlp"),
        "model.final_layernorm.weight": TensorRole(None, "norm"),
        "lm_head.bias": TensorRole(None, "lm_head"),
    },
}


@pytest.mark.parametrize("arch", sorted(CASES))
def test_roles_from_config(arch: str) -> None:
    layout = ModelLayout.from_config(tiny_config(arch, layers=4))
    assert layout.num_layers == 4
    for name, role in CASES[arch].items():
        if name not in layout.roles and arch == "gpt_neox" and name == "embed_out.weight":
            name = "lm_head.weight"  # transformers renamed it in some versions
        assert layout.role(name) == role, name
    layered = [r.layer for r in layout.roles.values() if r.layer is not None]
    assert sorted(set(layered)) == [0, 1, 2, 3]
    assert not [n for n, r in layout.roles.items() if r.kind == "other"], "every tensor gets a known kind"


def test_gradient_position_matches_mergekit() -> None:
    layout = ModelLayout.from_config(tiny_config("llama", layers=5))
    assert layout.gradient_position("model.layers.0.mlp.up_proj.weight") == 0.0
    assert layout.gradient_position("model.layers.2.mlp.up_proj.weight") == 0.5
    assert layout.gradient_position("model.layers.4.mlp.up_proj.weight") == 1.0
    # outside the stack: mergekit plans pre- and post-weights at t=0
    assert layout.gradient_position("lm_head.weight") == 0.0
    assert layout.gradient_position("model.embed_tokens.weight") == 0.0
