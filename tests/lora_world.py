"""Real PEFT LoRA adapters on tiny real models, for tests: made with peft, saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_base(folder: Path, *, arch: str = "llama", tied: bool = False, seed: int = 0, layers: int = 4) -> Path:
    """A random tiny base model with the character tokenizer, as an HF folder."""
    from tiny import save_tokenizer, tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, layers)
    if tied:
        config.tie_word_embeddings = True
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder))
    save_tokenizer(folder)
    return folder


def make_adapter(base: Path, out: Path, *, seed: int, scale: float = 0.1, **lora: Any) -> Path:
    """A LoRA adapter of ``base`` with non-zero A and B (random, ``scale``) and perturbed modules_to_save."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], **lora})
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            elif "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * scale * 0.2)
    peft_model.save_pretrained(str(out))
    return out


def make_lora_world(root: Path) -> tuple[Path, list[Path]]:
    """A tiny Llama base and three adapters: plain; rslora on every linear; rank/alpha patterns with
    modules_to_save (lm_head and the final norm)."""
    base = make_base(root / "base")
    adapters = [
        make_adapter(base, root / "plain", seed=1),
        make_adapter(base, root / "rslora", seed=2, r=8, lora_alpha=4, use_rslora=True,
                     target_modules=LLAMA_LINEARS),
        make_adapter(base, root / "patterns", seed=3, r=4, lora_alpha=16, target_modules=["k_proj", "o_proj",
                     "up_proj"], rank_pattern={"up_proj": 2}, alpha_pattern={"o_proj": 3},
                     modules_to_save=["lm_head", "norm"]),
    ]
    return base, adapters


def peft_merged_state(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """The weights PEFT gives: the adapter loaded on the base and merged (``merge_and_unload``)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
