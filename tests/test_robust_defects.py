"""Regressions of issue 18's four defects; each test failed on the code before the fix.

1. Bulyan at f = 0 picked a row twice; 2. the geometric median stopped on a data point;
3. one invalid row crashed fixed-parameter rules (and more than f crashed any rule);
4. fp16/bf16 rows crashed Krum, Bulyan and NNM, and every member re-ran the finite check.
"""
import pytest
import torch

from commcomp.robust import (
    Bucketing,
    Bulyan,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MeanAroundMedian,
    MixTailor,
    NearestNeighborMixing,
    NonFinite,
    TrimmedMean,
    build_pool,
)
from commcomp.robust.simulation import SimulationConfig, simulate

torch.set_num_threads(1)


# ---------------------------------------------------------------- 1. Bulyan at f = 0


def test_bulyan_at_f0_is_the_mean_of_all_rows():
    g = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    # f = 0: theta = n rows selected (each once), then the mean of the n values around the median
    assert Bulyan()(g, 0).item() == pytest.approx(3.2)
    gen = torch.Generator().manual_seed(0)
    for p in (1, 2, 4):
        x = torch.randn(7, 3, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(Bulyan(Krum(p=p))(x, 0), x.mean(0))


def test_krum_selection_never_repeats_a_row():
    gen = torch.Generator().manual_seed(1)
    for n, f in [(5, 0), (7, 1), (11, 2)]:
        x = torch.randn(n, 4, generator=gen)
        chosen = Krum().select(x, f, n).tolist()
        assert sorted(chosen) == list(range(n))
    # rows so far apart that squared fp32 distances overflow to inf: still distinct picks
    huge = torch.tensor([[0.0], [1.0], [2.0], [3e30], [-3e30]])
    assert sorted(Krum().select(huge, 0, 5).tolist()) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- 2. geometric median


def _weiszfeld_reference(x, iters=20000):
    # plain Weiszfeld from a start that is no data point (the mean, nudged), run far past
    # convergence in float64
    y = x.mean(0) + 1e-3
    for _ in range(iters):
        w = 1.0 / torch.linalg.vector_norm(x - y, dim=1)
        y = (w[:, None] * x).sum(0) / w.sum()
    return y


def test_geometric_median_does_not_stop_on_its_start_row():
    # the coordinate median (the start) is the input row (3, -2), which is not optimal
    x = torch.tensor([[-3.0, -2.0], [3.0, -2.0], [-4.0, -4.0], [4.0, 5.0], [4.0, 4.0]], dtype=torch.float64)
    objective = lambda y: float(torch.linalg.vector_norm(x - y, dim=1).sum())  # noqa: E731
    z = GeometricMedian()(x, 1)
    best = _weiszfeld_reference(x)
    assert objective(z) == pytest.approx(objective(best), rel=1e-9)  # 24.5087 (26.43 before)
    torch.testing.assert_close(z, best, atol=1e-4, rtol=0)  # the objective is flat near its optimum


def test_geometric_median_at_an_optimal_data_point_stays_there():
    # a row with enough points on it is the geometric median (Vardi-Zhang's optimality test)
    x = torch.tensor([[0.0, 0.0]] * 3 + [[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert GeometricMedian()(x, 1).tolist() == [0.0, 0.0]
    same = torch.ones(4, 3, dtype=torch.float64)
    assert GeometricMedian()(same, 1).tolist() == [1.0, 1.0, 1.0]


def test_geometric_median_matches_a_long_reference_on_random_rows():
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        x = torch.randint(-3, 4, (7, 3), generator=gen).double()  # many ties: iterates hit rows
        objective = lambda y: float(torch.linalg.vector_norm(x - y, dim=1).sum())  # noqa: E731
        assert objective(GeometricMedian()(x, 2)) <= objective(_weiszfeld_reference(x, 5000)) * (1 + 1e-9)


# ---------------------------------------------------------------- 3. one bad row, more than f


def _digits():
    from common.data import load_digits_tensors

    train, test = load_digits_tensors(flat=True)
    return (train.x, train.y), (test.x, test.y)


@pytest.mark.parametrize("rule", [TrimmedMean(b=2), MeanAroundMedian(keep=5), Krum(m=7)], ids=str)
def test_fixed_parameter_rules_survive_a_dropped_row(rule):
    # n = 5, f = 1, the Byzantine worker sends NaN: its row is dropped and n shrinks to 4
    (train, test) = _digits()
    torch.manual_seed(0)
    n = 7 if isinstance(rule, Krum) else 5
    cfg = SimulationConfig(num_workers=n, num_byzantine=1, steps=20, batch_size=16, lr=0.1, eval_every=20)
    result = simulate(torch.nn.Linear(64, 10), train, test, rule, NonFinite(), cfg)
    assert result.rejected_rows == 20 and result.skipped_steps == 0
    assert result.final_accuracy > 0.5


def test_more_invalid_rows_than_f_skip_the_step_instead_of_crashing():
    (train, test) = _digits()
    torch.manual_seed(0)
    # two NaN workers, the rule told f = 1: every step falls back (skipped and counted)
    cfg = SimulationConfig(num_workers=5, num_byzantine=2, tolerance=1, steps=10, batch_size=16, eval_every=10)
    model = torch.nn.Linear(64, 10)
    before = [p.detach().clone() for p in model.parameters()]
    result = simulate(model, train, test, CoordinateMedian(), NonFinite(), cfg)
    assert result.skipped_steps == 10 and result.rejected_rows == 20
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no update applied


# ---------------------------------------------------------------- 4. half precision, one check


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "rule", [Krum(), Krum(p=1, m=3), Bulyan(), NearestNeighborMixing(CoordinateMedian()), GeometricMedian()], ids=str
)
def test_half_precision_rows_are_aggregated_in_fp32(rule, dtype):
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(11, 40, generator=gen).to(dtype)
    out = rule(g, 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out, rule(g.float(), 2).to(dtype), rtol=0, atol=0)


def test_the_finite_check_runs_once_per_aggregation(monkeypatch):
    from commcomp.robust import aggregators, validation

    calls = []
    real = validation.finite_rows

    def counting(grads):
        calls.append(grads.shape)
        return real(grads)

    monkeypatch.setattr(validation, "finite_rows", counting)
    monkeypatch.setattr(aggregators, "finite_rows", counting)
    g = torch.randn(11, 30)
    composite = [
        MixTailor(build_pool(norms=[1, 2])),
        NearestNeighborMixing(Bucketing(Bulyan(), bucket_size=1)),
        Bulyan(Krum(p=3), final=MeanAroundMedian()),
    ]
    for rule in composite:
        calls.clear()
        rule(g, 2)
        assert calls == [g.shape], rule
    calls.clear()
    aggregators.aggregate_untrusted(composite[0], g, 2)
    assert calls == [g.shape]


# ---------------------------------------------------------------- quantized payloads


def test_quantized_transport_is_unbiased_and_turns_refused_rows_invalid():
    from commcomp import NUQSGD
    from commcomp.robust import aggregate_untrusted
    from commcomp.robust.simulation import quantized_transport

    transport = quantized_transport(NUQSGD(4, 64), seed=3)
    g = torch.randn(4, 256, generator=torch.Generator().manual_seed(4))
    mean = torch.stack([transport(g, step) for step in range(400)]).mean(0)
    # NUQSGD is unbiased: 400 draws average back to the rows (tolerance ~ 5 standard errors)
    assert (mean - g).abs().max() < 0.35 and (mean - g).abs().mean() < 0.06
    assert not torch.equal(transport(g, 0), transport(g, 1))  # the step is the stream offset
    huge = torch.cat([g, torch.full((1, 256), 3e37)])  # finite, but its norm overflows fp32
    sent = transport(huge, 0)
    assert torch.isnan(sent[4]).all() and torch.isfinite(sent[:4]).all()
    assert aggregate_untrusted(CoordinateMedian(), sent, 1).bad.tolist() == [False] * 4 + [True]
