"""Hugging Face accelerate: register a commcomp hook on the DDP model ``accelerator.prepare`` built.

accelerate's ``DistributedDataParallelKwargs(comm_hook=...)`` maps only its own enum of PyTorch
hooks, so a commcomp hook passed there is ignored. Register it after ``prepare`` instead::

    from accelerate import Accelerator
    from commcomp.integrations import accelerate_comm_hook

    accelerator = Accelerator(cpu=True)          # launched with `accelerate launch` or torchrun
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    state = accelerate_comm_hook(accelerator, model, "rs-nuqsgd:4")   # None in a 1-process run
    for x, y in loader:
        optimizer.zero_grad()
        accelerator.backward(torch.nn.functional.cross_entropy(model(x), y))
        optimizer.step()
    print(state.total_bytes_sent)
"""
from __future__ import annotations

from typing import Any, Callable

from ..hooks._bucket import is_ddp
from ..hooks.register import find_ddp, register_comm_hook

__all__ = ["accelerate_comm_hook"]


def accelerate_comm_hook(accelerator: Any, model: Any, comm_hook: Any, hook: Callable | None = None, **spec_kwargs: Any) -> Any:
    """Register ``comm_hook`` (a spec string, or a state with its ``hook``) on ``model``, as
    returned by ``accelerator.prepare``; returns the hook's state.

    In a single-process run accelerate does not wrap the model in DDP and nothing goes on the
    wire: returns ``None``. A multi-process run whose model is not DDP (FSDP, DeepSpeed, ...)
    raises ``ValueError``: commcomp's hooks are DDP communication hooks.
    """
    if not hasattr(accelerator, "num_processes") or not hasattr(accelerator, "distributed_type"):
        raise ValueError(f"accelerator must be an accelerate.Accelerator, got {type(accelerator).__name__}")
    if accelerator.num_processes == 1 and not _holds_ddp(model):
        return None
    if not _holds_ddp(model):
        raise ValueError(
            f"commcomp hooks are DDP communication hooks, but accelerate's {accelerator.distributed_type} run "
            f"did not wrap the model in DDP (got {type(model).__name__})"
        )
    return register_comm_hook(find_ddp(model), comm_hook, hook, **spec_kwargs)


def _holds_ddp(model: Any) -> bool:
    while not is_ddp(model) and hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return is_ddp(model)
