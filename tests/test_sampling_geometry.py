"""Fast factored distances and clustering updates against brute-force per-example gradients."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from commcomp.sampling import GradientCenters, GradientClustering, PerExampleGradients
from commcomp.sampling.factors import truncate_rank

torch.set_num_threads(1)
LOSS = nn.CrossEntropyLoss(reduction="none")


def brute_per_example(model, x, y):
    """(B, D) per-example gradients of every trainable parameter, named_parameters() order."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    def loss(p, xi, yi):
        return LOSS(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0)).sum()

    g = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g[n].reshape(x.shape[0], -1) for n in params], 1)


def dense_centers(model, capture, centers):
    """Materialize centres as (K, D) vectors in named_parameters() order."""
    blocks = dict(zip(capture.factored_names, centers.factors))
    dense_offsets, off = {}, 0
    for name, p in model.named_parameters():
        if name in capture.dense_names:
            dense_offsets[name] = (off, p.numel())
            off += p.numel()
    rows = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in blocks:
            U, V = blocks[name]
            rows.append(torch.einsum("kro,kri->koi", U, V).reshape(U.shape[0], -1))
        else:
            o, n = dense_offsets[name]
            rows.append(centers.dense[:, o : o + n])
    return torch.cat(rows, 1)


def random_centers(capture, K, rank, dtype=torch.float64):
    factors = [(torch.randn(K, rank, dout, dtype=dtype), torch.randn(K, rank, din, dtype=dtype)) for dout, din in capture.factored_shapes]
    return GradientCenters(factors, torch.randn(K, capture.dense_size, dtype=dtype))


