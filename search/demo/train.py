"""Pretrain the demo base model and fine-tune it on one skill; deterministic from a seed.

The recipe (defaults of the configs below):

- Base: a tiny transformers ``LlamaForCausalLM`` (hidden 128, 4 layers, 4 heads, intermediate 256; 0.68 M
  parameters), 2400 steps of 16 rows x 96 characters at lr 2e-3 (cosine to a tenth) on the pretraining mixture
  of :mod:`search.demo.skills`: 80 % skill lines, each answered right half the time and otherwise by a lazy
  echo of its input, so the base half-knows every skill.
- Fine-tune: 150 steps of 32 skill lines at lr 2e-4 with the loss on the answer only, plus 0.1 x the KL to the
  base on 8 rows of pretraining lines of the other skills (replay): each fine-tune only tilts the base towards
  the right answers of its own skill and leaves the rest alone, so task vectors are small and merge well.

Results are bit-for-bit reproducible for a given seed, torch build and thread count.

    >>> from search.demo.tokenizer import build_tokenizer
    >>> tok = build_tokenizer()
    >>> base = pretrain(tok, PretrainConfig(steps=2, batch=2, seq_len=32), seed=0)
    >>> ft = finetune(base, tok, "add", FinetuneConfig(steps=2, batch=2), seed=0)
    >>> sum(p.numel() for p in ft.parameters())
    682112
"""

from __future__ import annotations

import copy
import math
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from search.demo.skills import SKILLS, Mixture, line_family, pretraining_line, train_examples


@dataclass(frozen=True)
class ModelShape:
    """The demo model's size (0.68 M parameters at the defaults)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    intermediate: int = 256
    max_positions: int = 128


@dataclass(frozen=True)
class PretrainConfig:
    steps: int = 2400
    batch: int = 16
    seq_len: int = 96
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.01
    mixture: Mixture = field(default_factory=Mixture)


@dataclass(frozen=True)
class FinetuneConfig:
    """``replay`` > 0 adds ``replay * KL(base || model)`` on rows of the pretraining mixture that hold no
    prompt of the fine-tuned skill's family: the fine-tune keeps the base's other behaviours, so its task
    vector says less about other skills."""

    steps: int = 150
    batch: int = 32
    lr: float = 2e-4
    replay: float = 0.1
    replay_batch: int = 8
    replay_len: int = 64
    mixture: Mixture = field(default_factory=Mixture)


def llama_config(tok: PreTrainedTokenizerBase, shape: ModelShape = ModelShape()) -> LlamaConfig:
    """The transformers config of a demo model for tokenizer ``tok``."""
    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


def generation_config(tok: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy decoding that stops at the end of the answer line (callers choose the length)."""
    newline = tok.convert_tokens_to_ids("\n")
    return GenerationConfig(
        do_sample=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[newline, tok.eos_token_id],
        pad_token_id=tok.pad_token_id,
    )


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _pretraining_batch(tok: PreTrainedTokenizerBase, rng: random.Random, batch: int, seq_len: int,
                       mix: Mixture = Mixture(), skip: Callable[[str], bool] | None = None) -> torch.Tensor:
    rows = []
    for _ in range(batch):
        text = ""
        while len(text) < seq_len:
            line = pretraining_line(rng, mix)
            if skip is None or not skip(line):
                text += line
        rows.append(tok(text[:seq_len], add_special_tokens=False)["input_ids"])
    return torch.tensor(rows)


def pretrain(tok: PreTrainedTokenizerBase, cfg: PretrainConfig = PretrainConfig(), *, seed: int = 0,
             shape: ModelShape = ModelShape(), log_every: int = 0,
             on_log: Callable[[int, LlamaForCausalLM], None] | None = None) -> LlamaForCausalLM:
    """Train the base model from scratch on the pretraining mixture.

    Each row is a run of whole lines starting at a line start, so position 0 is the start of a question,
    as in evaluation. ``on_log(step, model)`` is called every ``log_every`` steps (to watch skills grow).
    """
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tok, shape))
    model.generation_config = generation_config(tok)
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    model.train()
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _schedule(step, cfg.steps, cfg.warmup)
        ids = _pretraining_batch(tok, rng, cfg.batch, cfg.seq_len, cfg.mixture)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            print(f"pretrain step {step:5d} loss {loss.item():.4f}", flush=True)
            if on_log is not None:
                model.eval()
                on_log(step, model)
                model.train()
    model.eval()
    return model


def answer_batch(tok: PreTrainedTokenizerBase, prompts: list[str], answers: list[str]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + " " + answer + "\\n"`` rows, attention mask, and labels on the answer only."""
    rows, labels = [], []
    for p, a in zip(prompts, answers):
        p_ids = tok(p, add_special_tokens=False)["input_ids"]
        a_ids = tok(f" {a}\n", add_special_tokens=False)["input_ids"]
        rows.append(p_ids + a_ids)
        labels.append([-100] * len(p_ids) + a_ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    lab = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        lab[i, : len(l)] = torch.tensor(l)
        mask[i, : len(r)] = 1
    return ids, mask, lab


def finetune(base: LlamaForCausalLM, tok: PreTrainedTokenizerBase, skill: str,
             cfg: FinetuneConfig = FinetuneConfig(), *, seed: int = 0, log_every: int = 0
             ) -> LlamaForCausalLM:
    """A copy of ``base`` fine-tuned on ``skill`` (loss on the answer tokens only); ``base`` is untouched."""
    torch.manual_seed(seed)
    model = copy.deepcopy(base)
    rng = random.Random(seed * 1_000_003 + zlib.crc32(skill.encode()))
    replay_rng = random.Random(seed * 1_000_033 + zlib.crc32(skill.encode()))
    family = SKILLS[skill].family
    stream = train_examples(skill, rng)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    for step in range(cfg.steps):
        batch = [next(stream) for _ in range(cfg.batch)]
        ids, mask, lab = answer_batch(tok, [e.prompt for e in batch], [e.answer for e in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        if cfg.replay > 0:
            r_ids = _pretraining_batch(tok, replay_rng, cfg.replay_batch, cfg.replay_len, cfg.mixture,
                                       skip=lambda line: line_family(line) == family)
            with torch.no_grad():
                ref = torch.log_softmax(base(input_ids=r_ids).logits, -1)
            cur = torch.log_softmax(model(input_ids=r_ids).logits, -1)
            kl = torch.nn.functional.kl_div(cur, ref, log_target=True, reduction="none").sum(-1).mean()
            loss = loss + cfg.replay * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log_every and (step % log_every == 0 or step == cfg.steps - 1):
            print(f"finetune {skill} step {step:4d} loss {loss.item():.4f}", flush=True)
    model.eval()
    return model
