"""Per-example gradients of a whole model, in the cheapest form each parameter allows.

* Weights of ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``, zero padding) are kept as factors
  ``A`` (inputs, saved by a forward hook) and ``G`` (output gradients, saved by a tensor hook that
  the forward hook attaches to the module output): the per-example gradient is
  ``sum_t G[i, t] (outer) A[i, t]`` and is never formed (see :mod:`commcomp.sampling.factors`).
* Biases of those layers are the row sums ``sum_t G[i, t]``: small dense vectors.
* Every other trainable parameter (norm layers, embeddings, custom modules) is differentiated per
  example with ``torch.func`` (``vmap`` over ``grad``), so any model works; only those parameters
  are materialized, ``B`` times their size.

Assumption shared by all three paths: example ``i``'s loss depends only on input ``i`` (no
BatchNorm in training mode, no cross-example losses), and a Linear/Conv2d weight is used only
through its own module's ``forward`` (several calls of that module are fine: their positions are
concatenated).

Example::

    >>> import torch
    >>> from commcomp.sampling import PerExampleGradients
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    >>> capture = PerExampleGradients(model, torch.nn.CrossEntropyLoss(reduction="none"))
    >>> batch = capture(torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
    >>> [tuple(f.A.shape) for f in batch.layers], tuple(batch.dense.shape)
    ([(5, 1, 4), (5, 1, 3)], (5, 5))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .factors import Method, example_sq_norms

__all__ = ["LossFn", "LayerFactors", "BatchGradients", "PerExampleGradients", "unwrap_model"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(output, target) -> (B,)`` per-example losses (e.g. ``CrossEntropyLoss(reduction="none")``)."""


@dataclass(frozen=True)
class LayerFactors:
    """One factored weight: ``A (B, T, din)`` inputs and ``G (B, T, dout)`` output gradients."""

    name: str
    A: torch.Tensor
    G: torch.Tensor


