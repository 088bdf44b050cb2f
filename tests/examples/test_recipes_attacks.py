"""PGD attacks and norm balls: feasibility, optimality on linear models, loss increase."""
import pytest
import torch
import torch.nn.functional as F

from recipes.attacks import (
    FourierLinfBall,
    L2Ball,
    LinfBall,
    get_ball,
    l2_norm,
    linf_norm,
    make_pgd,
    pgd_attack,
)

torch.set_num_threads(1)

BALLS = ["linf", "l2", "fourier-linf"]
EPS = {"linf": 0.1, "l2": 0.5, "fourier-linf": 0.1}


def _small_cnn() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(256, 10)
    ).double()


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(2)
    return torch.rand((n, 1, 8, 8), generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("name", BALLS)
def test_pgd_stays_in_ball_and_box(name):
    model, (x, y) = _small_cnn(), _batch()
    ball, eps = get_ball(name), EPS[name]
    bounds = None if name == "fourier-linf" else (0.0, 1.0)
    x_adv = pgd_attack(model, x, y, ball, eps, steps=10, bounds=bounds)
    assert (ball.norm(x_adv - x) <= eps * (1 + 1e-9)).all()
    if bounds is not None:
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # Fourier with the box: the norm bound still holds (projection comes last).
    if name == "fourier-linf":
        x_box = pgd_attack(model, x, y, ball, eps, steps=10, bounds=(0.0, 1.0))
        assert (ball.norm(x_box - x) <= eps * (1 + 1e-9)).all()


@pytest.mark.parametrize("name", BALLS)
def test_pgd_increases_loss(name):
    model, (x, y) = _small_cnn(), _batch(64)
    bounds = None if name == "fourier-linf" else (0.0, 1.0)
    x_adv = pgd_attack(model, x, y, name, EPS[name], steps=20, bounds=bounds)
    clean = F.cross_entropy(model(x), y, reduction="none")
    adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert adv.mean() > clean.mean() + 1e-3
    # Per sample: PGD from a random start may end slightly below the clean loss, rarely.
    assert (adv >= clean - 1e-6).double().mean() >= 0.9


@pytest.mark.parametrize("name", BALLS)
def test_pgd_on_linear_model_reaches_the_dual_norm(name):
    # For score s(x) = <w, x>, the largest decrease over the ball is eps * ||w||_* exactly:
    # L1 for L-inf, L2 for L2, ||F w||_1 for Fourier-L-inf (Parseval). Brute-force duals here.
    torch.manual_seed(3)
    w = torch.randn(1, 8, 8, dtype=torch.float64)
    model = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.ones(5, dtype=torch.long)  # label 1: the attack lowers the score
    eps = EPS[name]
    dual = {
        "linf": w.abs().sum(),
        "l2": w.norm(),
        "fourier-linf": torch.fft.fft2(w, norm="ortho").abs().sum(),
    }[name]
    x_adv = pgd_attack(model, x, y, name, eps, steps=5, step_size=eps, random_start=False, bounds=None)
    drop = model(x) - model(x_adv)
    torch.testing.assert_close(drop, torch.full_like(drop, float(eps * dual)), rtol=1e-9, atol=1e-9)


def test_ascent_directions_are_unit_and_maximal():
    torch.manual_seed(4)
    g = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    for ball, dual in [
        (LinfBall(), g.flatten(1).abs().sum(1)),
        (L2Ball(), g.flatten(1).norm(dim=1)),
        (FourierLinfBall(), torch.fft.fft2(g, norm="ortho").abs().flatten(1).sum(1)),
    ]:
        u = ball.ascent_direction(g)
        assert (ball.norm(u) <= 1 + 1e-9).all()
        torch.testing.assert_close((g * u).flatten(1).sum(1), dual)
        # No random point of the unit ball does better.
        for _ in range(20):
            v = ball.project(torch.randn_like(g) * 3, 1.0)
            assert ((g * v).flatten(1).sum(1) <= dual + 1e-9).all()


def test_random_init_inside_ball():
    x = torch.zeros(200, 1, 8, 8, dtype=torch.float64)
    for ball in (LinfBall(), L2Ball(), FourierLinfBall()):
        d = ball.random_init(x, 0.3)
        assert (ball.norm(d) <= 0.3 + 1e-9).all()
        assert ball.norm(d).mean() > 0.05  # not degenerate


def test_l2_projection_by_hand():
    d = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    p = L2Ball().project(d, 1.0)
    torch.testing.assert_close(p, torch.tensor([[0.6, 0.8], [0.3, 0.4]]))
    torch.testing.assert_close(l2_norm(d), torch.tensor([5.0, 0.5]))
    torch.testing.assert_close(linf_norm(d), torch.tensor([4.0, 0.4]))


def test_make_pgd_and_argument_checks():
    model, (x, y) = _small_cnn(), _batch(4)
    assert torch.equal(pgd_attack(model, x, y, "linf", 0.0, steps=3), x)
    x_adv = make_pgd("linf", 0.05, 3)(model, x, y)
    assert linf_norm(x_adv - x).max() <= 0.05 + 1e-12
    with pytest.raises(ValueError, match="ball"):
        get_ball("l3")
    with pytest.raises(ValueError, match="steps"):
        pgd_attack(model, x, y, "linf", 0.1, steps=0)
    with pytest.raises(ValueError, match="eps"):
        pgd_attack(model, x, y, "linf", -0.1, steps=1)
    with pytest.raises(ValueError, match="bounds"):
        pgd_attack(model, x, y, "linf", 0.1, steps=1, bounds=(1.0, 0.0))
    with pytest.raises(ValueError, match="spatial_dims"):
        FourierLinfBall(spatial_dims=3)
