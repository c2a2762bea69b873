"""Sparsification of one task vector, as mergekit's ``sparsify.py`` does it.

Each function returns a boolean keep-mask shaped like the delta, or None for "keep everything" (the density
is 1 or more). ``apply_mask`` then zeroes the dropped entries and, with ``rescale``, multiplies the survivors
so the L1 norm of the delta is unchanged (mergekit's ``RescaleNorm.l1``; it skips the rescale when either
norm is below 1e-7).

- ``magnitude_mask`` (TIES): keep the ``max(1, int(density * n))`` entries of largest magnitude.
- ``outlier_mask`` (Model Breadcrumbs): drop the ``int(gamma * n)`` largest entries, then the smallest, so
  that ``int(density * n)`` remain; the outlier cut shrinks when ``density + gamma > 1``. ``density >= 1``
  keeps all (gamma then has no effect, as in mergekit).
- ``random_mask`` (DARE): keep each entry with probability ``density``.

Random draws come from a CPU generator and are moved to the delta's device, so a seeded mask has the same bits
on a CPU and on a GPU.
- ``della_mask`` (DELLA MagPrune): along dim 1 (a 1-D tensor is one row), rank the entries by magnitude; keep
  each with probability ``density - epsilon + 2 * epsilon * rank / (n - 1)`` (rank 0 = smallest).

Ties in magnitude are broken by position (mergekit's argsort breaks them arbitrarily); the count kept is
exact.

>>> import torch
>>> magnitude_mask(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
tensor([False,  True,  True, False])
"""

from __future__ import annotations

import torch

from search.errors import UserError

_RESCALE_EPS = 1e-7  # mergekit's rescaled_masked_tensor eps


def _magnitudes(delta: torch.Tensor) -> torch.Tensor:
    return delta.abs().reshape(-1)


def top_mask(magnitudes: torch.Tensor, k: int) -> torch.Tensor:
    """Flat keep-mask of the ``k`` largest ``magnitudes`` (exactly ``k``; ties go to the lower index).

    O(n) by ``kthvalue`` rather than a sort. Masks for two counts are nested:
    ``top_mask(m, a) <= top_mask(m, b)`` for ``a <= b``.
    """
    n = magnitudes.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=magnitudes.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=magnitudes.device)
    threshold = magnitudes.kthvalue(n - k + 1).values  # the k-th largest
    mask = magnitudes > threshold
    need = k - int(mask.sum())
    tied = torch.nonzero(magnitudes == threshold).view(-1)[:need]
    mask[tied] = True
    return mask


def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor | None:
    """TIES trim: keep the ``max(1, int(density * n))`` largest-magnitude entries."""
    if density >= 1:
        return None
    n = delta.numel()
    if density <= 0 or n == 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    return top_mask(_magnitudes(delta), max(1, int(density * n))).view(delta.shape)


def outlier_mask(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor | None:
    """Breadcrumbs: keep ranks ``[n_bot, n_bot + int(density * n))`` of the entries sorted by magnitude."""
    if density >= 1:
        return None
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    magnitudes = _magnitudes(delta)
    keep = top_mask(magnitudes, n - n_bot)
    keep &= ~top_mask(magnitudes, n - n_bot - target)
    return keep.view(delta.shape)


def random_mask(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor | None:
    """DARE drop: keep each entry independently with probability ``density``."""
    if density >= 1:
        return None
    # P(U < p) = p: the same Bernoulli draw as bernoulli_(p), about 2x faster on CPU (measured). Drawn on the CPU
    # (the generator's device) and moved as booleans: the same bits on every device.
    keep = torch.rand(delta.shape, generator=generator, device=generator.device) < max(0.0, density)
    return keep.to(delta.device)


def della_problem(density: float, epsilon: float) -> str | None:
    """Why ``density``/``epsilon`` cannot go together in DELLA, or None."""
    if density >= 1 or density <= 0:
        return None
    if density + epsilon >= 1 or density - epsilon <= 0:
        return (
            f"DELLA needs density - epsilon > 0 and density + epsilon < 1, got density {density} and "
            f"epsilon {epsilon}"
        )
    return None


def della_mask(
    delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator
) -> torch.Tensor | None:
    """DELLA MagPrune: keep probability grows linearly with the magnitude rank along dim 1."""
    if density >= 1:
        return None
    if density <= 0:
        return torch.zeros_like(delta, dtype=torch.bool)
    problem = della_problem(density, epsilon)
    if problem:
        raise UserError(problem, field="epsilon", fix="lower epsilon or move density away from 0 and 1")
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta
    n = rows.shape[1]
    order = rows.abs().argsort(dim=1, stable=True)  # stable: equal magnitudes rank alike on CPU and CUDA
    position = torch.arange(n, device=delta.device, dtype=torch.float32)
    position = position.view([1, n] + [1] * (rows.dim() - 2)).expand(order.shape)
    ranks = torch.empty(order.shape, dtype=torch.float32, device=delta.device).scatter_(1, order, position)
    # mergekit's (rank - min) / (max - min) is 0/0 for a single column; take the middle there.
    step = 2 * epsilon / (n - 1) if n > 1 else 0.0
    low = density - epsilon if n > 1 else density
    probs = ranks.mul_(step).add_(low)
    draws = torch.rand(order.shape, dtype=torch.float32, device=generator.device, generator=generator)
    draws = draws.to(delta.device)  # drawn on the CPU: the same bits on every device
    return (draws < probs).reshape(delta.shape)


def apply_mask(
    delta: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    rescale: bool,
    scale: float = 1.0,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``delta * mask * scale``, times ``|delta|_1 / |delta * mask|_1`` if ``rescale``; into ``out``."""
    if mask is None:
        return torch.mul(delta, scale, out=out)
    masked = torch.mul(delta, mask, out=out)
    if rescale:
        accumulate = torch.promote_types(delta.dtype, torch.float32)
        before = float(torch.linalg.vector_norm(delta, 1, dtype=accumulate))
        after = float(torch.linalg.vector_norm(masked, 1, dtype=accumulate))
        if before >= _RESCALE_EPS and after >= _RESCALE_EPS:
            scale *= before / after
    if scale != 1.0:
        masked.mul_(scale)
    return masked
