"""MixTailor in a real job: seeds with entropy, pools that grow and are fingerprinted, attackers
that only see the pool, and the commit-reveal draw (single process; the multi-rank behaviour is
in test_robust_dist.py)."""
import hashlib

import pytest
import torch

from commcomp.robust import (
    IPM,
    Attack,
    Bucketing,
    CoordinateMedian,
    Krum,
    Mean,
    MixTailor,
    PoolView,
    TrimmedMean,
    build_pool,
)
from commcomp.robust import draws
from commcomp.robust.mixtailor import index_from_digest
from commcomp.robust.simulation import SimulationConfig, simulate

torch.set_num_threads(1)


def chi2(counts, probs):
    total = sum(counts)
    return sum((c - total * p) ** 2 / (total * p) for c, p in zip(counts, probs) if p > 0)


# ---------------------------------------------------------------- MixTailor


def test_default_seeds_carry_entropy_and_explicit_seeds_reproduce():
    a, b = MixTailor(build_pool(norms=[1, 2])), MixTailor(build_pool(norms=[1, 2]))
    assert a.seed != b.seed and a.seed.bit_length() > 64  # 128 random bits (2^-64 chance to fail)
    assert [a.choose(t) for t in range(64)] != [b.choose(t) for t in range(64)]
    c, d = MixTailor(build_pool(norms=[1, 2]), seed=a.seed), MixTailor(build_pool(norms=[1, 2]), seed=a.seed)
    assert [c.choose(t) for t in range(64)] == [d.choose(t) for t in range(64)] == [a.choose(t) for t in range(64)]


def test_index_from_digest_is_uniform_and_respects_weights():
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(6000)]  # fixed: no flakes
    counts = [0] * 5
    for dg in digests:
        counts[index_from_digest(dg, 5)] += 1
    assert chi2(counts, [0.2] * 5) < 18.5  # chi-square(4), 99.9th percentile
    weights = [0.5, 0.0, 0.25, 0.25]
    counts = [0] * 4
    for dg in digests:
        counts[index_from_digest(dg, 4, weights)] += 1
    assert counts[1] == 0 and chi2(counts, weights) < 13.9  # chi-square(2), 99.9th percentile
    assert index_from_digest(b"\xff" * 32, 7) == 6 and index_from_digest(b"\x00" * 32, 7) == 0
    with pytest.raises(ValueError, match="digest"):
        index_from_digest(b"short", 3)


def test_add_keeps_counts_weights_and_draws_consistent():
    mix = MixTailor([Mean(), CoordinateMedian()], seed=1)
    g = torch.randn(7, 3)
    for _ in range(4):
        mix(g, 1)
    before = mix.fingerprint()
    mix.add(TrimmedMean())  # uniform stays uniform
    assert mix.weights is None and len(mix.pool) == 3 and len(mix.counts) == 3 and sum(mix.counts) == 4
    assert mix.fingerprint() != before and mix.name == "mixtailor(3)"
    mix.add(Krum(p=1), weight=0.4)  # the others keep their proportions, scaled by 0.6
    assert mix.weights == pytest.approx([0.2, 0.2, 0.2, 0.4])
    mix.add(Krum(p=2))
    assert mix.weights == pytest.approx([0.16, 0.16, 0.16, 0.32, 0.2])
    counts = [0] * 5
    for t in range(5000):
        counts[mix.choose(t)] += 1
    assert chi2(counts, mix.weights) < 18.5
    for _ in range(3):
        mix(g, 1)
    assert sum(mix.counts) == 7 and len(mix.counts) == 5
    for bad, match in [(lambda: mix.add("krum"), "rule"), (lambda: mix.add(Mean(), weight=1.5), "weight"),
                       (lambda: mix.add(MixTailor([Mean()])), "rule")]:
        with pytest.raises(ValueError, match=match):
            bad()


def test_fingerprint_names_every_parameter_of_the_pool():
    base = lambda: [Krum(p=2), TrimmedMean(), Bucketing(CoordinateMedian(), 2, seed=0)]  # noqa: E731
    fp = MixTailor(base()).fingerprint()
    assert MixTailor(base(), seed=123).fingerprint() == fp  # the seed is not part of the pool
    for other in (
        [Krum(p=3), TrimmedMean(), Bucketing(CoordinateMedian(), 2, seed=0)],
        [Krum(p=2), TrimmedMean(b=1), Bucketing(CoordinateMedian(), 2, seed=0)],
        [Krum(p=2), TrimmedMean(), Bucketing(CoordinateMedian(), 2, seed=1)],
        [Krum(p=2), TrimmedMean()],
    ):
        assert MixTailor(other).fingerprint() != fp
    assert MixTailor(base(), weights=[0.5, 0.25, 0.25]).fingerprint() != fp
    saved = MixTailor(base()).state_dict()
    with pytest.raises(ValueError, match="different pool"):
        MixTailor([Krum(p=3), TrimmedMean(), Bucketing(CoordinateMedian(), 2)]).load_state_dict(saved)


