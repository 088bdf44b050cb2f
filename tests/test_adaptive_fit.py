"""ALQ/AMQ level fitting against brute force (scipy) and the exact variance of the reference."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

import commcomp  # noqa: F401
from commcomp import _reference
from commcomp.ops import level_stats
from commcomp.adaptive import ALQ, AMQ, UpdateSchedule
from commcomp.adaptive.fit import Histogram, exponential_levels, fit_alq, fit_amq, to_float32_levels
from commcomp.quantizers import NUQSGD, QSGD

torch.set_num_threads(1)

# A known distribution resembling normalized gradient magnitudes: a normal truncated to [0, 1].
MU, SIGMA = 0.06, 0.05
TRUE = stats.truncnorm((0 - MU) / SIGMA, (1 - MU) / SIGMA, loc=MU, scale=SIGMA)


def true_histogram(bins: int = 4096) -> Histogram:
    edges = Histogram.sqrt_edges(bins)
    return Histogram(edges, np.diff(TRUE.cdf(edges)))


def true_objective(levels: np.ndarray) -> float:
    """V(levels) under the continuous density, from the normal's closed-form partial moments
    (independent of Histogram): integral_a^b (b - r)(r - a) dF = -M2 + (a + b) M1 - a b M0."""
    z = (np.asarray(levels) - MU) / SIGMA
    mass = (stats.norm.cdf((1 - MU) / SIGMA) - stats.norm.cdf(-MU / SIGMA))
    cdf, pdf = stats.norm.cdf(z), stats.norm.pdf(z)
    m0 = cdf / mass
    m1 = (MU * cdf - SIGMA * pdf) / mass
    m2 = ((MU**2 + SIGMA**2) * cdf - SIGMA * pdf * (MU + np.asarray(levels))) / mass
    a, b = levels[:-1], levels[1:]
    return float(np.sum(-np.diff(m2) + (a + b) * np.diff(m1) - a * b * np.diff(m0)))


def brute_force_levels(objective, count: int, starts: int = 6, seed: int = 0) -> np.ndarray:
    """Minimize ``objective`` over sorted interior levels with Nelder-Mead from random starts.
    Levels are parameterized by positive gaps (softmax) so every trial point is a valid table."""

    def levels_of(z):
        gaps = np.exp(z - z.max())
        return np.concatenate([[0.0], np.cumsum(gaps / gaps.sum())[:-1], [1.0]])

    rng = np.random.default_rng(seed)
    best = None
    for _ in range(starts):
        z0 = rng.normal(size=count - 1) - np.linspace(0, 3, count - 1)[::-1]
        res = optimize.minimize(lambda z: objective(levels_of(z)), z0, method="Nelder-Mead",
                                options={"xatol": 1e-9, "fatol": 1e-14, "maxiter": 20000, "maxfev": 20000})
        if best is None or res.fun < best.fun:
            best = res
    return levels_of(best.x)


def test_histogram_integrals_match_quadrature():
    h = true_histogram()
    for x in (0.001, 0.05, 0.13, 0.7):
        assert h.cdf(x) == pytest.approx(TRUE.cdf(x), abs=1e-6)
        assert h.first_moment(x) == pytest.approx(integrate.quad(lambda r: r * TRUE.pdf(r), 0, x)[0], abs=1e-6)
    levels = np.array([0.0, 0.03, 0.1, 0.3, 1.0])
    assert h.objective(levels) == pytest.approx(true_objective(levels), rel=1e-4)
    quad = sum(integrate.quad(lambda r: (b - r) * (r - a) * TRUE.pdf(r), a, b, epsabs=1e-13)[0]
               for a, b in zip(levels[:-1], levels[1:]))
    assert true_objective(levels) == pytest.approx(quad, rel=1e-9)  # the oracle itself


def test_best_level_is_the_one_dimensional_minimizer():
    h = true_histogram(512)
    levels = np.array([0.0, 0.02, 0.05, 0.2, 1.0])
    for j in (1, 2, 3):
        a, b = levels[j - 1], levels[j + 1]

        def f(l):
            trial = levels.copy()
            trial[j] = l
            return h.objective(trial)

        brute = optimize.minimize_scalar(f, bounds=(a, b), method="bounded", options={"xatol": 1e-12})
        got = float(h.best_level(np.array([a]), np.array([b]))[0])
        assert got == pytest.approx(brute.x, abs=1e-6)
        assert f(got) <= brute.fun * (1 + 1e-12)


def test_alq_matches_brute_force_optimum_of_the_known_distribution():
    # 3 bits: 4 levels, 2 free. The continuous optimum (quadrature + Nelder-Mead) is the target.
    brute = brute_force_levels(true_objective, 4, starts=4)
    fit = fit_alq(true_histogram(), exponential_levels(4, 0.5))
    np.testing.assert_allclose(fit.levels, brute, atol=2e-3)
    assert true_objective(fit.levels) <= true_objective(brute) * (1 + 1e-3)


def test_alq_matches_brute_force_on_the_same_histogram_with_more_levels():
    h = true_histogram(1024)
    brute = brute_force_levels(h.objective, 8, starts=4)
    fit = fit_alq(h, exponential_levels(8, 0.5))
    assert fit.objective <= h.objective(brute) * (1 + 1e-6)
    np.testing.assert_allclose(fit.levels, brute, atol=2e-3)


@pytest.mark.parametrize("seed", range(4))
def test_alq_objective_never_increases_across_sweeps(seed):
    rng = np.random.default_rng(seed)
    samples = np.concatenate([rng.beta(0.5, 20, 30000), rng.beta(2, 3, 3000)])  # bimodal
    h = Histogram.from_samples(samples, weights=rng.uniform(0.5, 2, samples.size), bins=256)
    init = np.concatenate([[0.0], np.sort(rng.uniform(0, 1, 14)), [1.0]])
    fit = fit_alq(h, init)
    hist = np.array(fit.history)
    assert len(hist) > 3
    assert np.all(np.diff(hist) <= 1e-12 * hist[0]), np.diff(hist).max()
    assert hist[-1] < hist[0]
    assert np.all(np.diff(fit.levels) > 0) and fit.levels[0] == 0 and fit.levels[-1] == 1


def test_amq_matches_brute_force_multiplier():
    h = true_histogram(1024)
    for count in (4, 8):
        grid = np.linspace(0.01, 0.99, 981)
        values = [h.objective(exponential_levels(count, p)) for p in grid]
        i = int(np.argmin(values))
        brute = optimize.minimize_scalar(lambda p: h.objective(exponential_levels(count, p)),
                                         bounds=(grid[max(i - 1, 0)], grid[min(i + 1, 980)]), method="bounded",
                                         options={"xatol": 1e-10})
        fit = fit_amq(h, count)
        assert fit.multiplier == pytest.approx(brute.x, abs=1e-4)
        assert fit.objective <= brute.fun * (1 + 1e-9)
        assert all(b <= a for a, b in zip(fit.history, fit.history[1:]))


def test_model_ordering_alq_amq_nuqsgd_qsgd():
    # On the fitted model itself ALQ <= AMQ <= NUQSGD holds by construction; QSGD is far worse here.
    h = true_histogram(1024)
    for count in (4, 8):
        alq = ALQ(bits=int(math.log2(count)) + 1)._fit(h).objective
        amq = fit_amq(h, count).objective
        nuq = h.objective(exponential_levels(count, 0.5))
        qsgd = h.objective(np.linspace(0, 1, count))
        assert alq <= amq <= nuq < qsgd


def laplace_gradient(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.distributions.Laplace(0.0, 1.0).sample((n,)) * torch.rand(n, generator=g)


def test_fitted_levels_minimize_the_exact_variance_of_the_data():
    # End to end: op statistics -> ALQ -> exact E||Q(x) - x||^2 of the reference, compared with
    # Nelder-Mead run directly on that exact variance (no histogram involved).
    x = laplace_gradient(16384, 0)
    q = ALQ(bits=3, bucket_size=128, update_schedule=UpdateSchedule(at=(0,), every=None))
    q.observe(x)
    assert q.maybe_update(0)
    exact = lambda lv: _reference.expected_variance(x, torch.tensor(lv, dtype=torch.float32), 128)  # noqa: E731
    brute = brute_force_levels(lambda lv: exact(lv.astype(np.float32)) if np.all(np.diff(lv.astype(np.float32)) > 0) else np.inf,
                               4, starts=2)
    assert exact(np.array(q.levels.values)) <= exact(brute) * 1.003
    # And the model's normalized variance predicts the exact one.
    predicted = Histogram.from_stats(level_stats(x, 128)).normalized_variance(np.array(q.levels.values))
    assert predicted == pytest.approx(exact(np.array(q.levels.values)) / float(x.double().pow(2).sum()), rel=0.01)


@pytest.mark.parametrize("cls", [ALQ, AMQ])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_levels_sorted_in_unit_interval_with_both_ends(cls, bits):
    q = cls(bits=bits, bucket_size=64, update_schedule=UpdateSchedule(at=(0, 1, 2, 3), every=None))
    inputs = [laplace_gradient(4096, 1), torch.zeros(640), torch.eye(64).reshape(-1), torch.randn(64 * 50) * 1e-30]
    for it, x in enumerate(inputs):
        q.observe(x)
        q.maybe_update(it)
        v = np.array(q.levels.values, dtype=np.float32)
        assert v.size == 2 ** (bits - 1)
        assert v[0] == 0.0 and v[-1] == 1.0 and np.all(np.diff(v) > 0)


def test_all_zero_statistics_keep_levels():
    q = ALQ(bits=3, update_schedule=UpdateSchedule(at=(5,), every=None))
    before = q.levels
    assert not q.should_observe(4) and q.should_observe(5)
    q.observe(torch.zeros(1000))
    assert q.maybe_update(5) is False and q.levels == before and q.updates == 1


def test_adaptive_beats_fixed_tables_on_gaussian_buckets():
    x = torch.randn(1 << 16)
    sched = UpdateSchedule(at=(0,), every=None)
    results = {}
    for name, q in [("alq", ALQ(3, 512, sched)), ("amq", AMQ(3, 512, sched)), ("nuq", NUQSGD(3, 512)), ("qsgd", QSGD(3, 512))]:
        if hasattr(q, "observe"):
            q.observe(x)
            q.maybe_update(0)
        results[name] = _reference.expected_variance(x, q.levels.tensor(), 512)
    assert results["alq"] <= results["amq"] * 1.001 <= results["nuq"] * 1.001 < results["qsgd"]
    assert results["alq"] < 0.8 * results["nuq"]


def test_schedule():
    s = UpdateSchedule(at=(100, 2000), every=500)
    due = [i for i in range(0, 2601) if s.due(i)]
    assert due == [100, 500, 1000, 1500, 2000, 2500]
    assert not UpdateSchedule(at=(), every=None).due(0)
    with pytest.raises(ValueError, match="every"):
        UpdateSchedule(every=0)
    with pytest.raises(ValueError, match="at"):
        UpdateSchedule(at=(-1,))


def test_state_dict_round_trip_and_validation():
    sched = UpdateSchedule(at=(0,), every=7)
    q = AMQ(bits=4, bucket_size=256, update_schedule=sched)
    q.observe(laplace_gradient(4096, 2))
    q.maybe_update(0)
    q.observe(torch.randn(1024))  # pending statistics survive a checkpoint too
    state = q.state_dict()
    r = AMQ(bits=4, bucket_size=256)
    r.load_state_dict(state)
    assert r.levels == q.levels and r.multiplier == q.multiplier != 0.5 and r.update_schedule == sched
    assert r.updates == 1
    # Resuming gives the same next fit as never stopping.
    q.update()
    r.update()
    assert r.levels == q.levels
    with pytest.raises(ValueError, match="bits"):
        AMQ(bits=3, bucket_size=256).load_state_dict(state)
    with pytest.raises(ValueError, match="scheme"):
        ALQ(bits=4, bucket_size=256).load_state_dict(state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        ALQ(bits=1)
    with pytest.raises(ValueError, match="bins"):
        AMQ(bits=3, bins=0)
    with pytest.raises(ValueError, match="update_schedule"):
        ALQ(bits=3, update_schedule=(100,))
    with pytest.raises(ValueError, match="levels"):
        fit_alq(true_histogram(64), np.array([0.0, 0.5, 0.4, 1.0]))
    with pytest.raises(ValueError, match="strictly"):
        Histogram(np.array([0.0, 0.5, 0.5, 1.0]), np.ones(3))


def test_float32_rounding_keeps_levels_strict():
    v = to_float32_levels(np.array([0.0, 1e-50, 2e-50, 1 - 1e-12, 1.0]))
    assert v[0] == 0.0 and v[-1] == 1.0 and all(b > a for a, b in zip(v, v[1:]))
