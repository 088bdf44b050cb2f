"""PyTorch Lightning: a callback that registers a commcomp hook on the DDP model of a DDP strategy.

Lightning's ``DDPStrategy(ddp_comm_hook=...)`` registers hooks on CUDA devices only, so on CPU a
hook passed there is silently ignored. :class:`CommHookCallback` registers it on any device, once
the strategy has wrapped the model (``on_fit_start``)::

    import pytorch_lightning as pl                   # or: import lightning.pytorch as pl
    from commcomp.integrations import CommHookCallback

    hook = CommHookCallback("rs-nuqsgd:4", bucket_size=512)   # or CommHookCallback(state, hook)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3, callbacks=[hook])
    trainer.fit(model, loader)                       # model: a LightningModule
    print(hook.state.total_bytes_sent)               # this rank's bytes on the wire

The class derives from the ``Callback`` of every Lightning package installed (``pytorch_lightning``,
``lightning.pytorch``), so either package's ``Trainer`` accepts it; it is built when first used,
and ``import commcomp.integrations`` imports neither.
"""
from __future__ import annotations

import importlib
import logging
from typing import Any, Callable

from ..hooks._bucket import is_ddp
from ..hooks.register import hook_for, register_comm_hook
from ..hooks.spec import hook_from_spec

__all__ = ["CommHookCallback"]

logger = logging.getLogger("commcomp.integrations")
_PACKAGES = ("pytorch_lightning", "lightning.pytorch")


class _CommHook:
    """What :class:`CommHookCallback` does, without Lightning's base class.

    Args:
        comm_hook: a spec string (:func:`~commcomp.hooks.hook_from_spec`; ``spec_kwargs`` go to
            it), or a hook's state, with ``hook`` the hook itself.

    Attributes:
        state: the registered hook's state (``None`` before ``fit`` starts, or in a run without
            DDP); it is kept across ``fit`` calls.
    """

    def __init__(self, comm_hook: Any, hook: Callable | None = None, **spec_kwargs: Any) -> None:
        if isinstance(comm_hook, str):
            if hook is not None:
                raise ValueError("give a spec string, or a state and its hook, not both")
            hook_from_spec(comm_hook, **spec_kwargs)  # a bad spec fails here, before any rank starts
        elif not callable(hook):
            raise ValueError(f"hook must be the hook function when comm_hook is its state, got {hook!r}")
        self.comm_hook, self.hook, self.spec_kwargs = comm_hook, hook, spec_kwargs
        self.state: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        model = trainer.strategy.model
        if not is_ddp(model):
            if trainer.world_size == 1:
                logger.info("CommHookCallback: single process, no DDP: nothing to compress")
                return
            raise ValueError(
                f"CommHookCallback needs a DDP strategy (strategy='ddp', DDPStrategy, ...); "
                f"{type(trainer.strategy).__name__} wrapped the model in {type(model).__name__}"
            )
        if self.state is None:
            if isinstance(self.comm_hook, str):
                self.state, self.hook = hook_for(model, self.comm_hook, **self.spec_kwargs)
            else:
                self.state = self.comm_hook
        # a later fit wraps the model in a new DDP: the same state goes on
        register_comm_hook(model, self.state, self.hook)


_built: type | None = None


def _build() -> type:
    global _built
    if _built is None:
        bases = []
        for name in _PACKAGES:
            try:
                bases.append(importlib.import_module(name).Callback)
            except ImportError:
                continue
        if not bases:
            raise ImportError("CommHookCallback needs PyTorch Lightning: pip install pytorch-lightning (or lightning)")
        _built = type("CommHookCallback", (_CommHook, *bases), {"__module__": __name__, "__doc__": _CommHook.__doc__})
        globals()["CommHookCallback"] = _built  # pickling (ddp_spawn) finds the class by name
    return _built


def __getattr__(name: str) -> Any:
    if name == "CommHookCallback":
        return _build()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