@dataclass(frozen=True)
class BatchGradients:
    """Per-example gradients of one batch: factored ``layers`` plus ``dense (B, P)`` for the rest
    (in :attr:`PerExampleGradients.dense_names` order), and the per-example ``losses (B,)``."""

    layers: list[LayerFactors]
    dense: torch.Tensor
    losses: torch.Tensor

    def __len__(self) -> int:
        return int(self.losses.shape[0])

    def sq_norms(self, method: Method = "auto") -> torch.Tensor:
        """``||g_i||^2`` over all parameters: shape ``(B,)``."""
        total = self.dense.square().sum(1)
        for f in self.layers:
            total = total + example_sq_norms(f.A, f.G, method)
        return total


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (geometry passes must not trigger DDP's allreduce)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _factorable(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return module.weight.requires_grad
    if isinstance(module, nn.Conv2d):
        return (
            module.weight.requires_grad
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
    return False


def _unfold_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer input as ``(B, T, din)`` rows whose outer products with ``G`` make the weight gradient."""
    if isinstance(module, nn.Conv2d):
        # unfold's (cin, kh, kw) order matches weight.view(cout, -1), so the product reshapes back.
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        return cols.transpose(1, 2)
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _flatten_output_grad(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Conv2d):
        return g.reshape(g.shape[0], g.shape[1], -1).transpose(1, 2)
    return g.reshape(g.shape[0], -1, g.shape[-1])


class PerExampleGradients:
    """Compute :class:`BatchGradients` of ``model`` under the per-example ``loss_fn``.

    Hooks are attached only for the duration of a call, so the model is left untouched, and
    ``.grad`` of the parameters is never written.

    Args:
        model: any module (a DDP wrapper is unwrapped). Examples must not interact in ``forward``.
        loss_fn: ``loss_fn(output, target) -> (B,)`` per-example losses.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        if not callable(loss_fn):
            raise ValueError("loss_fn must be callable: loss_fn(output, target) -> (B,) losses")
        self.model = unwrap_model(model)
        self.loss_fn = loss_fn
        names = {id(p): n for n, p in self.model.named_parameters()}
        self._factored: dict[int, tuple[str, nn.Module]] = {}  # weight id -> (name, module)
        self._modules: list[nn.Module] = []
        bias_ids: dict[int, int] = {}  # bias id -> weight id of its module
        for module in self.model.modules():
            if _factorable(module):
                wid = id(module.weight)
                self._factored.setdefault(wid, (names[wid], module))
                self._modules.append(module)
                if module.bias is not None and module.bias.requires_grad:
                    bias_ids[id(module.bias)] = wid
        # Dense layout: every other trainable parameter, in named_parameters() order.
        self.dense_names: list[str] = []
        self._dense_sizes: list[int] = []
        self._dense_source: list[tuple[str, int]] = []  # ("bias", weight id) or ("func", 0)
        self._func_params: dict[str, nn.Parameter] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad or id(p) in self._factored:
                continue
            self.dense_names.append(name)
            self._dense_sizes.append(p.numel())
            if id(p) in bias_ids:
                self._dense_source.append(("bias", bias_ids[id(p)]))
            else:
                self._dense_source.append(("func", 0))
                self._func_params[name] = p
        if not self._factored and not self.dense_names:
            raise ValueError("model has no trainable parameters")

    @property
    def factored_names(self) -> list[str]:
        """Names of the weights kept in factored form, in :attr:`BatchGradients.layers` order."""
        return [name for name, _ in self._factored.values()]

    @property
    def factored_shapes(self) -> list[tuple[int, int]]:
        """``(dout, din)`` of each factored weight (Conv2d: ``din = cin * kh * kw``)."""
        return [(m.weight.shape[0], m.weight[0].numel()) for _, m in self._factored.values()]

    @property
    def dense_size(self) -> int:
        """``P``: length of the dense part of one example's gradient."""
        return sum(self._dense_sizes)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor) -> BatchGradients:
        """Per-example gradients of the batch ``(inputs, targets)``."""
        inputs_of: dict[int, list[torch.Tensor]] = {}
        grads_of: dict[int, dict[int, torch.Tensor]] = {}

        def forward_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            wid = id(module.weight)
            calls = inputs_of.setdefault(wid, [])
            call = len(calls)
            calls.append(_unfold_input(module, args[0].detach()))
            slot = grads_of.setdefault(wid, {})

            def save_grad(g: torch.Tensor) -> None:
                slot[call] = _flatten_output_grad(module, g.detach())

            # A tensor hook (not a module backward hook) still sees the gradient of this very
            # output when a later in-place op (ReLU(inplace=True)) rewrites it.
            output.register_hook(save_grad)

        handles = [m.register_forward_hook(forward_hook) for m in self._modules]
        try:
            with torch.enable_grad():
                losses = self.loss_fn(self.model(inputs), targets)
                if losses.dim() != 1 or losses.shape[0] != inputs.shape[0]:
                    raise ValueError(
                        f"loss_fn must return one loss per example, shape ({inputs.shape[0]},), got {tuple(losses.shape)}"
                    )
                weights = [m.weight for _, m in self._factored.values()]
                if weights:
                    # Drives the backward pass that fires the tensor hooks; summing per-example
                    # losses keeps every output gradient the gradient of its own example's loss.
                    torch.autograd.grad(losses.sum(), weights, allow_unused=True)
        finally:
            for h in handles:
                h.remove()

        layers = []
        for wid, (name, module) in self._factored.items():
            calls = inputs_of.get(wid, [])
            if not calls:
                raise ValueError(f"layer {name!r} was not called in forward; freeze it (requires_grad=False)")
            A = torch.cat(calls, 1)
            G = torch.cat(
                [grads_of[wid].get(c, torch.zeros(*calls[c].shape[:2], module.weight.shape[0], dtype=A.dtype, device=A.device))
                 for c in range(len(calls))],
                1,
            )
            layers.append(LayerFactors(name, A, G))
        return BatchGradients(layers, self._dense(layers, inputs, targets), losses.detach())

    def _dense(self, layers: list[LayerFactors], inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B = inputs.shape[0]
        by_weight = {wid: f for wid, f in zip(self._factored, layers)}
        func_grads = self._func_gradients(inputs, targets) if self._func_params else {}
        parts = []
        for name, (kind, wid) in zip(self.dense_names, self._dense_source):
            if kind == "bias":
                parts.append(by_weight[wid].G.sum(1))
            else:
                parts.append(func_grads[name].reshape(B, -1))
        if not parts:
            return inputs.new_zeros(B, 0)
        return torch.cat(parts, 1)

    def _func_gradients(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        free = {n: p.detach() for n, p in self._func_params.items()}

        def example_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = functional_call(self.model, params, (x.unsqueeze(0),), strict=False)
            return self.loss_fn(out, y.unsqueeze(0)).sum()

        return vmap(grad(example_loss), in_dims=(None, 0, 0))(free, inputs, targets)
