"""SOAR: finite-difference augmented HVP vs exact autograd, the regularizer, its clipped gradient,
and the shared train/eval loop under 2 Gloo ranks."""
import pytest
import torch
import torch.nn.functional as F
from _dist import run_ranks

from common.models import DigitsCNN
from recipes.soar import (
    SOARLoss,
    augmented_hvp_from_gradients,
    finite_difference_augmented_hvp,
    random_unit_augmented,
    soar_regularizer,
    soar_scale,
)

torch.set_num_threads(1)


def _tanh_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5)
    ).double()


def _exact_augmented_hessian(model, x1, y1):
    """Brute force: the full (d+1)x(d+1) augmented Hessian of one sample's loss."""
    f = lambda v: F.cross_entropy(model(v.reshape((1,) + x1.shape)), y1.reshape(1))  # noqa: E731
    v = x1.flatten()
    h = torch.autograd.functional.hessian(f, v)
    g = torch.autograd.functional.jacobian(f, v)
    d = v.numel()
    aug = torch.empty(d + 1, d + 1, dtype=v.dtype)
    aug[:d, :d], aug[:d, d], aug[d, :d], aug[d, d] = h, g, g, 1.0
    return aug


@pytest.mark.parametrize("which", ["tanh-mlp", "relu-cnn"])
def test_finite_difference_hvp_matches_exact(which):
    if which == "tanh-mlp":
        model, x = _tanh_net(), torch.rand(4, 1, 4, 4, dtype=torch.float64)
        y = torch.tensor([0, 1, 2, 3])
    else:
        torch.manual_seed(0)
        model = DigitsCNN(width=4, hidden=8).double()
        x, y = torch.rand(3, 1, 8, 8, dtype=torch.float64), torch.tensor([1, 5, 9])
    z_x, z_y = random_unit_augmented(x, torch.Generator().manual_seed(1))
    top, bottom = finite_difference_augmented_hvp(model, x, y, z_x, z_y, h=1e-6)
    for i in range(x.shape[0]):
        exact = _exact_augmented_hessian(model, x[i], y[i]) @ torch.cat([z_x[i].flatten(), z_y[i : i + 1]])
        fd = torch.cat([top[i].flatten(), bottom[i : i + 1]])
        torch.testing.assert_close(fd, exact, rtol=1e-4, atol=1e-6)


def test_augmented_hvp_by_hand():
    # Quadratic loss l(x) = 1/2 x^T A x: g = A x, H = A, so the forward difference is exact.
    a = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    z_x, z_y = torch.tensor([[0.6, 0.0]], dtype=torch.float64), torch.tensor([0.8], dtype=torch.float64)
    g, g_shift = x @ a, (x + 0.5 * z_x) @ a
    top, bottom = augmented_hvp_from_gradients(g, g_shift, z_x, z_y, 0.5)
    aug = torch.tensor([[2.0, 1.0, 1.0], [1.0, 3.0, -2.0], [1.0, -2.0, 1.0]], dtype=torch.float64)
    expected = aug @ torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    torch.testing.assert_close(torch.cat([top[0], bottom]), expected)


def test_regularizer_is_scaled_power_step_and_below_spectral_norm():
    model, x = _tanh_net(), torch.rand(3, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 3, 4])
    eps = 0.1
    reg = soar_regularizer(model, x, y, eps, "linf", h=1e-6, generator=torch.Generator().manual_seed(7))
    z_x, z_y = random_unit_augmented(x, torch.Generator().manual_seed(7))  # same draw
    norms, spectral = [], []
    for i in range(3):
        aug = _exact_augmented_hessian(model, x[i], y[i])
        norms.append((aug @ torch.cat([z_x[i].flatten(), z_y[i : i + 1]])).norm())
        spectral.append(torch.linalg.eigvalsh(aug).abs().max())
    scale = 0.5 * (eps**2 * 16 + 1)
    assert soar_scale("linf", eps, 16) == pytest.approx(scale)
    assert soar_scale("l2", eps, 16) == pytest.approx(0.5 * (eps**2 + 1))
    torch.testing.assert_close(reg, scale * torch.stack(norms).mean(), rtol=1e-4, atol=0)
    assert all(n <= s + 1e-6 for n, s in zip(norms, spectral))


