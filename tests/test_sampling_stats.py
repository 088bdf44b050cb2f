"""Gradient variance statistics; distributed clustering matches single-process clustering."""
import numpy as np
import pytest
import torch
from torch import nn

from _dist import run_ranks
from commcomp.sampling import GradientClustering, GradientClusterSampler, estimate_gradient_variance, variance_statistics

torch.set_num_threads(1)
LOSS = nn.CrossEntropyLoss(reduction="none")


def test_statistics_hand_checked():
    v = variance_statistics(torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]]))
    # coordinate 0: var 2, E[g^2] 5; coordinate 1: all zero -> 0; coordinate 2: constant -> 0
    assert v.variance == pytest.approx(2 / 3)
    assert v.normalized_variance == pytest.approx(0.4 / 3)
    assert v.mean_sq_norm == pytest.approx(4 + 4)


def test_statistics_match_numpy():
    g = np.random.default_rng(0).normal(1.0, 2.0, size=(30, 50))
    v = variance_statistics(torch.from_numpy(g))
    var = g.var(0, ddof=1)
    assert v.variance == pytest.approx(var.mean(), rel=1e-12)
    assert v.normalized_variance == pytest.approx((var / (g**2).mean(0)).mean(), rel=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        variance_statistics(torch.ones(1, 3))


def _problem(N=120):
    torch.manual_seed(0)
    # Three well separated blobs, labels by blob: per-example gradients cluster strongly.
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    y = torch.arange(N) % 3
    x = centres[y] + 0.3 * torch.randn(N, 4)
    y = torch.where(torch.rand(N) < 0.2, (y + 1) % 3, y)  # label noise: large, rarer gradients
    model = nn.Linear(4, 3).double()
    return model, x.double(), y


def per_example_grads(model, x, y):
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        LOSS(model(x[i : i + 1]), y[i : i + 1]).sum().backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(rows)


def test_sgd_variance_matches_theory():
    model, x, y = _problem()
    g = per_example_grads(model, x, y)
    b, N = 8, len(x)
    gen = torch.Generator().manual_seed(0)

    def draw():  # with replacement: Var[mean of b] = Var[g_i] / b exactly
        idx = torch.randint(N, (b,), generator=gen)
        return x[idx], y[idx], None

    v = estimate_gradient_variance(model, LOSS, draw, num_samples=600)
    theory = (g.var(0, unbiased=False) / b).mean().item()
    assert v.variance == pytest.approx(theory, rel=0.15)  # S=600: relative s.e. ~ 6%


def test_gradient_clustering_lowers_variance_on_clustered_data():
    model, x, y = _problem()
    gc = GradientClustering(num_clusters=6, seed=0)
    for _ in range(4):
        gc.fit_pass(model, LOSS, x, y)
    sampler = GradientClusterSampler(gc.assignments)
    gen = torch.Generator().manual_seed(1)

    def gc_draw():
        idx = sampler.sample_rounds(1, gen)
        return x[idx], y[idx], sampler.weights(idx)

    def sgd_draw():
        idx = torch.randperm(len(x), generator=gen)[: sampler.round_size]
        return x[idx], y[idx], None

    v_gc = estimate_gradient_variance(model, LOSS, gc_draw, num_samples=300)
    v_sgd = estimate_gradient_variance(model, LOSS, sgd_draw, num_samples=300)
    assert v_gc.variance < 0.7 * v_sgd.variance
    # And the estimate is unbiased: its mean approaches the full gradient.
    g = per_example_grads(model, x, y)
    full = g.mean(0)
    est = torch.stack([(sampler.weights(i).double()[:, None] * g[i]).mean(0) for i in [sampler.sample_rounds(1, gen) for _ in range(2000)]])
    z = ((est.mean(0) - full) / (est.std(0) / len(est) ** 0.5)).abs().max().item()
    assert z < 4.5


def _conv_model():
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)).double()


def _distributed_pass(rank, world_size, x, y, state):
    model = _conv_model()
    model.load_state_dict(state)
    gc = GradientClustering(num_clusters=5, rank=3, seed=4)  # rank 3 = full rank: centres are means
    for _ in range(3):
        gc.fit_pass(model, LOSS, x, y, batch_size=7, indices=torch.arange(rank, len(x), world_size))
    products = [torch.einsum("kro,kri->koi", u, v).reshape(5, -1) for u, v in gc.centers.factors]
    # Plain lists/arrays: tensors cannot outlive the rank process through the result queue.
    return gc.assignments.tolist(), torch.cat([products[0], gc.centers.dense[:, :3], products[1], gc.centers.dense[:, 3:]], 1).numpy()


def test_distributed_clustering_agrees_across_ranks_and_centres_are_means():
    torch.manual_seed(0)
    model = _conv_model()
    x = torch.randn(30, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    (a0, c0), (a1, c1) = run_ranks(_distributed_pass, 2, x, y, model.state_dict())
    assert a0 == a1
    np.testing.assert_allclose(c0, c1, rtol=1e-12, atol=1e-14)
    g = per_example_grads(model, x, y)  # conv weight, conv bias, linear weight, linear bias
    assign = torch.tensor(a0)
    for k in assign.unique().tolist():
        np.testing.assert_allclose(c0[k], g[assign == k].mean(0).numpy(), rtol=1e-8, atol=1e-12)
