"""The entry of every commcomp DDP hook: DDP's bucket, or the ``(grad, param)`` pairs DDP hands a
hook one parameter at a time under compiled autograd.

With ``torch._dynamo.config.optimize_ddp = "python_reducer"`` and compiled autograd, DDP (torch
2.13, ``DistributedDataParallel._register_accum_grad_hook``) calls ``hook(state, (param.grad,
param))`` from each parameter's post-accumulate-grad hook and drops what the hook returns: the
hook must leave the averaged gradient in ``param.grad`` itself. :func:`ddp_comm_hook` turns that
mode back into the bucket interface every hook is written for:

* Each pair is kept until every trainable parameter of the model the state was bound to
  (:meth:`~commcomp.hooks._wire.HookState.bind`) has its gradient for this backward pass. The
  call that completes the set builds one :class:`FlatBucket` per dtype and device (parameters
  in ``module.parameters()`` order, as in DDP's first bucket), runs the hook's bodies on them in
  that order, waits for their futures (nothing else would: DDP drops them) and copies the
  averages back into the gradients.
* So hook bodies still run in the same order on every rank, and the iteration ends once per
  backward pass, in the last flat bucket's body. Hooks quantize per parameter, keyed by the
  parameter's position in the bound model (``hooks/_params.py``), so the gradients are
  bit-identical to DDP's bucket path for the same seed and iteration (tested; for
  layout-dependent rules, as the robust hook's Krum, with DDP's single-bucket layout).
* Dynamo does not trace the hooks: the per-parameter path runs under ``torch.compiler.disable``
  (a graph break per parameter), since the hooks launch asynchronous collectives and chain futures.

Every trainable parameter must receive a gradient in every backward pass (as for DDP without
``find_unused_parameters``); a pass that ends without some of them is reported, naming them, when
the next one starts.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import torch

from ._comm_thread import comm_thread
from ._groups import resolve_group
from ._streams import on_comm_stream
from ._wire import done_future

__all__ = ["FlatBucket", "ParameterGradients", "ddp_comm_hook", "is_ddp", "ddp_named_parameters"]

StateCheck = Callable[[Any, int], None]


class FlatBucket:
    """A :class:`torch.distributed.GradBucket` look-alike over whole parameters' gradients.

    Example::

        >>> import torch
        >>> p, q = torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(4))
        >>> b = FlatBucket([p, q], [torch.ones(2, 3), torch.full((4,), 2.0)], index=0, last=True)
        >>> b.buffer().tolist(), b.gradients()[1].tolist(), b.is_last()
        ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0], True)
    """

    __slots__ = ("_params", "_grads", "_buffer", "_views", "_index", "_last")

    def __init__(self, params: list[torch.Tensor], grads: list[torch.Tensor], index: int, last: bool) -> None:
        if len(params) != len(grads) or not params:
            raise ValueError(f"a flat bucket needs one gradient per parameter, got {len(params)} and {len(grads)}")
        self._params, self._grads = list(params), list(grads)
        self._buffer = torch.cat([g.detach().reshape(-1) for g in grads])
        self._views, at = [], 0
        for g in grads:
            self._views.append(self._buffer[at : at + g.numel()].view(g.shape))
            at += g.numel()
        self._index, self._last = index, last

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._last

    def parameters(self) -> list[torch.Tensor]:
        return self._params

    def gradients(self) -> list[torch.Tensor]:
        return self._views

    def write_back(self, reduced: torch.Tensor) -> None:
        """Copy the hook's result (the bucket's averaged buffer) into the parameters' gradients."""
        if reduced.numel() != self._buffer.numel():
            raise ValueError(f"hook returned {reduced.numel()} values for a bucket of {self._buffer.numel()}")
        flat = reduced.reshape(-1)
        at = 0
        for g in self._grads:
            g.copy_(flat[at : at + g.numel()].view(g.shape))
            at += g.numel()


