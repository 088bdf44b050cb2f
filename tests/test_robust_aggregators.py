"""Robust aggregation rules: hand-checkable cases, brute-force oracles, robustness, bad input."""
import itertools
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from commcomp.robust import (
    Bucketing,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    Mean,
    MeanAroundMedian,
    NearestNeighborMixing,
    TrimmedMean,
    sanitize,
)

torch.set_num_threads(1)


def col(*values):
    """A column of 1-D gradients (n, 1)."""
    return torch.tensor(values, dtype=torch.float64)[:, None]


# ---------------------------------------------------------------- hand-checkable cases


def test_mean():
    assert Mean()(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), f=0).tolist() == [2.0, 3.0]


def test_median_odd_and_even():
    assert CoordinateMedian()(col(1, 5, 3), f=1).item() == 3
    # even n: the mean of the two middle values, 2 and 4
    assert CoordinateMedian()(col(1, 2, 10, 4, 0), f=2).item() == 2
    assert CoordinateMedian()(col(1, 2, 10, 4, 0, 9), f=2).item() == 3


def test_trimmed_mean():
    assert TrimmedMean()(col(0, 1, 2, 100, -50), f=1).item() == 1.0  # drops -50 and 100
    assert TrimmedMean(b=2)(col(0, 1, 2, 100, -50), f=1).item() == 1.0


def test_mean_around_median():
    # median 2; |x - 2| = 2, .5, 0, 98, 1 -> the 2 closest are 2 and 1.5
    assert MeanAroundMedian(keep=2)(col(0, 1.5, 2, 100, 3), f=1).item() == pytest.approx(1.75)


def test_krum_and_multi_krum():
    g = col(0, 0.1, 0.25, 0.3, 10)
    # f=1 -> 2 neighbours; squared scores: .0725, .0325, .025, .0425, huge -> 0.25 wins
    assert Krum()(g, f=1).item() == pytest.approx(0.25)
    assert Krum(m=2)(g, f=1).item() == pytest.approx((0.25 + 0.1) / 2)


def brute_force_krum(rows, f, p):
    n = len(rows)
    dist = lambda a, b: (  # noqa: E731
        max(abs(x - y) for x, y in zip(a, b)) if math.isinf(p) else sum(abs(x - y) ** p for x, y in zip(a, b)) ** (1 / p)
    )
    scores = []
    for i in range(n):
        d = sorted(dist(rows[i], rows[j]) ** 2 for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return min(range(n), key=lambda i: (scores[i], i))


@pytest.mark.parametrize("p", [1, 2, 3, 16, math.inf])
def test_krum_matches_brute_force_for_every_norm(p):
    gen = torch.Generator().manual_seed(int(min(p, 99)))
    for _ in range(10):
        g = torch.randn(9, 4, generator=gen, dtype=torch.float64) * torch.rand(9, 1, generator=gen, dtype=torch.float64) * 3
        want = g[brute_force_krum(g.tolist(), 2, p)]
        torch.testing.assert_close(Krum(p=p)(g, f=2), want)


def test_krum_norm_changes_the_choice():
    # the pool's p-norm variants are genuinely different rules: find inputs where l1 and l_inf
    # Krum pick different rows, and check both picks against the brute force
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        g = torch.randn(7, 3, generator=gen, dtype=torch.float64)
        i1, iinf = brute_force_krum(g.tolist(), 1, 1), brute_force_krum(g.tolist(), 1, math.inf)
        if i1 != iinf:
            break
    assert i1 != iinf
    assert torch.equal(Krum(p=1)(g, f=1), g[i1]) and torch.equal(Krum(p=math.inf)(g, f=1), g[iinf])


def test_geometric_median_hand_cases():
    assert GeometricMedian()(col(0, 1, 10), f=1).item() == pytest.approx(1.0, abs=1e-5)
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(GeometricMedian()(square, f=1), torch.tensor([1.0, 1.0], dtype=torch.float64))
    h = math.sqrt(3) / 2
    tri = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, h]], dtype=torch.float64)  # Fermat point = centroid
    torch.testing.assert_close(GeometricMedian()(tri, f=1), tri.mean(0), atol=1e-6, rtol=0)


def test_geometric_median_minimizes_sum_of_distances():
    g = torch.randn(11, 5, dtype=torch.float64)
    z = GeometricMedian()(g, f=3)
    objective = lambda y: torch.linalg.vector_norm(g - y, dim=1).sum()  # noqa: E731
    for _ in range(50):  # no random perturbation improves it
        assert objective(z) <= objective(z + 1e-3 * torch.randn(5, dtype=torch.float64)) + 1e-12


