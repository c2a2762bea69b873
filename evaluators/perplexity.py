"""Token-level perplexity of a live model on local text, split three ways (search / select / test) by content hash.

Documents: each line of a ``.jsonl`` file (its ``field``), or each blank-line-separated paragraph of any other
file. Every token after the first of a document is scored once (with BOS prepended, the first is scored too);
a document longer than ``max_length`` is read in windows that each score ``stride`` new tokens with the tokens
before them as context. Metrics: ``neg_log_likelihood`` (mean NLL per scored token, nats) and ``perplexity``
(its exp), over all scored tokens of the chosen documents.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluators.protocol import SplitName, check_device, check_split, model_device, resolve_limit
from evaluators.specs import PerplexitySpec, SpecContext
from evaluators.splits import fingerprint, first, role_orders

if TYPE_CHECKING:
    import torch


def read_text_docs(path: Path, *, field: str, ctx: SpecContext, sub_field: str = "data") -> list[str]:
    """The documents of one file: jsonl lines' ``field``, or the paragraphs of a text file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".jsonl":
        return [p.strip() for p in text.split("\n\n") if p.strip()]
    docs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ctx.error(sub_field, f"{path}:{n} is not JSON ({exc.msg})", "write one JSON object per line")
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise ctx.error("field", f"{path}:{n} has no string field {field!r}",
                            "set field to the key that holds each document's text")
        docs.append(row[field])
    return docs


def windows(num_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(start, first_scored, end)`` per window: it reads tokens [start, end) and scores [first_scored, end).

    Every position 1..num_tokens-1 is scored exactly once, with up to ``max_length - 1`` tokens of context.

    >>> windows(10, max_length=4, stride=3)
    [(0, 1, 4), (3, 4, 7), (6, 7, 10)]
    """
    if not 1 <= stride < max_length:
        raise ValueError(f"stride must be in [1, max_length), got {stride} with max_length={max_length}")
    if num_tokens < 2:
        return []
    end = min(num_tokens, max_length)
    out = [(0, 1, end)]
    while end < num_tokens:
        new_end = min(num_tokens, end + stride)
        out.append((max(0, new_end - max_length), end, new_end))
        end = new_end
    return out


class PerplexityEvaluator:
    """Mean token NLL and perplexity on local text; tokenized once, batched, no grad, on the model's device.

    >>> ev = build_evaluator({"type": "perplexity", "data": "wiki.txt", "max_length": 256})   # doctest: +SKIP
    >>> ev.score(model, tokenizer, "search")                                                  # doctest: +SKIP
    {'perplexity': 21.7, 'neg_log_likelihood': 3.08}
    """

    def __init__(self, spec: PerplexitySpec, *, device: str, ctx: SpecContext) -> None:
        self.spec = spec
        self.device = device
        files = [spec.data] if isinstance(spec.data, str) else list(spec.data)
        if not files:
            raise ctx.error("data", "no file given", "give a text or jsonl file")
        self.name = spec.name or Path(files[0]).stem
        self.stride = spec.stride if spec.stride is not None else max(1, spec.max_length // 2)
        if self.stride >= spec.max_length:
            raise ctx.error("stride", f"{self.stride} is not below max_length ({spec.max_length})",
                            "choose a stride smaller than max_length (the rest of each window is context)")
        self.docs: list[str] = []
        for i, f in enumerate(files):
            sub = "data" if isinstance(spec.data, str) else f"data[{i}]"
            self.docs += read_text_docs(ctx.existing_file(sub, f), field=spec.field, ctx=ctx, sub_field=sub)
        self._order = role_orders([fingerprint(d) for d in self.docs], spec.fractions, ctx)
        self._tokens: list[list[int]] | None = None
        self._tokens_for: Any = None

    def num_docs(self, split: SplitName) -> int:
        return len(self._order[check_split(split)])

    def documents(self, split: SplitName, limit: int | None = None) -> list[str]:
        """The documents ``score(..., split, limit)`` scores, in the fixed order."""
        order = self._order[check_split(split)]
        return [self.docs[i] for i in first(order, resolve_limit(limit, len(order)))]

    def score(self, model: Any, tokenizer: Any, split: SplitName, limit: int | None = None) -> dict[str, float]:
        import torch

        order = self._order[check_split(split)]
        check_device(model, self.device, self.name)
        tokens = self._tokenized(tokenizer)
        spans = [
            (tokens[i][a:e], s - a)
            for i in first(order, resolve_limit(limit, len(order)))
            for a, s, e in windows(len(tokens[i]), self.spec.max_length, self.stride)
        ]
        if not spans:
            raise ValueError(f"evaluator {self.name!r}: the chosen documents have fewer than 2 tokens each")
        spans.sort(key=lambda span: len(span[0]))  # similar lengths together: less padding
        total_nll, total_tokens = 0.0, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for b in range(0, len(spans), self.spec.batch_size):
                    nll, count = _batch_nll(model, spans[b: b + self.spec.batch_size], model_device(model))
                    total_nll += nll
                    total_tokens += count
        finally:
            model.train(was_training)
        mean = total_nll / total_tokens
        return {"perplexity": math.exp(mean), "neg_log_likelihood": mean}

    def _tokenized(self, tokenizer: Any) -> list[list[int]]:
        if self._tokens is None or self._tokens_for is not tokenizer:
            bos = [tokenizer.bos_token_id] if self.spec.add_bos and tokenizer.bos_token_id is not None else []
            encoded = tokenizer(self.docs, add_special_tokens=False)["input_ids"]
            self._tokens = [bos + list(ids) for ids in encoded]
            self._tokens_for = tokenizer
        return self._tokens


def _batch_nll(model: Any, spans: list[tuple[list[int], int]], device: torch.device) -> tuple[float, int]:
    """Summed NLL and count of the scored tokens of a batch of windows (right-padded, masked)."""
    import torch
    import torch.nn.functional as F

    width = max(len(ids) for ids, _ in spans)
    input_ids = torch.zeros((len(spans), width), dtype=torch.long)
    attention = torch.zeros((len(spans), width), dtype=torch.long)
    targets = torch.full((len(spans), width), -100, dtype=torch.long)
    for row, (ids, first_scored) in enumerate(spans):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        targets[row, first_scored: len(ids)] = input_ids[row, first_scored: len(ids)]
    logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
    # position t predicts token t+1
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets[:, 1:].to(device).flatten(),
                          ignore_index=-100, reduction="sum")
    return float(nll), int((targets[:, 1:] != -100).sum())