class ParameterGradients:
    """The gradients DDP has handed over so far in this backward pass, one parameter at a time.

    ``named_parameters``: the model's parameters (DDP's ignored ones left out); the trainable ones
    (``requires_grad`` when a pass starts) make up a backward pass.
    """

    __slots__ = ("_names", "_params", "_position", "_pending", "_expected")

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._position: dict[int, int] = {}
        for name, param in named_parameters:
            if id(param) not in self._position:  # a shared parameter is one parameter
                self._position[id(param)] = len(self._params)
                self._names.append(name)
                self._params.append(param)
        self._pending: dict[int, torch.Tensor] = {}
        self._expected: set[int] = set()

    def add(self, grad: torch.Tensor, param: torch.Tensor) -> list[FlatBucket] | None:
        """Keep ``param``'s gradient; the flat buckets of the pass once every trainable parameter has one."""
        at = self._position.get(id(param))
        if at is None:
            raise ValueError(
                f"DDP handed the hook a parameter of shape {tuple(param.shape)} that is not among the parameters "
                "the state was bound to: bind the state to the model DDP wraps"
            )
        if not self._pending:  # the first gradient of a backward pass
            self._expected = {k for k, p in enumerate(self._params) if p.requires_grad}
        elif at in self._pending:
            missing = sorted(self._expected - set(self._pending))
            self._pending.clear()
            names = ", ".join(self._names[k] for k in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise RuntimeError(
                f"the previous backward pass ended before {len(missing)} trainable parameter(s) got a gradient "
                f"({names}), so it was never averaged: under compiled autograd every trainable parameter needs "
                "a gradient in every backward pass (freeze unused parameters with requires_grad_(False))"
            )
        self._pending[at] = grad
        if not self._expected <= self._pending.keys():
            return None
        pending, self._pending = self._pending, {}
        return self._buckets(pending)

    def _buckets(self, pending: dict[int, torch.Tensor]) -> list[FlatBucket]:
        groups: dict[tuple[torch.dtype, torch.device], list[int]] = {}
        for k in sorted(pending):  # module order, as in DDP's first bucket
            grad = pending[k]
            groups.setdefault((grad.dtype, grad.device), []).append(k)
        members = list(groups.values())
        return [
            FlatBucket([self._params[k] for k in ks], [pending[k] for k in ks], index=i, last=i == len(members) - 1)
            for i, ks in enumerate(members)
        ]


def ddp_comm_hook(check: StateCheck | None = None) -> Callable[[Callable], Callable]:
    """Decorator for a hook body ``body(state, bucket) -> Future``: the registered hook.

    ``check(state, world_size)`` refuses a state the hook cannot run, before anything is sent; it
    runs on every call and is exposed as ``hook.check_state`` so :func:`~commcomp.hooks.hook_from_spec`
    and :func:`~commcomp.hooks.register_comm_hook` can run it at construction.

    The body runs on commcomp's stream of the bucket's device, after the gradients' stream
    (:mod:`._streams`). A body that raises gives up the places it reserved in the launch order,
    so the collectives of later buckets are not held back behind them.
    """

    def decorate(body: Callable) -> Callable:
        @functools.wraps(body)
        def hook(state, bucket):
            if isinstance(bucket, tuple):  # DDP's python reducer: (param.grad, param)
                return torch.compiler.disable(_per_parameter)(hook, state, bucket)
            if check is not None:
                check(state, resolve_group(state.process_group).world)
            thread = comm_thread()
            first = thread.reserved()
            try:
                with on_comm_stream(bucket.buffer().device, wait_for_caller=True):
                    return body(state, bucket)
            except BaseException:
                thread.abandon(first)
                raise

        hook.check_state = check
        return hook

    return decorate


def _per_parameter(hook: Callable, state: Any, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.futures.Future:
    if len(pair) != 2:
        raise ValueError(f"a per-parameter hook call carries (grad, param), got a tuple of {len(pair)}")
    grad, param = pair
    gradients = state.parameter_gradients()
    # On commcomp's stream, and backward's stream waits for it at the end: the gradients written
    # back here are read by the optimizer with no future in between (DDP drops it).
    with on_comm_stream(grad.device, wait_for_caller=True, caller_waits=True):
        buckets = gradients.add(grad, param)
        if buckets:
            futures = [hook(state, b) for b in buckets]  # bodies in bucket order, as DDP runs them
            for b, fut in zip(buckets, futures):
                b.write_back(fut.wait())  # DDP drops the future: the gradient must be in place now
    return done_future(grad, grad.device)


def is_ddp(model: Any) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def ddp_named_parameters(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``model``'s named parameters; for a DDP model, its module's minus those DDP ignores."""
    if is_ddp(model):
        ignored = set(getattr(model, "parameters_to_ignore", ()) or ())
        return [(n, p) for n, p in model.module.named_parameters() if n not in ignored]
    return list(model.named_parameters())
