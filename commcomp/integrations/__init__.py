"""commcomp's hooks where users train: PyTorch Lightning and Hugging Face accelerate.

Both frameworks wrap the model in DDP themselves and register only PyTorch's own hooks (Lightning
only on CUDA devices, accelerate only its enum of PyTorch hooks), so a commcomp hook passed to them
is silently ignored. These helpers register it on the DDP model they built, on CPU and CUDA, after
checking it against the world size (:func:`commcomp.hooks.register_comm_hook`).

* :class:`CommHookCallback` — a Lightning callback (``pytorch_lightning`` or ``lightning``).
* :func:`accelerate_comm_hook` — after ``accelerator.prepare(model, ...)``.

Neither framework is imported by ``import commcomp.integrations``: the callback class is built on
first use, and a missing framework raises ``ImportError`` saying what to install.
"""
from ..hooks.register import register_comm_hook
from .accelerate import accelerate_comm_hook

__all__ = ["CommHookCallback", "accelerate_comm_hook", "register_comm_hook"]


def __getattr__(name: str):
    if name == "CommHookCallback":
        from . import lightning

        return lightning.CommHookCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
