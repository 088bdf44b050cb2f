"""Fourier-L-inf geometry and the optimization-bias helpers for linear models."""
import math

import pytest
import torch

from common.models import MLP, LinearCircularConvNet
from recipes.attacks import (
    fourier_linf_ascent_direction,
    fourier_linf_norm,
    project_fourier_linf,
)
from recipes.fourier import (
    dual_norm,
    end_to_end_linear,
    linear_robust_accuracy,
    max_margin_linear,
    normalized_margin,
    separable_gaussian,
    steepest_descent_linear,
    train_binary_full_batch,
)

torch.set_num_threads(1)


def test_fourier_norm_by_hand():
    # A constant c image (8x8) has only a DC coefficient, 8c under the orthonormal DFT.
    x = torch.full((1, 1, 8, 8), 0.25, dtype=torch.float64)
    assert float(fourier_linf_norm(x)) == pytest.approx(2.0)
    # cos(2 pi k n / 8) along one axis: two coefficients of modulus sqrt(64)/2 = 4.
    n = torch.arange(8, dtype=torch.float64)
    wave = torch.cos(2 * math.pi * 3 * n / 8).expand(8, 8).reshape(1, 1, 8, 8)
    assert float(fourier_linf_norm(wave)) == pytest.approx(4.0)
    # Per sample, maximum over channels.
    two = torch.cat([x, 2 * x], dim=1)
    assert float(fourier_linf_norm(two)) == pytest.approx(4.0)


def test_fourier_projection_idempotent_bounded_and_real():
    torch.manual_seed(0)
    d = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    for eps in (0.05, 0.5, 5.0):
        p = project_fourier_linf(d, eps)
        assert p.dtype == d.dtype and p.shape == d.shape
        assert (fourier_linf_norm(p) <= eps * (1 + 1e-12)).all()
        torch.testing.assert_close(project_fourier_linf(p, eps), p, rtol=0, atol=1e-12)
    inside = project_fourier_linf(d, 0.1)
    torch.testing.assert_close(project_fourier_linf(inside, 1.0), inside, rtol=0, atol=1e-12)


def test_fourier_projection_is_the_euclidean_projection():
    # No feasible point is closer to d than its projection (checked against random feasible points).
    torch.manual_seed(1)
    d = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    p = project_fourier_linf(d, 0.3)
    best = (d - p).norm()
    for _ in range(200):
        q = project_fourier_linf(p + 0.2 * torch.randn_like(p), 0.3)
        assert (d - q).norm() >= best - 1e-12


def test_fourier_dual_norm_is_attained():
    torch.manual_seed(2)
    w = torch.randn(8, 8, dtype=torch.float64)
    worst = 0.2 * fourier_linf_ascent_direction(w.reshape(1, 1, 8, 8))[0, 0]
    assert float(fourier_linf_norm(worst.reshape(1, 1, 8, 8))) == pytest.approx(0.2)
    assert float((w * worst).sum()) == pytest.approx(0.2 * float(dual_norm(w, "fourier-linf")))


def test_linear_robust_accuracy_matches_definition():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64)
    x = torch.tensor([[1.0, 0.0], [0.0, -1.0], [3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, -1.0])
    # signed scores y <w,x> = 1, 2, -1; ||w||_1 = 3 (L-inf attack), ||w||_2 = sqrt 5.
    assert linear_robust_accuracy(w, x, y, 0.0, "linf") == pytest.approx(2 / 3)
    assert linear_robust_accuracy(w, x, y, 0.5, "linf") == pytest.approx(1 / 3)
    assert linear_robust_accuracy(w, x, y, 0.4, "l2") == pytest.approx(2 / 3)
    assert float(normalized_margin(w, x[:2], y[:2], "l1")) == pytest.approx(0.5)


@pytest.mark.parametrize("perturbation", ["l2", "linf", "l1"])
def test_max_margin_is_feasible_and_optimal(perturbation):
    data = separable_gaussian(12, 30, seed=3, n_test=0)
    w, margin = max_margin_linear(data.x, data.y, perturbation)
    assert (data.y * (data.x @ w)).min() >= 1 - 1e-6  # feasible
    assert margin == pytest.approx(1 / float(dual_norm(w, perturbation)), rel=1e-6)
    torch.manual_seed(0)
    for _ in range(50):  # no other separator does better
        v = torch.randn(30, dtype=torch.float64)
        assert float(normalized_margin(v, data.x, data.y, perturbation)) <= margin + 1e-9


@pytest.mark.parametrize(
    "geometry, perturbation, lr",
    [("l2", "l2", 0.1), ("l1", "linf", 0.1), ("linf", "l1", 0.002)],
)
def test_steepest_descent_reaches_its_max_margin(geometry, perturbation, lr):
    # GD -> max L2 margin, coordinate descent -> max margin against L-inf perturbations,
    # sign GD -> max margin against L1 perturbations (Gunasekar et al. 2018).
    data = separable_gaussian(10, 40, seed=4, n_test=0)
    w = steepest_descent_linear(data.x, data.y, geometry, steps=6000, lr=lr)
    _, best = max_margin_linear(data.x, data.y, perturbation)
    assert float(normalized_margin(w, data.x, data.y, perturbation)) >= 0.95 * best


def test_end_to_end_predictor_of_linear_networks():
    torch.manual_seed(5)
    x = torch.randn(7, 6, 6, dtype=torch.float64)
    for model in (LinearCircularConvNet((6, 6), init_scale=0.5).double(),
                  MLP(36, (10,), 1, activation=None, bias=True).double()):
        beta, b = end_to_end_linear(model, (6, 6))
        torch.testing.assert_close(model(x), (x * beta).flatten(1).sum(1) + b)
    # Circular-conv net: F beta = conj(F w1) * F w2 / sqrt(N) in the orthonormal DFT.
    conv = LinearCircularConvNet((6, 6), init_scale=0.5).double()
    beta, _ = end_to_end_linear(conv, (6, 6))
    lhs = torch.fft.fft2(beta)
    rhs = torch.fft.fft2(conv.kernel).conj() * torch.fft.fft2(conv.readout)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


def test_circular_conv_network_has_larger_fourier_margin_than_fully_connected():
    data = separable_gaussian(8, (8, 8), seed=1, n_test=0)
    margins = {}
    for name in ("conv", "fc"):
        torch.manual_seed(0)
        if name == "conv":
            model = LinearCircularConvNet((8, 8), init_scale=0.01).double()
        else:
            model = MLP(64, (64,), 1, activation=None, bias=False).double()
            for p in model.parameters():
                torch.nn.init.normal_(p, std=0.01)
        losses = train_binary_full_batch(model, data.x, data.y, steps=1500, lr=0.5)
        assert losses[-1] < 1e-3
        beta, _ = end_to_end_linear(model, (8, 8))
        margins[name] = float(normalized_margin(beta, data.x, data.y, "fourier-linf"))
    assert margins["conv"] > 1.1 * margins["fc"]


def test_bad_arguments():
    data = separable_gaussian(4, 5, seed=0, n_test=0)
    with pytest.raises(ValueError, match="geometry"):
        steepest_descent_linear(data.x, data.y, "l3")
    with pytest.raises(ValueError, match="perturbation"):
        dual_norm(torch.ones(3), "l0")
    with pytest.raises(ValueError, match="n must be"):
        separable_gaussian(0, 5)
    with pytest.raises(ValueError, match="fourier"):
        max_margin_linear(data.x, data.y, "fourier-linf")
