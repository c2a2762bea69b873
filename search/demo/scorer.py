"""A fast in-torch scorer for the demo world: greedy exact match and two smooth metrics.

It reads the same prompts as the lm-eval tasks (``Q: … A:``, answer after one space, ends at a newline) and
is meant for iterating on the demo recipe and for fast tests; the product scores through lm-eval.

- ``exact``: greedy decoding, the answer line must match exactly.
- ``token_acc``: teacher-forced per-token accuracy on `` answer\\n``.
- ``loglik``: mean log-likelihood of `` answer\\n`` per example (nats; higher is better).

    >>> from search.demo import load_demo_model
    >>> from search.demo.skills import eval_examples
    >>> model, tok = load_demo_model("add")
    >>> score(model, tok, eval_examples("add", "heldout", 50)).exact > 0.5
    True
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from search.demo.skills import Example
from search.demo.train import answer_batch


@dataclass(frozen=True)
class Scores:
    exact: float
    token_acc: float
    loglik: float


@torch.no_grad()
def greedy_answers(model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[str],
                   max_new: int = 10) -> list[str]:
    """Greedy answers (text after ``prompt + " "`` up to the newline), prompts batched by length."""
    newline = tok.convert_tokens_to_ids("\n")
    by_len: dict[int, list[int]] = defaultdict(list)
    encoded = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    out: list[str] = [""] * len(prompts)
    for idx in by_len.values():
        ids = torch.tensor([encoded[i] for i in idx])
        done = torch.zeros(len(idx), dtype=torch.bool)
        new: list[torch.Tensor] = []
        past = None
        step_in = ids
        for _ in range(max_new):
            res = model(input_ids=step_in, past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = res.logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, newline), nxt)
            new.append(nxt)
            done |= nxt == newline
            if bool(done.all()):
                break
            step_in = nxt[:, None]
        gen = torch.stack(new, 1).tolist()
        for row, i in zip(gen, idx):
            if newline in row:
                row = row[: row.index(newline)]
            text = tok.decode(row)
            out[i] = text[1:] if text.startswith(" ") else text
    return out


@torch.no_grad()
def score(model: PreTrainedModel, tok: PreTrainedTokenizerBase, examples: list[Example],
          batch: int = 256) -> Scores:
    """Exact match, per-token accuracy and mean answer log-likelihood over ``examples``."""
    answers = greedy_answers(model, tok, [e.prompt for e in examples])
    exact = sum(a == e.answer for a, e in zip(answers, examples)) / len(examples)
    right = total = 0
    loglik = 0.0
    for start in range(0, len(examples), batch):
        chunk = examples[start : start + batch]
        ids, mask, lab = answer_batch(tok, [e.prompt for e in chunk], [e.answer for e in chunk])
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = lab[:, 1:]
        keep = target != -100
        logp = torch.log_softmax(logits.float(), -1)
        tok_lp = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0]
        loglik += float((tok_lp * keep).sum())
        right += int(((logits.argmax(-1) == target) & keep).sum())
        total += int(keep.sum())
    return Scores(exact=exact, token_acc=right / total, loglik=loglik / len(examples))