def brute_force_bulyan(values, f):
    """Bulyan on scalars, written independently: repeated Krum, then mean around median."""
    alive = list(range(len(values)))
    chosen = []
    for _ in range(len(values) - 2 * f):
        k = max(1, len(alive) - f - 2)
        score = {i: sum(sorted((values[i] - values[j]) ** 2 for j in alive if j != i)[:k]) for i in alive}
        best = min(alive, key=lambda i: (score[i], i))
        chosen.append(values[best])
        alive.remove(best)
    chosen.sort()
    m = len(chosen)
    med = chosen[m // 2] if m % 2 else (chosen[m // 2 - 1] + chosen[m // 2]) / 2
    keep = sorted(chosen, key=lambda v: abs(v - med))[: m - 2 * f]
    return sum(keep) / len(keep)


def test_bulyan_hand_case_and_brute_force():
    # n=7, f=1: Krum selects 5 of the 6 small values (never 1000), then averages the 3 values
    # closest to the median of the selection
    values = [0.0, 1.0, 2.0, 3.0, 4.0, 5.3, 1000.0]
    out = Bulyan()(col(*values), f=1).item()
    assert out == pytest.approx(brute_force_bulyan(values, 1))
    assert 1.0 <= out <= 4.0
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        v = (torch.randn(11, generator=gen, dtype=torch.float64) * 3).tolist()
        assert Bulyan()(col(*v), f=2).item() == pytest.approx(brute_force_bulyan(v, 2))


def test_centered_clipping():
    # centre = median 0; diffs 0, 0, 10 -> clipped to 0, 0, 1 -> v = 1/3
    assert CenteredClipping(tau=1.0, iters=1)(col(0, 0, 10), f=1).item() == pytest.approx(1 / 3)
    g = torch.randn(7, 3, dtype=torch.float64)
    # a radius larger than every distance: one step from any centre lands on the mean
    torch.testing.assert_close(CenteredClipping(tau=1e6, iters=1)(g, f=1), g.mean(0))


def test_centered_clipping_previous_centre_is_stateful():
    cc = CenteredClipping(tau=0.5, iters=1, center="previous")
    first = cc(col(0, 0, 10), f=1)
    assert cc.state_dict()["previous"].item() == pytest.approx(first.item())
    second = cc(col(5, 5, 5), f=1)  # from 1/6, every diff clipped to 0.5
    assert second.item() == pytest.approx(first.item() + 0.5)


def test_bucketing_of_means_is_the_mean_and_shuffle_is_seeded():
    g = torch.randn(12, 4, dtype=torch.float64)
    torch.testing.assert_close(Bucketing(Mean(), bucket_size=3)(g, f=0), g.mean(0))
    a, b = Bucketing(CoordinateMedian(), 2, seed=5), Bucketing(CoordinateMedian(), 2, seed=5)
    for _ in range(3):
        assert torch.equal(a(g, f=1), b(g, f=1))
    state = a.state_dict()
    x = a(g, f=1)
    a.load_state_dict(state)
    assert torch.equal(a(g, f=1), x)


def test_nearest_neighbour_mixing():
    # each row -> mean of its 3 nearest: 1, 1, 1, (100 + 2 + 1) / 3; median of those = 1
    assert NearestNeighborMixing(CoordinateMedian())(col(0, 1, 2, 100), f=1).item() == pytest.approx(1.0)
    assert NearestNeighborMixing(Mean())(col(0, 1, 2, 100), f=1).item() == pytest.approx((3 + 103 / 3) / 4)


# ---------------------------------------------------------------- robustness properties

honest_matrices = st.integers(min_value=0, max_value=10_000).map(
    lambda s: torch.randn(9, 6, generator=torch.Generator().manual_seed(s), dtype=torch.float64)
)


@settings(max_examples=30, deadline=None)
@given(honest=honest_matrices, seed=st.integers(0, 1000))
@pytest.mark.parametrize("rule", [CoordinateMedian(), TrimmedMean()], ids=str)
def test_coordinatewise_rules_ignore_how_far_outliers_go(rule, honest, seed):
    f = 2
    gen = torch.Generator().manual_seed(seed)
    side = torch.randint(0, 2, (f, honest.shape[1]), generator=gen).double() * 2 - 1
    base = honest.abs().max() + 1
    outs = [rule(torch.cat([honest, side * base * scale]), f) for scale in (1.0, 1e3, 1e12)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # and the output stays inside the honest range of every coordinate
    assert (outs[0] >= honest.min(0).values).all() and (outs[0] <= honest.max(0).values).all()


@pytest.mark.parametrize("rule", [Krum(p=1), Krum(p=2), GeometricMedian(), Bulyan(), CenteredClipping(1.0)], ids=str)
def test_vector_rules_stay_bounded_as_outliers_diverge(rule):
    honest = torch.randn(9, 6, dtype=torch.float64)
    f = 2 if not isinstance(rule, Krum) else 3
    radius = torch.linalg.vector_norm(honest, dim=1).max()
    for scale in (1e2, 1e6, 1e12):
        bad = torch.randn(f, 6, dtype=torch.float64) * scale
        out = rule(torch.cat([honest, bad]), f)
        # a constant-factor bound independent of scale (Krum: an honest row exactly)
        assert torch.linalg.vector_norm(out) <= 3 * radius


def test_mean_is_not_robust():
    honest = torch.randn(9, 3)
    out = Mean()(torch.cat([honest, torch.full((1, 3), 1e9)]), f=1)
    assert out.abs().min() > 1e7


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "rule, n, f, needed",
    [
        (CoordinateMedian(), 4, 2, "2f + 1"),
        (TrimmedMean(), 4, 2, "2b + 1"),
        (Krum(), 6, 2, "2f + 3"),
        (GeometricMedian(), 4, 2, "2f + 1"),
        (Bulyan(), 10, 2, "4f + 3"),
        (CenteredClipping(), 4, 2, "2f + 1"),
        (Bucketing(CoordinateMedian(), 2), 8, 2, "s * (inner requirement - 1) + 1"),
    ],
    ids=lambda v: str(v),
)
def test_too_few_workers_is_a_clear_error(rule, n, f, needed):
    with pytest.raises(ValueError, match=re.escape(f"needs n >= {needed}")):
        rule(torch.randn(n, 3), f)
    rule(torch.randn(n + 1, 3), f)  # one more worker is enough


def test_bulyan_requirement_is_exactly_4f_plus_3():
    Bulyan()(torch.randn(11, 3), f=2)
    with pytest.raises(ValueError, match="Bulyan|bulyan"):
        Bulyan()(torch.randn(10, 3), f=2)


@pytest.mark.parametrize("bad", [torch.randn(5), torch.randn(2, 3, 4), torch.zeros(0, 3), torch.ones(4, 3, dtype=torch.int64)])
def test_wrong_shapes_and_dtypes_are_rejected(bad):
    with pytest.raises(ValueError, match="grads"):
        CoordinateMedian()(bad, 0)


@pytest.mark.parametrize("f", [-1, 5, 1.5, True])
def test_bad_f_is_rejected(f):
    with pytest.raises(ValueError, match="f"):
        Mean()(torch.randn(5, 2), f)


@pytest.mark.parametrize("rule", [Mean(), CoordinateMedian(), Krum(), GeometricMedian(), Bulyan()], ids=str)
def test_nan_rows_are_rejected_by_rules_and_handled_by_sanitize(rule):
    g = torch.randn(11, 4)
    g[3, 1] = float("nan")
    g[7] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[3, 7\].*sanitize"):
        rule(g, 2)
    rows, f_eff, bad = sanitize(g, 2, "drop")
    assert rows.shape == (9, 4) and f_eff == 0 and bad.nonzero().flatten().tolist() == [3, 7]
    assert torch.isfinite(rule(rows, f_eff)).all()
    zeroed, f_same, _ = sanitize(g, 2, "zero")
    assert f_same == 2 and torch.equal(zeroed[3], torch.zeros(4)) and torch.equal(zeroed[0], g[0])
    assert torch.isfinite(rule(zeroed, f_same)).all()


def test_sanitize_policy_is_validated():
    with pytest.raises(ValueError, match="policy"):
        sanitize(torch.full((3, 2), float("nan")), 1, "ignore")


def test_constructor_arguments_are_validated():
    for make, name in [
        (lambda: Krum(p=0.5), "p"),
        (lambda: Krum(m=0), "m"),
        (lambda: GeometricMedian(eps=0), "eps"),
        (lambda: CenteredClipping(tau=-1), "tau"),
        (lambda: CenteredClipping(center="mean"), "center"),
        (lambda: MeanAroundMedian(keep=0), "keep"),
        (lambda: Bucketing(CoordinateMedian(), bucket_size=0), "bucket_size"),
        (lambda: Bucketing("median"), "inner"),
    ]:
        with pytest.raises(ValueError, match=name):
            make()


def test_rules_are_permutation_invariant_without_ties():
    g = torch.randn(11, 5, dtype=torch.float64)
    perm = torch.randperm(11)
    for rule in [CoordinateMedian(), TrimmedMean(), Krum(p=3), GeometricMedian(), Bulyan(Krum(p=1))]:
        torch.testing.assert_close(rule(g, 2), rule(g[perm], 2))


def test_float32_in_float32_out():
    for rule in [CoordinateMedian(), Krum(), GeometricMedian(), Bulyan(), CenteredClipping()]:
        assert rule(torch.randn(11, 3), 2).dtype == torch.float32


def test_all_subsets_brute_force_for_trimmed_mean():
    # trimmed mean = mean over values ranked b..n-b-1, checked by enumerating orderings
    v = [3.0, -1.0, 7.0, 2.0, 5.0]
    for perm in itertools.permutations(v):
        assert TrimmedMean()(col(*perm), f=1).item() == pytest.approx((2.0 + 3.0 + 5.0) / 3)