class Shared(nn.Module):
    """A Linear applied twice (positions concatenate) followed by in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu_(self.fc(x))
        return self.out(self.fc(h))


def mlp():
    return nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3))


def cnn():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(4, 3, 2, stride=2, dilation=1, bias=False), nn.Tanh(),
        nn.Flatten(), nn.Linear(3 * 3 * 3, 3),
    )


def seq_model():
    # Linear on (B, L, d) inputs: per-example gradient sums over L positions; LayerNorm -> torch.func.
    return nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Flatten(), nn.Linear(15, 3))


CASES = {
    "mlp": (mlp, (9, 7)),
    "cnn": (cnn, (6, 2, 6, 6)),
    "shared": (Shared, (8, 6)),
    "sequence+layernorm": (seq_model, (7, 3, 4)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["factored", "dense"])
@pytest.mark.parametrize("rank", [1, 2])
def test_fast_distances_equal_brute_force(case, method, rank):
    make, shape = CASES[case]
    model = make().double()
    x = torch.randn(*shape, dtype=torch.float64)
    y = torch.randint(0, 3, (shape[0],))
    capture = PerExampleGradients(model, LOSS)
    batch = capture(x, y)
    centers = random_centers(capture, K=5, rank=rank)
    fast = centers.sq_distances(batch, method)
    g = brute_per_example(model, x, y)
    C = dense_centers(model, capture, centers)
    brute = torch.cdist(g, C).square()
    torch.testing.assert_close(fast, brute, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batch.sq_norms(method), g.square().sum(1), rtol=1e-10, atol=1e-12)


def test_conv_layer_is_factored_not_materialized():
    capture = PerExampleGradients(cnn(), LOSS)
    assert capture.factored_names == ["0.weight", "2.weight", "5.weight"]
    assert capture.dense_names == ["0.bias", "5.bias"]  # 2.weight has no bias
    assert capture.factored_shapes == [(4, 2 * 9), (3, 4 * 4), (3, 27)]


def test_capture_leaves_grad_untouched():
    model = cnn()
    PerExampleGradients(model, LOSS)(torch.randn(3, 2, 6, 6), torch.tensor([0, 1, 2]))
    assert all(p.grad is None for p in model.parameters())


def test_rejects_batch_loss():
    capture = PerExampleGradients(mlp(), nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="one loss per example"):
        capture(torch.randn(4, 7), torch.tensor([0, 1, 2, 0]))


def test_truncate_rank_is_best_approximation():
    M = torch.randn(3, 5, 4, dtype=torch.float64)
    U, V = truncate_rank(M, 4)
    torch.testing.assert_close(torch.einsum("kro,kri->koi", U, V), M)
    U1, V1 = truncate_rank(M, 1)
    err = (torch.einsum("kro,kri->koi", U1, V1) - M).square().sum((1, 2))
    s = torch.linalg.svdvals(M)
    torch.testing.assert_close(err, s[:, 1:].square().sum(1))


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_pass_assigns_by_weighted_argmin_and_centres_are_cluster_means(case):
    make, shape = CASES[case]
    model = make().double()
    N = 40
    x = torch.randn(N, *shape[1:], dtype=torch.float64)
    y = torch.randint(0, 3, (N,))
    full_rank = 16  # >= every layer's min(dout, din): centres are exact means
    gc = GradientClustering(num_clusters=4, rank=full_rank, seed=1)
    gc.fit_pass(model, LOSS, x, y, batch_size=16)
    capture = PerExampleGradients(model, LOSS)
    g = brute_per_example(model, x, y)
    for _ in range(2):
        old_centers = dense_centers(model, capture, gc.centers)
        sizes = gc.sizes.clone().double()
        current = gc.assignments.clone()
        stats = gc.fit_pass(model, LOSS, x, y, batch_size=16)
        if stats.splits == 0:
            # Reference rule: cost (N_k + 1) d to join k, N_k d to stay; sizes follow each chunk.
            d = torch.cdist(g, old_centers).square()
            expected = torch.empty(N, dtype=torch.long)
            for chunk in torch.arange(N).split(gc.size_update_every):
                w = (sizes + 1).repeat(len(chunk), 1)
                w[torch.arange(len(chunk)), current[chunk]] = sizes[current[chunk]].clamp_min(1)
                expected[chunk] = (w * d[chunk]).argmin(1)
                sizes -= torch.bincount(current[chunk], minlength=4).double()
                sizes += torch.bincount(expected[chunk], minlength=4).double()
                sizes.clamp_min_(0)
            assert torch.equal(gc.assignments, expected)
        C = dense_centers(model, capture, gc.centers)
        for k in range(4):
            members = gc.assignments == k
            assert int(members.sum()) == stats.sizes[k]
            if members.any():
                torch.testing.assert_close(C[k], g[members].mean(0))


def test_collapsed_clusters_are_split_with_exact_means():
    # Only two distinct examples: a plain pass can fill at most two of six clusters.
    model = mlp().double()
    base_x = torch.randn(2, 7, dtype=torch.float64)
    x = base_x[torch.arange(48) % 2]
    y = torch.tensor([0, 2])[torch.arange(48) % 2]
    gc = GradientClustering(num_clusters=6, rank=8, min_cluster_size=1, seed=0)
    stats = gc.fit_pass(model, LOSS, x, y, batch_size=10)
    # Identical gradients share an argmin, so two clusters fill; each donor splits once per pass.
    assert stats.splits == 2
    assert sorted(stats.sizes) == [0, 0, 12, 12, 12, 12]
    assert torch.equal(gc.sizes, torch.bincount(gc.assignments, minlength=6).float())
    g = brute_per_example(model, x, y)
    C = dense_centers(model, PerExampleGradients(model, LOSS), gc.centers)
    for k in range(6):
        if gc.sizes[k] > 0:
            torch.testing.assert_close(C[k], g[gc.assignments == k].mean(0))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_clusters"):
        GradientClustering(num_clusters=0)
    with pytest.raises(ValueError, match="rank"):
        GradientClustering(num_clusters=2, rank=0)
    gc = GradientClustering(num_clusters=10)
    with pytest.raises(ValueError, match="at least num_clusters"):
        gc.fit_pass(mlp(), LOSS, torch.randn(5, 7), torch.zeros(5, dtype=torch.long))
