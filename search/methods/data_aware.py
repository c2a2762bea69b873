"""Data-aware merges, Fisher merging and RegMean: closed forms over per-parent statistics of calibration data.

A run with a ``calibration:`` source computes the statistics once (:mod:`search.statistics`) and hands each
tensor's share to these methods through ``TensorParams.statistics``; the methods themselves stay pure functions
of tensors. Parameters and defaults follow FusionBench (``fisher_merging``, ``regmean``).

**Fisher merging** (Matena & Raffel 2022, https://arxiv.org/abs/2111.09832), per parameter ``p``, with diagonal
empirical Fishers ``F_i`` (the mean over calibration documents of the squared gradient of the document's
log-likelihood under parent ``i``), per-model scaling weights ``lambda_i`` and a floor ``eps``:

    w_i      = lambda_i                                          (normalize: false)
    w_i      = lambda_i * (1 / (|F_i| + eps)) / sum_j (1 / (|F_j| + eps))   (normalize: true, |F_i| the L2 norm
                                                                  of parent i's whole Fisher, as FusionBench)
    merged_p = sum_i w_i (F_ip + eps) theta_ip / sum_i w_i (F_ip + eps)

**RegMean** (Jin et al. 2023, https://arxiv.org/abs/2212.09849), per linear layer ``y = W x`` (torch layout,
``W`` is ``out x in``), with the Gram matrix ``G_i = X_i^T X_i / n`` of the layer's inputs under parent ``i``
(mean over the ``n`` calibration tokens) and the off-diagonal scaling ``alpha``:

    G~_i   = alpha G_i + (1 - alpha) diag(G_i)
    merged = (sum_i W_i G~_i) (sum_i G~_i + ridge I)^-1

``alpha = 1`` is the least-squares merge ``argmin_W sum_i |X_i W^T - X_i W_i^T|^2``; ``alpha = 0`` weighs each
input column by its energy under each parent (a per-column weighted mean). Every other tensor (embeddings,
norms, biases, a weight no ``nn.Linear`` reads) takes the plain mean of the parents, as in the paper.

>>> import torch
>>> fisher_merge(torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([[1.0, 0.0], [1.0, 2.0]]), floor=0.0)
tensor([2., 3.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from search.methods.base import (
    MergeMethod,
    ParamSpec,
    TensorParams,
    global_value,
    model_rows,
    model_values,
)

FISHER_FLOOR = 1e-6  # FusionBench's minimal_fisher_weight
REGMEAN_ALPHA = 0.6  # FusionBench's reduce_non_diagonal_ratio (its CLIP and GPT-2 configs)


def fisher_merge(
    thetas: torch.Tensor, fishers: torch.Tensor, weights: Sequence[float] | None = None, *,
    floor: float = FISHER_FLOOR, norms: Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Fisher-weighted average of ``thetas`` (``(k, *shape)``) by their diagonal Fishers (same shape).

    ``norms`` (one per parent: the L2 norm of its whole Fisher) turns on FusionBench's normalisation, which
    keeps a parent whose Fisher is larger overall from dominating every parameter.
    """
    k = thetas.shape[0]
    lam = torch.tensor(list(weights) if weights is not None else [1.0] * k, dtype=torch.float64)
    if bool((lam < 0).any()) or float(lam.sum()) <= 0:
        raise ValueError(f"fisher weights must be >= 0 with a positive sum, got {lam.tolist()}")
    if norms is not None:
        inverse = 1.0 / (torch.as_tensor(norms, dtype=torch.float64).reshape(k) + floor)
        lam = lam * inverse / inverse.sum()
    lam = lam.to(thetas.device).view(k, *([1] * (thetas.dim() - 1)))
    t, f = thetas.double(), fishers.double().to(thetas.device)
    if bool((f < 0).any()):
        raise ValueError("a Fisher is a mean of squares: it cannot be negative")
    f = f + floor
    return ((lam * f * t).sum(0) / (lam * f).sum(0)).to(thetas.dtype)


