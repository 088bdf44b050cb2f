"""Register a hook on a DDP model, checked against the model's world size: what the Lightning and
accelerate integrations (``commcomp.integrations``) call, and what a hand-written loop can call
instead of ``ddp_model.register_comm_hook``.

Example::

    import torch, torch.distributed as dist
    from commcomp.hooks import register_comm_hook

    dist.init_process_group("gloo")                     # launched by torchrun
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1000, 10))
    state = register_comm_hook(model, "rs-nuqsgd:4")    # or register_comm_hook(model, state, hook)
    model(torch.randn(8, 1000)).sum().backward()
    print(state.compression_ratio)
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist

from ._bucket import is_ddp
from ._hook_state import HookState
from .spec import hook_from_spec

__all__ = ["register_comm_hook", "hook_for", "find_ddp"]


def find_ddp(model: Any) -> torch.nn.parallel.DistributedDataParallel:
    """The :class:`~torch.nn.parallel.DistributedDataParallel` in ``model`` (``model`` itself, or
    the module a ``torch.compile`` wrapper holds), or ``ValueError``."""
    seen = model
    while not is_ddp(seen) and hasattr(seen, "_orig_mod"):  # torch.compile's OptimizedModule
        seen = seen._orig_mod
    if not is_ddp(seen):
        raise ValueError(
            "register_comm_hook needs a torch.nn.parallel.DistributedDataParallel model (as accelerator.prepare "
            f"or a DDP strategy returns it in a multi-process run), got {type(model).__name__}"
        )
    return seen


def hook_for(model: Any, spec: str, **spec_kwargs: Any) -> tuple[Any, Callable]:
    """:func:`~commcomp.hooks.hook_from_spec` over the process group of the DDP model ``model``."""
    ddp = find_ddp(model)
    group = None if ddp.process_group is dist.group.WORLD else ddp.process_group
    return hook_from_spec(spec, process_group=group, **spec_kwargs)


def register_comm_hook(model: Any, comm_hook: Any, hook: Callable | None = None, **spec_kwargs: Any) -> Any:
    """Register a communication hook on the DDP model ``model`` and return its state.

    ``comm_hook`` is a spec string (:func:`~commcomp.hooks.hook_from_spec`; ``spec_kwargs`` go
    to it, e.g. ``bucket_size``, ``seed``, ``error_feedback``) or a hook's state, with ``hook``
    the hook itself (commcomp's, or any of PyTorch's). Before registering, a commcomp state is
    checked against the model's world size (``ValueError`` for a combination that cannot work
    or would save nothing) and bound to the model's parameters (:meth:`CompressionState.bind`),
    which DDP's per-parameter calls under compiled autograd need.
    """
    ddp = find_ddp(model)
    if isinstance(comm_hook, str):
        if hook is not None:
            raise ValueError("give a spec string, or a state and its hook, not both")
        state, hook = hook_for(ddp, comm_hook, **spec_kwargs)
    else:
        if not callable(hook):
            raise ValueError(f"hook must be the hook function when comm_hook is its state, got {hook!r}")
        if spec_kwargs:
            raise ValueError(f"keyword arguments {sorted(spec_kwargs)} go with a spec string only")
        state = comm_hook
    check = getattr(hook, "check_state", None)
    if check is not None:
        check(state, dist.get_world_size(getattr(state, "process_group", None)))
    if isinstance(state, HookState) and not state.is_bound():
        state.bind(ddp)
    ddp.register_comm_hook(state, hook)
    return state
