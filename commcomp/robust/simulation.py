"""Simulate ``n`` workers, ``f`` of them Byzantine, training one model in one process.

Each step every worker draws a minibatch from its own i.i.d. shard and computes its gradient
(all workers at once with ``torch.func.vmap``); the Byzantine workers' gradients are replaced
by the attack's output (the attack sees ``aggregator.attacker_view()``: for MixTailor the pool,
never the seed or a draw); optionally every row travels through a lossy ``transport`` (e.g.
:func:`quantized_transport`: 4-bit payloads); the defence aggregates through
:func:`~commcomp.robust.aggregators.aggregate_untrusted` (non-finite rows dropped or zeroed and
counted; a step with more invalid rows than ``f`` is skipped and counted); a server SGD step
applies the result. This is the setting of the robust-aggregation papers (Krum, Bulyan, IPM,
ALIE, MixTailor).

Data are plain tensors: ``train`` and ``test`` are ``(x, y)`` pairs of inputs and int64 class
labels ``0..C-1`` (``examples/mixtailor_digits.py`` passes scikit-learn's digits this way).

Example::

    >>> import torch
    >>> from commcomp.robust import CoordinateMedian, IPM
    >>> from commcomp.robust.simulation import SimulationConfig, simulate
    >>> g = torch.Generator().manual_seed(0)
    >>> y = torch.randint(10, (400,), generator=g)
    >>> x = 3 * torch.eye(10, 64)[y] + torch.randn(400, 64, generator=g)  # 10 separable classes
    >>> train, test = (x[:300], y[:300]), (x[300:], y[300:])
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 10))
    >>> cfg = SimulationConfig(num_workers=5, num_byzantine=1, steps=20)
    >>> result = simulate(model, train, test, CoordinateMedian(), IPM(0.1), cfg)
    >>> 0.0 <= result.final_accuracy <= 1.0
    True
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from .aggregators import Aggregator, aggregate_untrusted
from .attacks import Attack, flip_labels
from .validation import InvalidPolicy, check_f

if TYPE_CHECKING:
    from ..quantizers import Quantizer

__all__ = ["SimulationConfig", "SimulationResult", "Transport", "simulate", "evaluate", "quantized_transport"]

Transport = Callable[[torch.Tensor, int], torch.Tensor]
"""``transport(rows, step) -> rows``: what the ``(n, d)`` rows look like after the wire."""

Samples = tuple[torch.Tensor, torch.Tensor]
"""Inputs ``x`` (first dimension: samples) and int64 class labels ``y`` of one split."""


@dataclass(frozen=True)
class SimulationConfig:
    """Hyperparameters of one simulated run.

    Attributes:
        num_workers: n, all workers (honest and Byzantine).
        num_byzantine: how many of them the attack controls (the last ones).
        tolerance: the f the aggregator is told (default: ``num_byzantine``).
        batch_size: per-worker minibatch.
        steps: server steps.
        lr, momentum, weight_decay: server SGD on the aggregated gradient.
        eval_every: test accuracy every this many steps (and at the end).
        seed: model init, shards and minibatches.
        invalid_policy: what :func:`sanitize` does with non-finite rows.
    """

    num_workers: int = 12
    num_byzantine: int = 2
    tolerance: int | None = None
    batch_size: int = 32
    steps: int = 300
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    eval_every: int = 50
    seed: int = 0
    invalid_policy: InvalidPolicy = "drop"

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"num_workers must be an int >= 1, got {self.num_workers!r}")
        check_f(self.num_byzantine, self.num_workers)
        if self.tolerance is not None:
            check_f(self.tolerance, self.num_workers)
        for name in ("batch_size", "steps", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")

    @property
    def f(self) -> int:
        return self.num_byzantine if self.tolerance is None else self.tolerance


@dataclass
class SimulationResult:
    """History of one run: ``steps[i]`` -> ``test_accuracy[i]``, ``train_loss[i]`` (honest
    workers' mean minibatch loss at that step). ``rejected_rows`` counts invalid rows that
    were removed or zeroed, ``skipped_steps`` steps with more invalid rows than ``f`` (nothing
    aggregated, no update), and
    ``diverged_at`` the step at which the honest gradients became non-finite (training stops
    there and the last entry is the accuracy of the diverged model)."""

    steps: list[int] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    rejected_rows: int = 0
    skipped_steps: int = 0
    diverged_at: int | None = None

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1]


def _check_samples(name: str, data: Samples) -> Samples:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)):
        raise ValueError(f"{name} must be an (x, y) pair of tensors, got {type(data).__name__}")
    x, y = data
    if y.dim() != 1 or y.dtype != torch.int64:
        raise ValueError(f"{name}: y must be a 1-D int64 label tensor, got shape {tuple(y.shape)} and {y.dtype}")
    if x.dim() < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"{name}: x and y must hold the same number (>= 1) of samples, got "
                         f"x {tuple(x.shape)} and y {tuple(y.shape)}")
    if int(y.min()) < 0:
        raise ValueError(f"{name}: class labels y must be >= 0, got {int(y.min())}")
    return x, y


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Samples, device: torch.device | str = "cpu") -> float:
    """Top-1 accuracy of ``model`` on the ``(x, y)`` pair ``data``."""
    x, y = _check_samples("data", data)
    model.eval()
    pred = model(x.to(device)).argmax(dim=1)
    return float((pred == y.to(device)).float().mean())


def _shards(num_samples: int, n: int, gen: torch.Generator) -> torch.Tensor:
    per = num_samples // n
    if per < 1:
        raise ValueError(f"{num_samples} training samples cannot be split over num_workers={n}")
    return torch.randperm(num_samples, generator=gen)[: n * per].view(n, per)


def simulate(
    model: torch.nn.Module,
    train: Samples,
    test: Samples,
    aggregator: Aggregator,
    attack: Attack | None,
    config: SimulationConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
    transport: Transport | None = None,
) -> SimulationResult:
    """Train ``model`` (in place) with ``config.num_workers`` simulated workers on ``train``,
    reporting accuracy on ``test`` (both ``(x, y)`` pairs of tensors, labels int64 ``0..C-1``).

    The aggregator sees the honest rows first and the Byzantine rows last; every rule here is
    permutation invariant up to ties (MoNNA trusts row 0: an honest one). ``progress`` wraps the
    step range (e.g. tqdm). ``transport`` is applied to all rows after the attack (the
    attackers, like a real rank, craft from fp32 gradients and send through the same codec).
    """
    n, byz, f = config.num_workers, config.num_byzantine, config.f
    x_train, y_train = _check_samples("train", train)
    test = _check_samples("test", test)
    if byz > 0 and attack is None:
        raise ValueError("attack must be given when num_byzantine > 0")
    aggregator.check_workers(n, f)
    device = torch.device(device)
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device)
    shards = _shards(y_train.shape[0], n, gen)
    x_all, y_all = x_train.to(device), y_train.to(device)
    num_classes = int(y_train.max()) + 1
    attack_gen = torch.Generator().manual_seed(config.seed + 1)

    params = [p for p in model.parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    sizes = [p.numel() for p in params]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)

    def loss_fn(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    # one vmapped call computes every worker's gradient (and loss) on its own minibatch
    per_worker = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))

    result = SimulationResult()
    steps: Iterable[int] = range(config.steps)
    for step in progress(steps) if progress else steps:
        model.train()
        cols = torch.randint(shards.shape[1], (n, config.batch_size), generator=gen)
        idx = shards.gather(1, cols).to(device)
        xb, yb = x_all[idx], y_all[idx]
        if attack is not None and attack.corrupts_labels and byz:
            yb[n - byz :] = flip_labels(yb[n - byz :], num_classes)
        detached = {k: p.detach() for k, p in zip(names, params)}
        grads_dict, losses = per_worker(detached, xb, yb)
        grads = torch.cat([grads_dict[k].reshape(n, -1) for k in names], dim=1)
        honest = grads[: n - byz]
        if not bool(torch.isfinite(honest).all()):
            # the model itself has blown up (e.g. under a successful attack): nothing left to train
            result.diverged_at = step
            break
        if byz:
            sent = attack(honest, byz, own=grads[n - byz :], aggregator=aggregator.attacker_view(),
                          tolerance=f, generator=attack_gen)
            grads = torch.cat([honest, sent.to(grads.dtype)])
        if transport is not None:
            grads = transport(grads, step)
        outcome = aggregate_untrusted(aggregator, grads, f, config.invalid_policy)
        result.rejected_rows += int(outcome.bad.sum())
        if outcome.value is None:
            result.skipped_steps += 1
        else:
            agg = outcome.value
            for p, g in zip(params, agg.split(sizes)):
                p.grad = g.view_as(p).to(p.dtype)
            opt.step()
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            result.steps.append(step + 1)
            result.test_accuracy.append(evaluate(model, test, device))
            result.train_loss.append(float(losses[: n - byz].mean()))
    if result.diverged_at is not None:
        result.steps.append(result.diverged_at)
        result.test_accuracy.append(evaluate(model, test, device))
        result.train_loss.append(float("nan"))
    return result


def quantized_transport(quantizer: "Quantizer", seed: int = 0) -> Transport:
    """Every row quantized and dequantized by ``quantizer`` (e.g. ``NUQSGD(4, 512)``: the
    4-bit payloads of the DDP hook's codec), worker ``i`` with its own Philox stream and the
    step as offset. Rows the quantizer refuses (inf/NaN, or a norm that overflows fp32) arrive
    as NaN: the hook sends those as the non-finite marker, an invalid row.

    >>> import torch
    >>> from commcomp import NUQSGD
    >>> t = quantized_transport(NUQSGD(4, 64), seed=1)
    >>> t(torch.randn(3, 100), 0).shape
    torch.Size([3, 100])
    """
    from ..quantizers import Quantizer

    if not isinstance(quantizer, Quantizer):
        raise ValueError(f"quantizer must be a commcomp Quantizer, got {type(quantizer).__name__}")

    def transport(rows: torch.Tensor, step: int) -> torch.Tensor:
        out = []
        for i, row in enumerate(rows):
            try:
                q = quantizer.quantize(row.float().contiguous(), seed=seed * 1_000_003 + i, offset=step)
            except ValueError:  # not finite, or its norm overflows
                out.append(torch.full_like(row, float("nan")))
                continue
            out.append(quantizer.dequantize(q).to(rows.dtype))
        return torch.stack(out)

    return transport
