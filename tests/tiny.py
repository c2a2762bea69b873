"""Tiny real model families for tests: a base and fine-tunes saved as HF folders with safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

VOCAB = ["<pad>", "<s>", "</s>", "<unk>"] + list("abcdefghijklmnopqrstuvwxyz0123456789 +=:?")


def save_tokenizer(folder: Path, vocab: list[str] = VOCAB) -> None:
    """A character-level fast tokenizer, saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))


def tiny_config(arch: str = "llama", layers: int = 4, hidden: int = 32, vocab: int = len(VOCAB)):
    from transformers import AutoConfig

    if arch == "gpt2":
        return AutoConfig.for_model("gpt2", n_layer=layers, n_embd=hidden, n_head=2, vocab_size=vocab,
                                    n_positions=64)
    return AutoConfig.for_model(arch, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab, head_dim=hidden // 2,
                                max_position_embeddings=64, tie_word_embeddings=False)


def make_family(root: Path, n_models: int = 3, *, arch: str = "llama", layers: int = 4, hidden: int = 32,
                seed: int = 0, scale: float = 0.02, sharded: bool = False) -> tuple[Path, list[Path]]:
    """A random base and ``n_models`` fine-tunes (base + small random deltas), as real HF folders."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, layers, hidden)
    base = AutoModelForCausalLM.from_config(config)
    base_dir = root / "base"
    _save(base, base_dir, sharded)
    paths = []
    for i in range(n_models):
        g = torch.Generator().manual_seed(seed * 100 + i + 1)
        ft = AutoModelForCausalLM.from_config(config)
        ft.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in ft.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)
        path = root / f"ft{i}"
        _save(ft, path, sharded)
        paths.append(path)
    return base_dir, paths


def _save(model, folder: Path, sharded: bool) -> None:
    model.save_pretrained(str(folder), max_shard_size="20KB" if sharded else "5GB")
    save_tokenizer(folder)


def load_state(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder (single file or shards)."""
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(folder / f)))
    return state


def snapshot(root: Path) -> set[tuple[str, int]]:
    """Every file under root with its size: to prove a refused command wrote nothing."""
    return {(str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()}
