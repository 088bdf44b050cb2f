"""MixTailor's draws, the pool builder, and the attacks."""
import math
from statistics import NormalDist

import pytest
import torch

from commcomp.robust import (
    ALIE,
    IPM,
    AdaptiveIPM,
    Bulyan,
    CoordinateMedian,
    Gaussian,
    Krum,
    LabelFlip,
    Mean,
    Mimic,
    MixTailor,
    NonFinite,
    SignFlip,
    TrimmedMean,
    build_pool,
    flip_labels,
)
from commcomp.robust.attacks import alie_default_z

torch.set_num_threads(1)


# ---------------------------------------------------------------- MixTailor


def test_same_seed_same_rules_on_every_rank():
    # two "ranks" build their own instance; they must agree step by step without talking
    a, b = MixTailor(build_pool(norms=[1, 2, 3]), seed=7), MixTailor(build_pool(norms=[1, 2, 3]), seed=7)
    g = torch.randn(12, 4)
    for _ in range(30):
        assert torch.equal(a(g, 2), b(g, 2))
        assert a.last_choice == b.last_choice
    assert [a.choose(t) for t in range(100)] != [MixTailor(a.pool, seed=8).choose(t) for t in range(100)]


def test_choice_depends_only_on_seed_and_step():
    mix = MixTailor(build_pool(norms=[1, 2]), seed=3)
    expected = [mix.choose(t) for t in range(20)]
    g = torch.randn(12, 2)
    for _ in range(5):
        mix(g, 2)  # calling does not change what later steps draw
    assert [mix.choose(t) for t in range(20)] == expected
    assert mix.step == 5 and mix.for_step(4) is mix.pool[expected[4]]


def test_draws_are_uniform_over_the_pool():
    mix = MixTailor([Mean(), CoordinateMedian(), TrimmedMean(), Krum(p=1), Krum(p=2)], seed=0)
    draws = 5000
    counts = torch.bincount(torch.tensor([mix.choose(t) for t in range(draws)]), minlength=5).double()
    # each count is Binomial(5000, 1/5): sd = sqrt(5000 * .2 * .8) ~ 28; 5 sd bound
    assert (counts - draws / 5).abs().max() < 5 * math.sqrt(draws * 0.2 * 0.8)
    chi2 = ((counts - draws / 5) ** 2 / (draws / 5)).sum()
    assert chi2 < 18.5  # chi-square(4) 99.9th percentile


def test_weights_and_state_dict():
    mix = MixTailor([Mean(), CoordinateMedian()], seed=1, weights=[0.0, 1.0])
    assert {mix.choose(t) for t in range(50)} == {1}
    g = torch.randn(5, 3)
    mix(g, 1)
    mix(g, 1)
    state = mix.state_dict()
    restored = MixTailor([Mean(), CoordinateMedian()], seed=99, weights=[0.0, 1.0])
    restored.load_state_dict(state)
    assert restored.seed == 1 and restored.step == 2
    with pytest.raises(ValueError, match="weights"):
        MixTailor([Mean(), CoordinateMedian()], weights=[0.5, 0.6])


def test_pool_builder_and_requirements():
    pool = build_pool(norms=range(1, 17))
    names = [a.name for a in pool]
    assert len(pool) == 16 + 16 + 3 and "krum(p=16)" in names and "bulyan(krum(p=1),mean_around_median)" in names
    mix = MixTailor(pool)
    assert mix.min_workers(2) == 11  # Bulyan's 4f + 3 dominates
    with pytest.raises(ValueError, match=r"bulyan.*4f \+ 3"):
        mix(torch.randn(10, 3), 2)
    with pytest.raises(ValueError, match="families"):
        build_pool(["krum", "zeno"])
    with pytest.raises(ValueError, match="pool"):
        MixTailor([])
    with pytest.raises(ValueError, match="pool"):
        MixTailor([mix])


def test_mixtailor_uses_the_drawn_rule():
    pool = [Mean(), CoordinateMedian()]
    mix = MixTailor(pool, seed=4)
    g = torch.cat([torch.zeros(4, 1), torch.full((1, 1), 100.0)])
    for t in range(20):
        want = 20.0 if mix.choose(t) == 0 else 0.0
        assert mix(g, 1).item() == pytest.approx(want)
    assert sum(mix.counts) == 20 and min(mix.counts) > 0


# ---------------------------------------------------------------- attacks

HONEST = torch.tensor([[1.0, 2.0], [3.0, 6.0], [2.0, 1.0]])


