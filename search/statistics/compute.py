"""The per-parent statistics of the data-aware merges, from forward (and backward) passes of a live model.

One document at a time (no padding: every token counted is a real one, and Fisher needs one gradient per
document anyway):

- :func:`fisher_pass`: the diagonal empirical Fisher, ``F = mean over documents of (d log p(doc) / d theta)^2``,
  with ``log p(doc)`` the sum of the log-probabilities of the document's tokens after the first (the observed
  text: "empirical"), for every parameter named in ``names`` (a tied tensor gets its one shared gradient);
- :func:`gram_pass`: per ``nn.Linear`` whose weight is named in ``names``, the mean Gram matrix of its inputs,
  ``G = X^T X / n`` over the ``n`` tokens of all documents (float64 sums, float32 result).

The caller puts the parent's weights into the model first (:meth:`Parents.write_parent`); both functions leave the
weights as they found them and call ``advance()`` after each document (a progress bar).

>>> gram_pass(model, tokenizer, ["some text"], 256, names)     # doctest: +SKIP
{'model.layers.0.self_attn.q_proj.weight': tensor([[...]])}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def _tokens(tokenizer: object, text: str, max_length: int, device: torch.device) -> torch.Tensor:
    ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]  # type: ignore
    return ids.to(device)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def fisher_pass(model: torch.nn.Module, tokenizer: object, texts: Iterable[str], max_length: int,
                names: Iterable[str], advance: Callable[[], None] = lambda: None) -> dict[str, torch.Tensor]:
    """The diagonal empirical Fisher of every named parameter (float32, on the parameter's device)."""
    wanted = set(names)
    params = {n: p for n, p in model.named_parameters(remove_duplicate=False) if n in wanted}
    before = {n: p.requires_grad for n, p in params.items()}
    sums = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    count = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            for text in texts:
                ids = _tokens(tokenizer, text, max_length, _device(model))
                if ids.shape[1] < 2:  # no next token to predict
                    advance()
                    continue
                logits = model(input_ids=ids).logits[:, :-1].float()
                log_p = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).sum()
                grads = torch.autograd.grad(log_p, list(params.values()), allow_unused=True)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        sums[n].add_(g.float().square())
                count += 1
                advance()
    finally:
        for n, p in params.items():
            p.requires_grad_(before[n])
            p.grad = None
    if count == 0:
        raise ValueError("no calibration document has two tokens or more: Fisher needs a next token to predict")
    return {n: s.div_(count) for n, s in sums.items()}


def linear_inputs(model: torch.nn.Module, names: Iterable[str]) -> dict[str, torch.nn.Linear]:
    """Weight name -> the ``nn.Linear`` that reads it, for the named weights that belong to one."""
    wanted = set(names)
    return {f"{m_name}.weight": m for m_name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and f"{m_name}.weight" in wanted}


def gram_pass(model: torch.nn.Module, tokenizer: object, texts: Iterable[str], max_length: int,
              names: Iterable[str], advance: Callable[[], None] = lambda: None) -> dict[str, torch.Tensor]:
    """The mean Gram matrix of the inputs of every ``nn.Linear`` whose weight is named (float32)."""
    modules = linear_inputs(model, names)
    sums: dict[str, torch.Tensor] = {}
    tokens: dict[str, int] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums[name].add_(x.T @ x) if name in sums else x.T @ x
            tokens[name] = tokens.get(name, 0) + x.shape[0]
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for text in texts:
                ids = _tokens(tokenizer, text, max_length, _device(model))
                if ids.shape[1] >= 1:
                    model(input_ids=ids)
                advance()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in modules if n not in sums]
    if missing:
        raise ValueError(f"no calibration token reached {missing[0]}: the calibration texts are empty")
    return {n: (sums[n] / tokens[n]).float() for n in modules}
