"""TIES sign election and disjoint mean, as mergekit's ``get_mask(method="sum")`` and its use in
``GeneralizedTaskArithmeticMerge``.

For weighted task vectors ``x_i = w_i * delta_i`` (after trimming), per parameter ``p``:

    s_p      = +1 if sum_i x_ip >= 0 else -1                 (elected sign; a tie elects +)
    a_ip     = [sign(x_ip) == s_p]                           (agrees; a zero never agrees)
    mixed_p  = sum_i a_ip * x_ip
    merged_p = base_p + lambda * mixed_p / d_p,  d_p = sum_i a_ip * w_i  (d_p = 0 -> 1)   (normalize)
    merged_p = base_p + lambda * mixed_p                                                 (no normalize)

>>> import torch
>>> weighted = torch.tensor([[1.0, -2.0], [3.0, 1.0], [-1.0, -0.5]])
>>> ties_combine(torch.zeros(2), weighted, [1.0, 1.0, 1.0], normalize=True, lam=1.0)
tensor([ 2.0000, -1.2500])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from search.methods.base import flat_out


def elected_sign(weighted: torch.Tensor) -> torch.Tensor:
    """Per-parameter elected sign (+1/-1, in ``weighted``'s dtype) of a ``(k, n)`` stack."""
    total = weighted.sum(dim=0)
    return torch.where(total >= 0, 1.0, -1.0).to(weighted.dtype)


def ties_combine(
    base: torch.Tensor,
    weighted: torch.Tensor,
    weights: Sequence[float],
    *,
    normalize: bool,
    lam: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Elect signs and take the disjoint (weighted) mean; ``weighted`` is ``(k, n)`` and is overwritten."""
    weighted = weighted.view(weighted.shape[0], -1)
    sign = elected_sign(weighted)
    # x * s > 0 exactly when sign(x) == s; clamping then keeps |x| of the agreeing entries only.
    weighted.mul_(sign)
    agree = weighted > 0 if normalize else None
    weighted.clamp_(min=0)
    mixed = weighted.sum(dim=0).mul_(sign)
    target = flat_out(out)
    flat_base = base.reshape(-1)
    if agree is None:
        result = torch.add(flat_base, mixed, alpha=lam, out=target)
    else:
        divisor = torch.zeros_like(mixed)
        for row, w in zip(agree, weights):
            divisor.add_(row, alpha=w)
        divisor.masked_fill_(divisor == 0, 1)
        result = torch.addcdiv(flat_base, mixed, divisor, value=lam, out=target)
    return result.view(base.shape)
