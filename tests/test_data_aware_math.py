"""The closed forms of Fisher merging and RegMean against the papers' definitions (statistics given)."""

from __future__ import annotations

import pytest
import torch

from search.methods.data_aware import fisher_merge, gram_update, regmean_merge

pytestmark = pytest.mark.usefixtures("single_thread")


def test_fisher_merge_with_equal_fishers_is_the_weighted_mean() -> None:
    g = torch.Generator().manual_seed(0)
    thetas = torch.randn(3, 4, 5, generator=g)
    fishers = torch.ones_like(thetas) * 0.7
    merged = fisher_merge(thetas, fishers, [1.0, 2.0, 1.0])
    assert torch.allclose(merged, (thetas[0] + 2 * thetas[1] + thetas[2]) / 4, atol=1e-6)


def test_fisher_merge_follows_the_confident_parent_and_the_floor_gives_the_mean_where_none_is() -> None:
    thetas = torch.tensor([[1.0, 5.0, 2.0], [3.0, -1.0, 4.0]], dtype=torch.float64)
    fishers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    merged = fisher_merge(thetas, fishers, floor=1e-6)
    # (F + eps)-weighted: the confident parent within ~eps, the plain mean where no parent has any Fisher
    assert torch.allclose(merged, torch.tensor([1.0, -1.0, 3.0], dtype=torch.float64), atol=1e-5)
    assert merged[2].item() == 3.0
    with pytest.raises(ValueError, match="negative"):
        fisher_merge(thetas, -fishers)
    with pytest.raises(ValueError, match="positive sum"):
        fisher_merge(thetas, fishers, [0.0, 0.0])


def test_fisher_normalisation_divides_each_parent_by_its_whole_fisher_norm() -> None:
    """FusionBench's normalize_fisher_weight: w_i = lambda_i (1/(|F_i|+eps)) / sum_j (1/(|F_j|+eps))."""
    g = torch.Generator().manual_seed(7)
    thetas = torch.randn(2, 5, generator=g, dtype=torch.float64)
    fishers = torch.rand(2, 5, generator=g, dtype=torch.float64) * torch.tensor([[1.0], [100.0]], dtype=torch.float64)
    norms = torch.linalg.vector_norm(fishers, dim=1)
    merged = fisher_merge(thetas, fishers, [1.0, 1.0], floor=0.0, norms=norms)
    # the same as scaling each Fisher to unit norm (the larger parent no longer dominates)
    unit = fishers / norms.view(2, 1)
    assert torch.allclose(merged, (unit * thetas).sum(0) / unit.sum(0), atol=1e-12)
    assert (merged - fisher_merge(thetas, fishers, floor=0.0)).abs().max() > 1e-3


def test_fisher_merge_is_the_maximiser_of_the_summed_laplace_posteriors() -> None:
    """sum_i lambda_i sum_p F_ip (theta_p - theta_ip)^2 is minimal at the merge: its gradient vanishes there."""
    g = torch.Generator().manual_seed(1)
    thetas, fishers = torch.randn(2, 6, generator=g, dtype=torch.float64), torch.rand(2, 6, generator=g,
                                                                                       dtype=torch.float64)
    merged = fisher_merge(thetas, fishers, [0.3, 0.7], floor=0.0).requires_grad_(True)
    lam = torch.tensor([0.3, 0.7], dtype=torch.float64).view(2, 1)
    loss = (lam * fishers * (merged - thetas) ** 2).sum()
    loss.backward()
    assert merged.grad.abs().max().item() < 1e-12


def test_gram_update_accumulates_x_transpose_x() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 7, 4, generator=g), torch.randn(5, 4, generator=g)
    gram = gram_update(gram_update(None, a), b)
    x = torch.cat([a.reshape(-1, 4), b]).double()
    assert torch.allclose(gram, x.T @ x)


def test_regmean_with_alpha_one_is_the_least_squares_merge() -> None:
    """argmin_W sum_i |X_i W^T - X_i W_i^T|^2, solved independently with lstsq on the stacked inputs."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(40, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    ws = [torch.randn(5, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    merged = regmean_merge(ws, [x.T @ x for x in xs], alpha=1.0)
    stacked_x = torch.cat(xs)
    targets = torch.cat([x @ w.T for x, w in zip(xs, ws)])
    expected = torch.linalg.lstsq(stacked_x, targets).solution.T
    assert torch.allclose(merged, expected, atol=1e-10)
    # and it is not the plain mean (the test could fail)
    assert (merged - sum(ws) / 3).abs().max() > 1e-2


def test_regmean_with_alpha_zero_weighs_each_input_column_by_its_energy() -> None:
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(30, 4, generator=g, dtype=torch.float64) * s for s in (1.0, 3.0)]
    ws = [torch.randn(2, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    grams = [x.T @ x for x in xs]
    merged = regmean_merge(ws, grams, alpha=0.0)
    d = [torch.diagonal(gr) for gr in grams]
    assert torch.allclose(merged, (ws[0] * d[0] + ws[1] * d[1]) / (d[0] + d[1]), atol=1e-10)


def test_regmean_of_identical_grams_is_the_mean_and_a_dead_input_needs_a_ridge() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    ws = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    gram = x.T @ x
    assert torch.allclose(regmean_merge(ws, [gram, gram], alpha=0.5), (ws[0] + ws[1]) / 2, atol=1e-10)
    dead = x.clone()
    dead[:, 1] = 0
    with pytest.raises(ValueError, match="ridge"):
        regmean_merge(ws, [dead.T @ dead] * 2, alpha=1.0)
    assert torch.isfinite(regmean_merge(ws, [dead.T @ dead] * 2, alpha=1.0, ridge=1e-6)).all()