class _Recorder(Attack):
    """An omniscient attack that records what it was handed about the defence."""

    omniscient = True
    name = "recorder"

    def __init__(self):
        self.seen = []

    def _craft(self, honest, f, own, aggregator, tolerance, generator):
        self.seen.append(aggregator)
        return IPM(0.5)(honest, f)


def test_attacks_get_the_pool_never_the_seed_or_a_draw():
    from common.data import load_digits_tensors

    train, test = load_digits_tensors(flat=True)
    mix = MixTailor(build_pool(["krum", "median"], norms=[1, 2]))
    attack = _Recorder()
    cfg = SimulationConfig(num_workers=7, num_byzantine=2, steps=5, batch_size=8, eval_every=5)
    simulate(torch.nn.Linear(64, 10), (train.x, train.y), (test.x, test.y), mix, attack, cfg)
    assert len(attack.seen) == 5
    for view in attack.seen:
        assert isinstance(view, PoolView) and not isinstance(view, MixTailor)
        assert not any(hasattr(view, a) for a in ("seed", "step", "choose", "draw", "for_step", "last_choice"))
        assert [a.name for a in view.pool] == [a.name for a in mix.pool]
        assert all(a is not b for a, b in zip(view.pool, mix.pool))  # copies: probing advances nothing
    assert sum(mix.counts) == 5
    # a deterministic rule is public: the attacker gets the rule itself
    assert Krum().attacker_view().name == "krum(p=2)"


# ---------------------------------------------------------------- commit-reveal


def test_commitments_bind_nonce_step_and_rank():
    nonce = draws.fresh_nonce()
    c = draws.commitment(nonce, 7, 2)
    assert len(c) == draws.COMMIT_BYTES and draws.verify(c, nonce, 7, 2)
    assert not draws.verify(c, nonce, 8, 2) and not draws.verify(c, nonce, 7, 3)
    assert not draws.verify(c, draws.fresh_nonce(), 7, 2) and not draws.verify(None, nonce, 7, 2)
    assert draws.fresh_nonce() != draws.fresh_nonce()
    with pytest.raises(ValueError, match="nonce"):
        draws.commitment(b"short", 0, 0)


def _reveal(nonce, pool=b"P" * draws.FINGERPRINT_BYTES):
    return nonce + pool


def test_one_honest_nonce_makes_the_draw_uniform_whatever_the_others_send():
    # 3 colluding ranks fix their nonces; rank 0 is honest: the draw is still uniform
    fixed = [b"\x00" * 32, b"\x01" * 32, b"\x02" * 32]
    counts = [0] * 7
    for step in range(4000):
        honest = hashlib.sha256(b"honest %d" % step).digest()  # stands in for a fresh nonce
        digest = draws.draw_digest(step, [honest] + fixed)
        counts[index_from_digest(digest, 7)] += 1
    assert chi2(counts, [1 / 7] * 7) < 22.5  # chi-square(6), 99.9th percentile
    # and the same nonces give the same digest on every rank, a different one at another step
    n = [draws.fresh_nonce() for _ in range(4)]
    assert draws.draw_digest(3, n) == draws.draw_digest(3, list(n)) != draws.draw_digest(4, n)
    assert draws.draw_digest(3, n) != draws.draw_digest(3, n[:3] + [None])


def test_settle_flags_bad_reveals_and_minority_pools():
    nonces = [draws.fresh_nonce() for _ in range(5)]
    commits = [draws.commitment(s, 9, r) for r, s in enumerate(nonces)]
    reveals = [_reveal(s) for s in nonces]
    ok = draws.settle(9, commits, reveals, tolerance=1, own_rank=0)
    assert not any(ok.invalid) and ok.digest == draws.draw_digest(9, nonces)
    cheat = list(reveals)
    cheat[3] = _reveal(draws.fresh_nonce())  # a reveal that does not open rank 3's commitment
    out = draws.settle(9, commits, cheat, tolerance=1, own_rank=0)
    assert out.bad_reveal == (False, False, False, True, False) and out.invalid[3]
    assert out.digest == draws.draw_digest(9, nonces[:3] + [None] + nonces[4:])
    lost = list(commits)
    lost[1] = None  # its commitment never arrived (an invalid first frame)
    assert draws.settle(9, lost, reveals, tolerance=1, own_rank=0).bad_reveal[1]
    other = list(reveals)
    other[4] = _reveal(nonces[4], b"Q" * 32)  # one rank with another pool: a minority <= f
    out = draws.settle(9, commits, other, tolerance=1, own_rank=0)
    assert out.other_pool == (False, False, False, False, True) and not any(out.bad_reveal)
    with pytest.raises(draws.PoolMismatchError, match="this rank's pool"):
        draws.settle(9, commits, other, tolerance=1, own_rank=4)
    split = [_reveal(s, b"P" * 32 if r < 3 else b"Q" * 32) for r, s in enumerate(nonces)]
    for rank in range(5):  # 3 vs 2 with f = 1: nobody holds world - f = 4 -> every rank raises
        with pytest.raises(draws.PoolMismatchError, match=r"ranks disagree on the pool.*ranks \[0, 1, 2\]"):
            draws.settle(9, commits, split, tolerance=1, own_rank=rank)