def _flat_grad(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_soar_loss_clips_regularizer_gradient_separately():
    torch.manual_seed(0)
    model = DigitsCNN(width=4, hidden=8)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))

    def grad_of(**kw):
        model.zero_grad()
        loss = SOARLoss(0.1, generator=torch.Generator().manual_seed(5), **kw)(model, x, y)
        loss.backward()
        return float(loss.detach()), _flat_grad(model).clone()

    ce_value, ce_grad = grad_of(lam=0.0)
    val_small, g_small = grad_of(lam=1.0, grad_clip=1e-3)
    val_big, g_big = grad_of(lam=1.0, grad_clip=1e6)
    # The returned value is the cross-entropy alone; the regularizer only changes the gradient.
    assert val_small == pytest.approx(ce_value) and val_big == pytest.approx(ce_value)
    reg_small, reg_big = g_small - ce_grad, g_big - ce_grad
    assert reg_small.norm() == pytest.approx(1e-3, rel=1e-3)
    assert reg_big.norm() > 1e-2  # unclipped regularizer gradient is much larger
    cos = torch.dot(reg_small, reg_big) / (reg_small.norm() * reg_big.norm())
    assert cos > 0.999  # clipping rescales, it does not turn


def test_soar_loss_rejects_bad_arguments():
    for kw, word in [({"eps": 0.0}, "eps"), ({"eps": 0.1, "norm": "l1"}, "norm"), ({"eps": 0.1, "lam": -1.0}, "lam"),
                     ({"eps": 0.1, "h": 0.0}, "h"), ({"eps": 0.1, "grad_clip": 0.0}, "grad_clip")]:
        with pytest.raises(ValueError, match=word):
            SOARLoss(**kw)


def _ddp_soar_step(rank, world_size):
    from common import runtime
    from common.data import load_digits_tensors
    from common.training import evaluate, fit, unwrap

    ctx = runtime.DistContext(rank, world_size, torch.device("cpu"))
    torch.manual_seed(0)
    model = runtime.wrap_ddp(DigitsCNN(width=4, hidden=16), ctx, "none")
    g = torch.Generator().manual_seed(100 + rank)
    x, y = torch.rand(6, 1, 8, 8, generator=g), torch.randint(0, 10, (6,), generator=g)
    # Local (no-DDP) gradient of this rank's SOAR loss, then the DDP one from the same draws.
    local = unwrap(model)
    local.zero_grad()
    SOARLoss(0.1, generator=torch.Generator().manual_seed(rank))(local, x, y).backward()
    local_grad = _flat_grad(local).clone()
    model.zero_grad()
    SOARLoss(0.1, generator=torch.Generator().manual_seed(rank))(model, x, y).backward()
    ddp_grad = _flat_grad(unwrap(model)).clone()
    # A short run of the shared loop: both ranks must report the same metrics.
    train, test = load_digits_tensors(seed=0)
    torch.manual_seed(0)
    model = runtime.wrap_ddp(DigitsCNN(), ctx, "none")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = fit(model, train, ctx, optimizer=opt, epochs=5, batch_size=32)
    # Plain lists: tensors sent between processes would need the sender alive to be read.
    return local_grad.tolist(), ddp_grad.tolist(), history[-1]["loss"], evaluate(model, test, ctx)


def test_soar_under_ddp_and_shared_loop():
    results = run_ranks(_ddp_soar_step, 2)
    mean_local = (torch.tensor(results[0][0]) + torch.tensor(results[1][0])) / 2
    assert not torch.allclose(torch.tensor(results[0][0]), torch.tensor(results[1][0]))  # ranks differ
    for _, ddp_grad, _, _ in results:
        torch.testing.assert_close(torch.tensor(ddp_grad), mean_local, rtol=1e-4, atol=1e-6)
    assert results[0][2] == results[1][2] and results[0][3] == results[1][3]
    assert results[0][3] > 0.8  # 5 epochs on digits already classify most test images
