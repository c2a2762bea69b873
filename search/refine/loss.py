"""The refinement losses of a model whose weights are given per call (``torch.func.functional_call``).

- ``loglik``: the negative log-likelihood of each document's answer given its prompt, summed over the answer's
  tokens (what lm-eval's loglikelihood requests measure), averaged over the documents of each objective, the
  objectives weighted as in the space's weighted view;
- ``entropy``: the entropy of the next-token distribution right after each prompt (AdaMerging's test-time
  objective: no answers used), averaged the same way.

Prompts and answers are tokenized as lm-eval's HF wrapper does (``_encode_pair``: trailing spaces of the prompt
move to the answer; the answer's tokens are those of ``prompt + answer`` after the prompt's).

``batch_loss`` is a scalar tensor, differentiable in the weights given:

>>> batch = encode(tokenizer, examples, {"add": 1.0})           # doctest: +SKIP
>>> loss = batch_loss(model, weights, batch, "loglik")          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from search.refine.documents import Example


@dataclass
class Batch:
    """Tokenized documents, right-padded: ``answer[b, t]`` marks tokens of the answer (predicted at ``t - 1``);
    ``last[b]`` is the position of the prompt's last token; ``weight[b]`` the document's share of the loss."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer: torch.Tensor
    last: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def split(self, size: int) -> list[Batch]:
        """Consecutive pieces of at most ``size`` documents (trimmed to their longest)."""
        out = []
        for s in range(0, len(self), size):
            sl = slice(s, s + size)
            width = int(self.attention_mask[sl].sum(dim=1).max())
            out.append(Batch(self.input_ids[sl, :width], self.attention_mask[sl, :width], self.answer[sl, :width],
                             self.last[sl], self.weight[sl]))
        return out

    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.answer, self.last,
                                              self.weight)))


def encode_pair(tokenizer: object, context: str, answer: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt and of the answer after it, as lm-eval's ``HFLM._encode_pair``."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        answer, context = context[-spaces:] + answer, context[:-spaces]
    whole = tokenizer(context + answer, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    prompt = tokenizer(context, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if not prompt:  # an empty prompt: lm-eval conditions on the BOS (else EOS) token
        start = getattr(tokenizer, "bos_token_id", None)
        start = start if start is not None else getattr(tokenizer, "eos_token_id", 0)
        return [int(start)], list(whole)
    return list(prompt), list(whole[len(prompt):])


def encode(tokenizer: object, examples: Sequence[Example], weights: Mapping[str, float]) -> Batch:
    """One batch of every example; each objective's documents share its weight equally."""
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    pairs = [encode_pair(tokenizer, e.context, e.answer) for e in examples]
    width = max(len(p) + len(a) for p, a in pairs)
    n = len(pairs)
    ids = torch.full((n, width), int(pad), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    answer = torch.zeros((n, width), dtype=torch.bool)
    last = torch.zeros(n, dtype=torch.long)
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.objective] = counts.get(e.objective, 0) + 1
    total = sum(weights.get(o, 0.0) for o in counts) or 1.0
    weight = torch.tensor([weights.get(e.objective, 0.0) / total / counts[e.objective] for e in examples],
                          dtype=torch.float32)
    for b, (p, a) in enumerate(pairs):
        seq = p + a
        ids[b, :len(seq)] = torch.tensor(seq)
        mask[b, :len(seq)] = 1
        answer[b, len(p):len(seq)] = True
        last[b] = len(p) - 1
    return Batch(ids, mask, answer, last, weight)


def batch_loss(model: torch.nn.Module, weights: Mapping[str, torch.Tensor], batch: Batch, loss: str) -> torch.Tensor:
    """The weighted loss of ``batch`` for ``model`` with ``weights`` in place of its own (its share of the total:
    the pieces of :meth:`Batch.split` add up to the loss of the whole batch)."""
    logits = torch.func.functional_call(model, dict(weights), args=(),
                                        kwargs={"input_ids": batch.input_ids,
                                                "attention_mask": batch.attention_mask,
                                                "use_cache": False}).logits
    logp = torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1)
    if loss == "entropy":
        rows = torch.arange(len(batch), device=logp.device)
        at = logp[rows, batch.last]
        per_doc = -(at.exp() * at).sum(dim=-1)
    else:
        # the token at t is predicted from position t - 1
        predicted = logp[:, :-1].gather(-1, batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        per_doc = -(predicted * batch.answer[:, 1:].to(predicted.dtype)).sum(dim=1)
    return (per_doc * batch.weight.to(per_doc.device)).sum()