def gram_update(gram: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor:
    """``gram + X^T X`` for a batch of a linear layer's inputs ``X`` (``(..., in)``), accumulated in float64."""
    x = inputs.reshape(-1, inputs.shape[-1]).double()
    update = x.T @ x
    return update if gram is None else gram.add_(update)


def regmean_merge(weights: Sequence[torch.Tensor], grams: Sequence[torch.Tensor], *, alpha: float = REGMEAN_ALPHA,
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
        total = total + ridge * torch.eye(total.shape[0], dtype=total.dtype, device=total.device)
    rhs = sum(w.double() @ g for w, g in zip(weights, scaled))
    # W (sum G) = rhs  <=>  (sum G)^T W^T = rhs^T; the Grams are symmetric
    solved, info = torch.linalg.solve_ex(total, rhs.T)
    if int(info) != 0 or not bool(torch.isfinite(solved).all()):
        raise ValueError("the summed Gram matrix is singular (an input that is always 0): give ridge > 0")
    return solved.T.to(weights[0].dtype)


# -- registry entries ------------------------------------------------------------------------------------------
FISHER_WEIGHT = ParamSpec("weight", per_model=True, default=1.0, low=0.0, high=10.0, search_low=0.0,
                          search_high=1.0, doc="lambda_i: how much parent i's posterior counts")
FISHER_FLOOR_PARAM = ParamSpec("floor", default=FISHER_FLOOR, low=0.0, high=1.0,
                               doc="eps added to every Fisher (FusionBench's minimal_fisher_weight)")
FISHER_NORMALIZE = ParamSpec("normalize", kind="bool", default=True,
                             doc="scale each parent by 1/|F_i| (FusionBench's normalize_fisher_weight)")
REGMEAN_ALPHA_PARAM = ParamSpec("alpha", default=REGMEAN_ALPHA, low=0.0, high=1.0, search_low=0.0, search_high=1.0,
                                doc="off-diagonal scaling of each Gram (FusionBench's reduce_non_diagonal_ratio)")
REGMEAN_RIDGE = ParamSpec("ridge", default=0.0, low=0.0, high=1.0, doc="ridge * I added to the summed Grams")


def _thetas(base: torch.Tensor, deltas: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The parents' own tensors ``base + delta_i`` for the rows merged."""
    return base.unsqueeze(0) + deltas[rows]


def _statistic(params: TensorParams, kind: str, method: str) -> torch.Tensor:
    value = params.statistics.get(kind)
    if value is None:
        raise ValueError(f"'{method}' needs the parents' {kind} statistics over calibration data, and this tensor "
                         "has none (a run with a calibration source computes them; a recipe cannot give them)")
    return value


def fisher_tensor(base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None,
                  out: torch.Tensor | None) -> torch.Tensor:
    """One tensor of a Fisher merge: ``sum_i w_i (F_i + eps) theta_i / sum_i w_i (F_i + eps)``, ``theta_i =
    base + delta_i``, ``w_i = lambda_i`` (times FusionBench's ``1/|F_i|`` normalisation when ``normalize``)."""
    k = deltas.shape[0]
    rows = model_rows(params, k)
    fishers = _statistic(params, "fisher", "fisher")[rows].to(base.device)
    lam = model_values(params, FISHER_WEIGHT, k)
    norms = params.statistics.get("fisher_norm") if bool(global_value(params, FISHER_NORMALIZE)) else None
    return fisher_merge(_thetas(base, deltas, rows), fishers, [lam[i] for i in rows],
                        floor=float(global_value(params, FISHER_FLOOR_PARAM)),
                        norms=None if norms is None else norms[rows])


def regmean_tensor(base: torch.Tensor, deltas: torch.Tensor, params: TensorParams, seed: int | None,
                   out: torch.Tensor | None) -> torch.Tensor:
    """One tensor of a RegMean merge: for a linear layer's weight ``(sum_i W_i G~_i)(sum_i G~_i + ridge I)^-1``
    with ``G~_i = alpha G_i + (1 - alpha) diag(G_i)``, ``W_i = base + delta_i``; any other tensor the plain mean."""
    rows = model_rows(params, deltas.shape[0])
    thetas = _thetas(base, deltas, rows)
    grams = params.statistics.get("gram")
    if grams is None:  # not the weight of a linear layer: the plain mean, as the paper does
        return thetas.mean(0)
    return regmean_merge(list(thetas), list(grams[rows].to(base.device)),
                         alpha=float(global_value(params, REGMEAN_ALPHA_PARAM)),
                         ridge=float(global_value(params, REGMEAN_RIDGE)))


FISHER = MergeMethod(
    name="fisher", fn=fisher_tensor, params=(FISHER_WEIGHT, FISHER_FLOOR_PARAM, FISHER_NORMALIZE), needs_base=True,
    doc="Fisher merging: per parameter, the parents' average weighted by their diagonal Fisher over the space's "
        "calibration data, https://arxiv.org/abs/2111.09832",
    statistics="fisher",
)
REGMEAN = MergeMethod(
    name="regmean", fn=regmean_tensor, params=(REGMEAN_ALPHA_PARAM, REGMEAN_RIDGE), needs_base=True,
    doc="RegMean: per linear layer, the least-squares merge of the parents' outputs on their inputs over the "
        "space's calibration data (Gram matrices, off-diagonals scaled by alpha); other tensors the mean, "
        "https://arxiv.org/abs/2212.09849",
    statistics="gram",
)
