"""RangeAugment: soft clip, reparameterized sampling, per-half application, PSNR and its target
loss, the curriculum, and that learned ranges steer the PSNR to the target."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recipes.rangeaugment import (
    FixedRangeAugment,
    LearnableRange,
    RangeAugment,
    cosine_curriculum,
    inverse_soft_clip,
    psnr,
    psnr_target_loss,
    soft_clip,
)

torch.set_num_threads(1)


def test_soft_clip_bounds_and_inverse():
    raw = torch.linspace(-30, 30, 101)
    v = soft_clip(raw, 0.1, 0.9)
    assert float(v.min()) >= 0.1 - 1e-6 and float(v.max()) <= 0.9 + 1e-6
    for value in (0.2, 0.5, 0.85):
        assert soft_clip(torch.tensor(inverse_soft_clip(value, 0.1, 0.9)), 0.1, 0.9).item() == pytest.approx(value, rel=1e-5)
    with pytest.raises(ValueError, match="bounds"):
        inverse_soft_clip(0.5, 1.0, 0.0)


def test_samples_uniform_in_range_and_reparameterized():
    r = LearnableRange((0.5, 1.5), (0.1, 0.9), (1.1, 10.0))
    g = torch.Generator().manual_seed(0)
    m = r.sample(20000, g)
    md = m.detach()
    lo, hi = r.low.item(), r.high.item()
    assert float(md.min()) >= lo - 1e-6 and float(md.max()) <= hi + 1e-6
    # U(lo, hi): mean (lo+hi)/2, std (hi-lo)/sqrt(12); 20k samples -> 5-sigma bounds
    se = (hi - lo) / math.sqrt(12 * 20000)
    assert abs(md.mean().item() - (lo + hi) / 2) < 5 * se
    # d E[m] / d low = d E[m] / d high = 1/2 (through the soft clip's chain rule)
    m.mean().backward()
    s_lo = (r.low.item() - 0.1) / 0.8
    assert r.raw_low.grad.item() == pytest.approx(0.5 * 0.8 * s_lo * (1 - s_lo), rel=0.05)


def test_each_op_touches_half_the_batch():
    x = torch.rand(16, 1, 8, 8) * 0.5 + 0.25  # no clipping at [0, 1]
    aug = FixedRangeAugment({"brightness": (1.5, 2.0)})
    g = torch.Generator().manual_seed(1)
    out, applied = aug(x, generator=g)
    changed = (out != x).flatten(1).any(dim=1)
    assert int(changed.sum()) == 8 and torch.equal(changed, applied)
    out3, applied3 = FixedRangeAugment({"brightness": (1.5, 2.0), "contrast": (1.5, 2.0), "noise": (0.1, 0.2)})(x, g)
    # three independent halves: 1/8 untouched on average; touched samples are exactly the changed ones
    assert torch.equal((out3 != x).flatten(1).any(dim=1), applied3)


def test_gradients_reach_range_parameters():
    torch.manual_seed(0)
    aug = RangeAugment()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = torch.rand(32, 1, 8, 8)
    y = torch.randint(0, 10, (32,))
    x_aug, applied = aug(x)
    loss = F.cross_entropy(model(x_aug), y) + psnr_target_loss(x_aug, x, 25.0, applied)
    loss.backward()
    for name, p in aug.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad) and p.grad.abs().item() > 0, name
    assert list(FixedRangeAugment({"noise": (0.0, 0.1)}).parameters(recurse=True))[0].requires_grad is False


def test_psnr_and_target_loss_hand_cases():
    x = torch.zeros(2, 1, 4, 4)
    y = x.clone()
    y[0] += 0.1  # MSE 0.01 -> 20 dB
    y[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert torch.allclose(psnr(y, x), torch.tensor([20.0, 40.0]), atol=1e-4)
    # smooth L1 (beta 1) of (20-30, 40-30) = 9.5 each
    assert psnr_target_loss(y, x, 30.0).item() == pytest.approx(9.5, rel=1e-5)
    assert psnr_target_loss(y, x, 30.0, mask=torch.tensor([True, False])).item() == pytest.approx(9.5, rel=1e-5)
    assert psnr_target_loss(y, x, 30.0, mask=torch.tensor([False, False])).item() == 0.0


def test_cosine_curriculum():
    assert cosine_curriculum(0, 10) == 40.0 and cosine_curriculum(10, 10) == 20.0
    assert cosine_curriculum(5, 10) == pytest.approx(30.0)
    vals = [cosine_curriculum(s, 10) for s in range(11)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    with pytest.raises(ValueError, match="total"):
        cosine_curriculum(0, 0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="ops"):
        RangeAugment(("blur",))
    with pytest.raises(ValueError, match="fraction"):
        RangeAugment(fraction=0.0)
    with pytest.raises(ValueError, match="low <= high"):
        FixedRangeAugment({"noise": (0.2, 0.1)})


def _median_psnr(aug, x_all, g, n=8):
    ps = []
    with torch.no_grad():
        for _ in range(n):
            x = x_all[torch.randint(0, len(x_all), (64,), generator=g)]
            xa, ap = aug(x, generator=g)
            ps.append(psnr(xa, x)[ap])
    return torch.cat(ps).median().item()


def test_psnr_tracks_target_on_toy_model():
    """Jointly train a linear classifier and the ranges on digits while the target follows the
    40 -> 20 dB cosine curriculum: the measured PSNR must follow it (within 3 dB) at both ends."""
    from common.data import load_digits_tensors

    train, _ = load_digits_tensors(seed=0)
    g = torch.Generator().manual_seed(0)
    aug = RangeAugment()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam([{"params": model.parameters(), "lr": 1e-2}, {"params": aug.parameters(), "lr": 0.2}])
    total, checkpoints = 600, {}
    for step in range(total + 1):
        target = cosine_curriculum(step, total)
        if step in (150, total):
            checkpoints[step] = (target, _median_psnr(aug, train.x, g))
        idx = torch.randint(0, len(train), (64,), generator=g)
        x, y = train.x[idx], train.y[idx]
        xa, ap = aug(x, generator=g)
        loss = F.cross_entropy(model(xa), y) + psnr_target_loss(xa, x, target, ap)
        opt.zero_grad()
        loss.backward()
        opt.step()
    start_psnr = checkpoints[150][1]
    for target, measured in checkpoints.values():
        assert abs(measured - target) < 3.0, checkpoints
    assert start_psnr - checkpoints[total][1] > 10.0  # the augmentation really got stronger
