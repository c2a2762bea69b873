"""Generated Llama shapes for the scale bench, the GPU check and the memory-plan tests.

``write_sparse_family`` writes a base and fine-tunes as real HF folders whose ``model.safetensors`` is a valid
header followed by a hole (``truncate``): a 7B family of five costs a few kilobytes of disk, reads as zeros, and is
all the memory plan needs (it reads headers only). Good for timing too — merge speed does not depend on values.

>>> cfg = llama_config("7b")
>>> cfg["hidden_size"], cfg["num_hidden_layers"]
(4096, 32)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

SHAPES: dict[str, dict[str, int]] = {
    # Llama-2-7B
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "vocab_size": 32000},
    # about 1.5B parameters (Qwen2-1.5B-like widths, Llama layout)
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 151936},
    # about 0.4B: the same widths, fewer layers and a smaller vocabulary (a loaded 2-core machine)
    "0.4b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 8, "num_attention_heads": 12,
             "num_key_value_heads": 2, "vocab_size": 32000},
    # Llama-2-70B
    "70b": {"hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
            "num_key_value_heads": 8, "vocab_size": 32000},
}
_SAFE = {"bfloat16": ("BF16", 2), "float16": ("F16", 2), "float32": ("F32", 4)}


def llama_config(size: str, dtype: str = "bfloat16", **override: int) -> dict[str, Any]:
    """A Llama config.json (as a dict) of a named size."""
    dims = {**SHAPES[size], **override}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "torch_dtype": dtype, "bos_token_id": 1, "eos_token_id": 2,
            "head_dim": dims["hidden_size"] // dims["num_attention_heads"], **dims}


def llama_tensors(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a Llama checkpoint with this config (the names transformers saves)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    q = config["num_attention_heads"] * config["head_dim"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update({
            p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
        })
    shapes["model.norm.weight"] = (h,)
    shapes["lm_head.weight"] = (v, h)
    return shapes


def write_sparse_checkpoint(folder: Path, config: dict[str, Any]) -> int:
    """Write config.json and a sparse model.safetensors (header, then a hole); returns the file's logical size."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    code, size = _SAFE[config["torch_dtype"]]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in llama_tensors(config).items():
        nbytes = size
        for d in shape:
            nbytes *= d
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data region starts 8-byte aligned, as safetensors writes it
    path = folder / "model.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)))
        handle.write(raw)
        handle.truncate(8 + len(raw) + offset)
    return 8 + len(raw) + offset


def write_sparse_family(root: Path, size: str = "7b", n_models: int = 4, dtype: str = "bfloat16",
                        **override: int) -> tuple[Path, list[Path]]:
    """A base and ``n_models`` fine-tunes of a named Llama size as sparse folders under ``root``."""
    config = llama_config(size, dtype, **override)
    base = root / "base"
    write_sparse_checkpoint(base, config)
    models = []
    for k in range(n_models):
        write_sparse_checkpoint(root / f"ft{k}", config)
        models.append(root / f"ft{k}")
    return base, models
