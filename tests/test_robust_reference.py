"""Every rule and attack against a small reference written from its paper's definition.

The references are deliberately naive (Python loops, float64, d x d covariances, exhaustive
subsets) and share no code with commcomp.robust.
"""
import itertools
import math

import pytest
import torch

from commcomp.robust import (
    ALIE,
    ARC,
    CAF,
    IPM,
    MDA,
    SMEA,
    Bucketing,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MeanAroundMedian,
    Mimic,
    MoNNA,
    NearestNeighborMixing,
    OptimalALIE,
    OptimalIPM,
    SignFlip,
    StaticClipping,
    TrimmedMean,
)
from commcomp.robust.attacks import line_maximize

torch.set_num_threads(1)


def rows(seed, n=9, d=4, outliers=2):
    """Gaussian rows, the last ``outliers`` of them far away."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x[n - outliers :] = x[n - outliers :] * 5 + 8
    return x


def l2(a, b):
    return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))


def mean_of(vectors):
    return [sum(c) / len(vectors) for c in zip(*vectors)]


def median_of(values):
    v = sorted(values)
    m = len(v)
    return v[m // 2] if m % 2 else (v[m // 2 - 1] + v[m // 2]) / 2


# ---------------------------------------------------------------- references


def ref_trimmed_mean(x, b):
    return [sum(sorted(c)[b : len(c) - b]) / (len(c) - 2 * b) for c in zip(*x)]


def ref_meamed(x, f):
    out = []
    for c in zip(*x):
        med = median_of(c)
        keep = sorted(c, key=lambda v: (abs(v - med)))[: len(c) - 2 * f]
        out.append(sum(keep) / len(keep))
    return out


def ref_multi_krum(x, f, m):
    n = len(x)
    scores = [sum(sorted(l2(x[i], x[j]) ** 2 for j in range(n) if j != i)[: n - f - 2]) for i in range(n)]
    best = sorted(range(n), key=lambda i: (scores[i], i))[:m]
    return mean_of([x[i] for i in best])


def ref_centered_clipping(x, tau, iters):
    v = [median_of(c) for c in zip(*x)]
    for _ in range(iters):
        steps = []
        for row in x:
            diff = [a - b for a, b in zip(row, v)]
            norm = math.sqrt(sum(t * t for t in diff))
            scale = min(1.0, tau / norm) if norm > 0 else 1.0
            steps.append([t * scale for t in diff])
        v = [a + b for a, b in zip(v, mean_of(steps))]
    return v


def ref_nnm(x, f):
    mixed = []
    for row in x:
        order = sorted(range(len(x)), key=lambda j: (l2(row, x[j]), j))
        mixed.append(mean_of([x[j] for j in order[: len(x) - f]]))
    return mixed


def ref_mda(x, f):
    best, best_d = None, math.inf
    for s in itertools.combinations(range(len(x)), len(x) - f):
        diameter = max(l2(x[i], x[j]) for i in s for j in s)
        if diameter < best_d:
            best, best_d = s, diameter
    return mean_of([x[i] for i in best])


def ref_smea(x, f):
    t = torch.tensor(x, dtype=torch.float64)
    best, best_l = None, math.inf
    for s in itertools.combinations(range(len(x)), len(x) - f):
        sub = t[list(s)]
        cov = (sub - sub.mean(0)).T @ (sub - sub.mean(0)) / len(s)  # d x d
        lam = float(torch.linalg.eigvalsh(cov)[-1])
        if lam < best_l:
            best, best_l = s, lam
    return mean_of([x[i] for i in best])


def ref_monna(x, f, pivot):
    order = sorted(range(len(x)), key=lambda j: (l2(x[pivot], x[j]), j))
    return mean_of([x[j] for j in order[: len(x) - f]])


def ref_caf(x, f):
    t = torch.tensor(x, dtype=torch.float64)
    n = len(x)
    c = torch.ones(n, dtype=torch.float64)
    best_mu, best_lam = None, math.inf
    while c.sum() > n - 2 * f:
        mu = (c[:, None] * t).sum(0) / c.sum()
        cov = sum(c[i] * torch.outer(t[i] - mu, t[i] - mu) for i in range(n)) / c.sum()  # d x d
        evals, evecs = torch.linalg.eigh(cov)
        lam, v = float(evals[-1]), evecs[:, -1]
        if lam < best_lam:
            best_mu, best_lam = mu, lam
        tau = torch.tensor([float((t[i] - mu) @ v) ** 2 for i in range(n)], dtype=torch.float64)
        top = max(float(tau[i]) for i in range(n) if c[i] > 0)
        c = torch.clamp(c * (1 - tau / top), min=0)
    return best_mu.tolist()


def ref_clip(x, c):
    out = []
    for row in x:
        norm = math.sqrt(sum(v * v for v in row))
        out.append([v * min(1.0, c / norm) for v in row])
    return out


def ref_arc(x, f):
    n = len(x)
    k = math.floor(2 * (f / n) * (n - f))
    norms = sorted((math.sqrt(sum(v * v for v in row)) for row in x), reverse=True)
    return ref_clip(x, norms[k]) if k > 0 else [list(r) for r in x]


def ref_median(x):
    return [median_of(c) for c in zip(*x)]


# ---------------------------------------------------------------- rules


def close(got, want):
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_coordinatewise_rules(seed):
    x = rows(seed)
    close(Mean()(x, 2), mean_of(x.tolist()))
    close(CoordinateMedian()(x, 2), ref_median(x.tolist()))
    close(TrimmedMean()(x, 2), ref_trimmed_mean(x.tolist(), 2))
    close(TrimmedMean(b=3)(x, 1), ref_trimmed_mean(x.tolist(), 3))
    close(MeanAroundMedian()(x, 2), ref_meamed(x.tolist(), 2))


@pytest.mark.parametrize("seed", range(4))
def test_krum_multi_krum_and_clipping_rules(seed):
    x = rows(seed)
    close(Krum()(x, 2), ref_multi_krum(x.tolist(), 2, 1))
    close(Krum(m=5)(x, 2), ref_multi_krum(x.tolist(), 2, 5))  # Blanchard et al.'s Multi-Krum
    close(CenteredClipping(tau=0.7, iters=4)(x, 2), ref_centered_clipping(x.tolist(), 0.7, 4))


@pytest.mark.parametrize("seed", range(4))
def test_subset_rules_mda_and_smea(seed):
    x = rows(seed, n=8, d=3)
    close(MDA()(x, 2), ref_mda(x.tolist(), 2))
    close(SMEA()(x, 2), ref_smea(x.tolist(), 2))
    # the far rows are never in the chosen subset
    assert torch.linalg.vector_norm(MDA()(x, 2) - x[:6].mean(0)) < 1e-9
    # without outliers the two criteria choose different subsets: both still match
    y = rows(seed, n=8, d=3, outliers=0)
    close(MDA()(y, 2), ref_mda(y.tolist(), 2))
    close(SMEA()(y, 2), ref_smea(y.tolist(), 2))
    if seed == 2:  # (checked: seed 2 is such a case)
        assert not torch.allclose(MDA()(y, 2), SMEA()(y, 2))


@pytest.mark.parametrize("seed", range(4))
def test_monna_and_caf(seed):
    x = rows(seed)
    close(MoNNA()(x, 2), ref_monna(x.tolist(), 2, 0))
    close(MoNNA(pivot=3)(x, 2), ref_monna(x.tolist(), 2, 3))
    close(CAF()(x, 2), ref_caf(x.tolist(), 2))
    close(CAF()(x, 0), mean_of(x.tolist()))


@pytest.mark.parametrize("seed", range(4))
def test_preaggregation(seed):
    x = rows(seed)
    close(NearestNeighborMixing(Mean())(x, 2), mean_of(ref_nnm(x.tolist(), 2)))
    close(NearestNeighborMixing(CoordinateMedian())(x, 2), ref_median(ref_nnm(x.tolist(), 2)))
    close(StaticClipping(Mean(), threshold=1.5)(x, 2), mean_of(ref_clip(x.tolist(), 1.5)))
    close(ARC(Mean())(x, 2), mean_of(ref_arc(x.tolist(), 2)))
    close(ARC(CoordinateMedian())(x, 3), ref_median(ref_arc(x.tolist(), 3)))
    close(ARC(Mean())(x, 0), mean_of(x.tolist()))  # k = 0: nothing clipped
    # bucketing: the same permutation, bucket means, then the inner rule
    b = Bucketing(CoordinateMedian(), bucket_size=2, seed=seed)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed)).tolist()
    shuffled = [x.tolist()[i] for i in perm]
    means = [mean_of(shuffled[i : i + 2]) for i in range(0, 9, 2)]
    close(b(x, 1), ref_median(means))


def test_arc_clips_exactly_k_rows():
    # n = 10, f = 2: k = floor(2 * 0.2 * 8) = 3 rows clipped to the 4th largest norm (7)
    x = torch.diag(torch.tensor([10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))
    out = ARC(Mean())(x, 2) * 10  # the sum of the clipped rows
    assert out.tolist() == [7.0, 7.0, 7.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]


def test_geometric_median_is_the_minimizer():
    for seed in range(3):
        x = rows(seed)
        z = GeometricMedian()(x, 2)
        objective = lambda y: float(torch.linalg.vector_norm(x - y, dim=1).sum())  # noqa: E731
        grad = ((x - z) / torch.linalg.vector_norm(x - z, dim=1, keepdim=True)).sum(0)
        assert torch.linalg.vector_norm(grad) < 1e-4  # first-order optimality (z is no data point)
        for _ in range(20):
            assert objective(z) <= objective(z + 1e-4 * torch.randn(4, dtype=torch.float64))


def test_bulyan_with_other_final_rules():
    x = rows(5, n=11, d=3)
    chosen = Krum().select(x, 2, 7)
    close(Bulyan(final=CoordinateMedian())(x, 2), ref_median(x[chosen].tolist()))
    close(Bulyan(final=TrimmedMean())(x, 2), ref_trimmed_mean(x[chosen].tolist(), 2))


# ---------------------------------------------------------------- attacks


def test_fixed_attacks_match_their_definitions():
    h = rows(7, n=6, outliers=0)
    mu = mean_of(h.tolist())
    sd = [math.sqrt(sum((v - m) ** 2 for v in c) / (len(c) - 1)) for c, m in zip(zip(*h.tolist()), mu)]
    close(IPM(0.3)(h, 2), [[-0.3 * m for m in mu]] * 2)  # Xie et al.: -eps * honest mean
    close(ALIE(1.5)(h, 2), [[m - 1.5 * s for m, s in zip(mu, sd)]] * 2)  # Baruch et al.
    close(SignFlip()(h, 2), [[-m for m in mu]] * 2)
    close(Mimic(target=4)(h, 3), [h[4].tolist()] * 3)


def dense_grid_max(objective, low=1e-2, high=1e2, count=400):
    grid = [0.0] + [low * (high / low) ** (i / (count - 1)) for i in range(count)]
    return max(objective(t) for t in grid)


@pytest.mark.parametrize("rule", [Mean(), CoordinateMedian(), TrimmedMean(), Krum(), GeometricMedian(), MDA()], ids=str)
@pytest.mark.parametrize("attack_cls", [OptimalIPM, OptimalALIE])
def test_optimal_attacks_come_close_to_a_dense_grid_search(rule, attack_cls):
    # the definition: the factor maximizing ||rule(honest + attack(t)) - mean(honest)||
    gen = torch.Generator().manual_seed(11)
    honest = 1.0 + 2.0 * torch.randn(8, 20, generator=gen, dtype=torch.float64)
    attack = attack_cls()
    sent = attack(honest, 2, aggregator=rule)
    harm = lambda t: attack.harm(honest, 2, t, [rule], [1.0], 2)  # noqa: E731
    found = harm(attack.last_factor)
    assert found >= 0.95 * dense_grid_max(harm)
    torch.testing.assert_close(sent, attack._rows(honest, 2, attack.last_factor))
    # and it hurts at least as much as the fixed versions of the attack
    fixed = [IPM(0.1), IPM(10.0)] if attack_cls is OptimalIPM else [ALIE(0.5), ALIE(1.5)]
    mu = honest.mean(0)
    for a in fixed:
        assert found >= float(torch.linalg.vector_norm(rule(torch.cat([honest, a(honest, 2)]), 2) - mu)) - 1e-9


def test_line_maximize_finds_interior_and_boundary_maxima():
    assert abs(line_maximize(lambda t: -(t - 3.3) ** 2) - 3.3) < 0.05
    assert line_maximize(lambda t: t) == pytest.approx(100.0)  # increasing: the upper end
    assert line_maximize(lambda t: -t) == 0.0
    # a cliff (Krum switching away from the attackers): the last point before it
    assert 4.5 < line_maximize(lambda t: t if t < 5.0 else 0.0) < 5.0
    with pytest.raises(ValueError, match="evals"):
        line_maximize(lambda t: t, evals=1)
