"""GradientClusterSampler: unbiased weighted estimates; distributed shares are disjoint and cover."""
import pytest
import torch

from _dist import run_ranks
from commcomp.sampling import DistributedGradientClusterSampler, GradientClusterSampler

torch.set_num_threads(1)


def clustered_problem(seed=0):
    """Per-example 'gradients' (N, D) and unequal clusters whose means differ."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [3, 5, 8, 13, 21, 40]
    assign = torch.cat([torch.full((n,), k) for k, n in enumerate(sizes)])
    centres = 3 * torch.randn(len(sizes), 4, generator=gen)
    g = centres[assign] + torch.randn(len(assign), 4, generator=gen)
    perm = torch.randperm(len(assign), generator=gen)  # clusters need not be contiguous
    return g[perm].double(), assign[perm]


def test_weights_hand_checked():
    s = GradientClusterSampler(torch.tensor([0, 0, 0, 1, 3]))  # cluster 2 empty: K' = 3
    assert s.round_size == 3
    torch.testing.assert_close(s.weights(torch.arange(5)), torch.tensor([1.8, 1.8, 1.8, 0.6, 0.6]))
    # A round's weighted mean of a constant gradient is that constant: weights average to 1.
    idx = s.sample_rounds(1)
    assert sorted(s.assignments[idx].tolist()) == [0, 1, 3]


def test_iteration_draws_one_per_cluster_per_round():
    g, assign = clustered_problem()
    s = GradientClusterSampler(assign, num_rounds=50, seed=3)
    idx = torch.tensor(list(s))
    assert len(idx) == len(s) == 50 * 6
    for r in idx.view(50, 6):
        assert sorted(assign[r].tolist()) == list(range(6))
    # Each cluster of size n is cycled: in 50 rounds a cluster of 40 repeats no member.
    big = idx[assign[idx] == 5]
    assert len(big.unique()) == 40


def estimate_bias_z(g, draws, weights_of):
    """Average the weighted estimate over draws; return max |z| of (average - full mean)."""
    est = torch.stack([(weights_of(i)[:, None] * g[i]).mean(0) for i in draws])
    full = g.mean(0)
    se = est.std(0) / len(draws) ** 0.5
    return ((est.mean(0) - full) / se).abs().max().item()


@pytest.mark.parametrize("how", ["sample_rounds", "iterate"])
def test_weighted_estimate_is_unbiased(how):
    g, assign = clustered_problem()
    s = GradientClusterSampler(assign, num_rounds=4000, seed=1)
    gen = torch.Generator().manual_seed(2)
    if how == "sample_rounds":
        draws = [s.sample_rounds(2, gen) for _ in range(3000)]
    else:
        draws = list(torch.tensor(list(s)).view(-1, 2 * s.round_size))
    z = estimate_bias_z(g, draws, lambda i: s.weights(i).double())
    assert z < 4.5  # 4 coordinates; |z| > 4.5 has probability ~3e-5 under no bias
    # The same test catches the bias of the unweighted stratified mean.
    assert estimate_bias_z(g, draws, lambda i: torch.ones(len(i), dtype=torch.float64)) > 10


def test_distributed_weights_unbiased_over_ranks():
    g, assign = clustered_problem()
    W = 4  # 6 clusters dealt to 4 ranks: round sizes 2, 2, 1, 1
    samplers = [GradientClusterSampler(assign, seed=5, num_replicas=W, rank=r) for r in range(W)]
    assert [s.round_size for s in samplers] == [2, 2, 1, 1]
    gen = torch.Generator().manual_seed(0)
    est = []
    for _ in range(3000):
        # DDP averages the ranks' weighted-mean gradients.
        per_rank = [(s.weights(i).double()[:, None] * g[i]).mean(0) for s in samplers for i in [s.sample_rounds(1, gen)]]
        est.append(torch.stack(per_rank).mean(0))
    est = torch.stack(est)
    z = ((est.mean(0) - g.mean(0)) / (est.std(0) / len(est) ** 0.5)).abs().max().item()
    assert z < 4.5


def _shares(rank, world_size, assign):
    s = DistributedGradientClusterSampler(assign, num_rounds=int(torch.bincount(assign).max()), seed=11)
    s.set_epoch(1)
    return s.share.tolist(), list(s), s.round_size


@pytest.mark.parametrize("world_size", [2])
def test_distributed_variant_covers_dataset_without_overlap(world_size):
    _, assign = clustered_problem()
    out = run_ranks(_shares, world_size, assign)
    shares = [set(share) for share, _, _ in out]
    assert sum(len(s) for s in shares) == len(assign)
    assert set().union(*shares) == set(range(len(assign)))
    for share, drawn, round_size in out:
        assert set(drawn) <= set(share)
        assert set(drawn) == set(share)  # max-cluster-size rounds visit every member
        assert round_size == 6 // world_size


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_replicas"):
        GradientClusterSampler(torch.tensor([0, 1]), num_replicas=0)
    with pytest.raises(ValueError, match="rank"):
        GradientClusterSampler(torch.tensor([0, 1]), num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="fewer than num_replicas"):
        GradientClusterSampler(torch.tensor([0, 0, 0]), num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="cluster ids"):
        GradientClusterSampler(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="process group"):
        DistributedGradientClusterSampler(torch.tensor([0, 1]))
