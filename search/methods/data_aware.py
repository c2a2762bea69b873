"""The closed forms of the data-aware merges, Fisher merging and RegMean, given their statistics.

These are the pure-math halves of issue 15's item 2 (the statistics pipeline over a calibration source is not
built yet, see docs/data-aware-merges.md); they are not in the registry, because they need per-parent statistics
that a tensor-only merge method does not receive.

**Fisher merging** (Matena & Raffel 2022, https://arxiv.org/abs/2111.09832), per parameter ``p``, with diagonal
empirical Fishers ``F_i`` (the mean squared gradient of the log-likelihood) and model weights ``lambda_i``:

    merged_p = sum_i lambda_i F_ip theta_ip / sum_i lambda_i F_ip
    (where sum_i lambda_i F_ip <= eps: the lambda-weighted mean of theta_ip)

**RegMean** (Jin et al. 2023, https://arxiv.org/abs/2212.09849), per linear layer ``y = W x`` (torch layout,
``W`` is ``out x in``), with the Gram matrix ``G_i = X_i^T X_i`` of the layer's inputs under parent ``i``:

    G~_i   = alpha G_i + (1 - alpha) diag(G_i)                    (the paper's off-diagonal scaling)
    merged = (sum_i W_i G~_i) (sum_i G~_i)^-1

``alpha = 1`` is the least-squares merge ``argmin_W sum_i |X_i W^T - X_i W_i^T|^2``; ``alpha = 0`` weighs each
input column by its energy under each parent (a per-column weighted mean). Everything else in the model
(embeddings, norms, biases) takes the plain mean, as in the paper.

>>> import torch
>>> fisher_merge(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
tensor([2., 3.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fisher_merge(
    thetas: torch.Tensor, fishers: torch.Tensor, weights: Sequence[float] | None = None, *, eps: float = 1e-12
) -> torch.Tensor:
    """Fisher-weighted average of ``thetas`` (``(k, *shape)``) by their diagonal Fishers (same shape)."""
    k = thetas.shape[0]
    lam = torch.tensor(list(weights) if weights is not None else [1.0] * k, dtype=torch.float64)
    lam = lam.view(k, *([1] * (thetas.dim() - 1)))
    t, f = thetas.double(), fishers.double()
    if bool((f < 0).any()):
        raise ValueError("a Fisher is a mean of squares: it cannot be negative")
    num = (lam * f * t).sum(0)
    den = (lam * f).sum(0)
    plain = (lam * t).sum(0) / lam.sum(0)
    return torch.where(den > eps, num / den.clamp(min=eps), plain).to(thetas.dtype)


def gram_update(gram: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
    """``gram + X^T X`` for a batch of a linear layer's inputs ``X`` (``(..., in)``), accumulated in float64."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    update = x.T @ x
    return update if gram is None else gram.add_(update)


def regmean_merge(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], *, alpha: float = 0.9,
                  ridge: float = 0.0) -> torch.Tensor:
    """RegMean's closed form for one linear layer: ``(sum W_i G~_i)(sum G~_i)^-1`` (``W_i``: ``out x in``).

    ``ridge`` adds ``ridge * I`` to ``sum G~_i`` for inputs that never fire (a singular sum); 0 refuses them.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if len(weights) != len(grams) or not weights:
        raise ValueError("give one Gram matrix per weight matrix, at least one")
    scaled = [alpha * g.double() + (1 - alpha) * torch.diag(torch.diagonal(g.double())) for g in grams]
    total = sum(scaled)
    if ridge:
        total = total + ridge * torch.eye(total.shape[0], dtype=total.dtype)
    rhs = sum(w.double() @ g for w, g in zip(weights, scaled))
    # W (sum G) = rhs  <=>  (sum G)^T W^T = rhs^T; the Grams are symmetric
    try:
        solved = torch.linalg.solve(total, rhs.T).T
    except RuntimeError as exc:  # torch raises on an exactly singular matrix
        raise ValueError("the summed Gram matrix is singular (an input that is always 0): give ridge > 0") from exc
    return solved.to(weights[0].dtype)