def test_ipm_sign_flip_mimic_label_flip_hand_values():
    assert IPM(0.5)(HONEST, 2).tolist() == [[-1.0, -1.5], [-1.0, -1.5]]
    own = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    assert SignFlip()(HONEST, 2, own=own).tolist() == [[-1.0, 1.0], [-0.0, -2.0]]
    assert SignFlip(scale=2)(HONEST, 1).tolist() == [[-4.0, -6.0]]  # no own: -2 * honest mean
    assert Mimic(target=1)(HONEST, 2).tolist() == [[3.0, 6.0], [3.0, 6.0]]
    assert torch.equal(LabelFlip()(HONEST, 2, own=own), own)
    assert flip_labels(torch.tensor([0, 3, 9]), 10).tolist() == [9, 6, 0]


def test_alie_hand_values_and_default_z():
    mu, sigma = HONEST.mean(0), HONEST.std(0)
    torch.testing.assert_close(ALIE(1.5)(HONEST, 2), (mu - 1.5 * sigma).expand(2, -1))
    # Baruch et al.: n=12, f=2 -> s = 12/2 + 1 - 2 = 5, z = Phi^-1(7/12)
    assert alie_default_z(12, 2) == pytest.approx(NormalDist().inv_cdf(7 / 12))
    assert alie_default_z(12, 2) == pytest.approx(0.2104, abs=1e-4)


def test_gaussian_statistics_and_nan():
    out = Gaussian(std=3.0)(HONEST, 2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 2)
    big = Gaussian(std=3.0)(torch.zeros(1, 20000), 2, generator=torch.Generator().manual_seed(1))
    # sample sd of 40000 normals: relative error ~ 1/sqrt(2 * 40000) = 0.35%; 5 sd bound
    assert abs(big.std().item() / 3.0 - 1) < 0.02 and abs(big.mean().item()) < 5 * 3.0 / 200
    assert torch.isnan(NonFinite()(HONEST, 2)).all()


def test_attack_input_validation():
    with pytest.raises(ValueError, match="omniscient"):
        IPM(0.1)(None, 2, own=torch.ones(2, 2))
    with pytest.raises(ValueError, match="own"):
        SignFlip()(HONEST, 2, own=torch.ones(3, 2))
    with pytest.raises(ValueError, match="f"):
        IPM(0.1)(HONEST, 0)
    with pytest.raises(ValueError, match="epsilon"):
        IPM(-1.0)
    with pytest.raises(ValueError, match="aggregator"):
        AdaptiveIPM()(HONEST, 1)


def test_ipm_small_epsilon_fools_krum_large_epsilon_fools_mean():
    gen = torch.Generator().manual_seed(0)
    mu = torch.ones(50)
    honest = mu + 2.0 * torch.randn(10, 50, generator=gen)  # noisy: gradient noise >> mean
    krum_out = Krum()(torch.cat([honest, IPM(0.1)(honest, 2)]), 2)
    assert krum_out @ mu < 0  # Krum picks an attacker: a descent direction reversed
    mean_out = Mean()(torch.cat([honest, IPM(10.0)(honest, 2)]), 2)
    assert mean_out @ mu < 0
    med_out = CoordinateMedian()(torch.cat([honest, IPM(10.0)(honest, 2)]), 2)
    assert med_out @ mu > 0


def test_adaptive_attack_picks_the_most_harmful_epsilon():
    gen = torch.Generator().manual_seed(0)
    honest = 1.0 + 2.0 * torch.randn(10, 50, generator=gen)
    mu = honest.mean(0)
    eps = (0.1, 1.0, 10.0)
    for rule in [Mean(), Krum(), CoordinateMedian(), Bulyan()]:
        attack = AdaptiveIPM(eps)
        attack(honest, 2, aggregator=rule)
        # brute force: aggregate each candidate and take the smallest inner product with mu
        harm = {e: float(rule(torch.cat([honest, IPM(e)(honest, 2)]), 2) @ mu) for e in eps}
        assert attack.last_epsilon == min(harm, key=harm.get)
    adaptive = AdaptiveIPM(eps)
    adaptive(honest, 2, aggregator=Mean())
    assert adaptive.last_epsilon == 10.0  # the mean is hurt most by the largest push


def test_adaptive_attack_sees_the_pool_not_the_draw():
    honest = 1.0 + 2.0 * torch.randn(10, 20)
    mix = MixTailor(build_pool(["krum", "median"], norms=[1, 2]), seed=0)
    attack = AdaptiveIPM((0.1, 10.0))
    sent = attack(honest, 2, aggregator=mix)
    assert mix.step == 0 and sum(mix.counts) == 0  # probing did not consume a draw
    mu = honest.mean(0)
    avg = {e: sum(float(a(torch.cat([honest, IPM(e)(honest, 2)]), 2) @ mu) for a in mix.pool) / 3 for e in (0.1, 10.0)}
    assert attack.last_epsilon == min(avg, key=avg.get)
    torch.testing.assert_close(sent, IPM(attack.last_epsilon)(honest, 2))
    probed = AdaptiveIPM((0.1, 10.0), probes=2)
    probed(honest, 2, aggregator=mix, generator=torch.Generator().manual_seed(0))
    assert probed.last_epsilon in (0.1, 10.0)
