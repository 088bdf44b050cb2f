"""What every commcomp hook state holds: its group, the copies of the groups it sends on, its
iteration, and (under compiled autograd) the model's parameters."""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._bucket import ParameterGradients, ddp_named_parameters
from ._groups import GroupInfo, private_copy

__all__ = ["HookState"]


class HookState:
    """Base of :class:`~commcomp.hooks.CompressionState` and the robust hook's state.

    Constructing a state after ``init_process_group`` creates commcomp's own copies of the groups
    its hook sends on (:mod:`commcomp.hooks._groups`): a collective over the default group, so
    construct states on every rank in the same order, as DDP models are. A state constructed
    before ``init_process_group`` creates them when it is bound (:meth:`bind`, which
    :func:`~commcomp.hooks.register_comm_hook` calls) or by :meth:`create_groups`.

    Subclasses override :meth:`_make_send_groups` (the groups their hook sends on) and
    :meth:`_end_iteration`.
    """

    __slots__ = ("process_group", "iteration", "_parameter_gradients", "_send_groups")

    def __init__(self, process_group: dist.ProcessGroup | None) -> None:
        self.process_group = process_group
        self.iteration = 0
        self._parameter_gradients: ParameterGradients | None = None
        self._send_groups: tuple[GroupInfo, ...] | None = None
        if dist.is_available() and dist.is_initialized():
            self.create_groups()

    def create_groups(self) -> None:
        """Create the groups the hook sends on, once (collective over the default group)."""
        if self._send_groups is None:
            self._send_groups = self._make_send_groups()

    def _make_send_groups(self) -> tuple[GroupInfo, ...]:
        return (private_copy(self.process_group),)

    def send_groups(self) -> tuple[GroupInfo, ...]:
        """The groups the hook sends on; never created here (a hook body must not create groups)."""
        if self._send_groups is None:
            raise RuntimeError(
                f"this {type(self).__name__} was constructed before torch.distributed was initialized, so it has no "
                "process groups of its own yet, and a hook body must not create them (group creation is collective "
                "over every rank). Construct the state after init_process_group(), or register it with "
                "commcomp.hooks.register_comm_hook(ddp_model, state, hook), or call state.create_groups() on every "
                "rank before the first backward"
            )
        return self._send_groups

    def bind(self, model: torch.nn.Module) -> None:
        """Tell the state the model's parameters: the DDP model (DDP's ignored parameters are left
        out) or the module it wraps; also creates the state's groups if it has none yet.

        Needed when DDP calls the hook once per parameter (compiled autograd with
        ``optimize_ddp="python_reducer"``): a backward pass is complete when every trainable
        parameter has handed over its gradient (see ``hooks/_bucket.py``).
        :func:`~commcomp.hooks.register_comm_hook` calls it.
        """
        self.create_groups()
        self._parameter_gradients = ParameterGradients(ddp_named_parameters(model))

    def is_bound(self) -> bool:
        return self._parameter_gradients is not None

    def parameter_gradients(self) -> ParameterGradients:
        """The per-parameter calls of the current backward pass (:meth:`bind` first)."""
        if self._parameter_gradients is None:
            raise ValueError(
                "DDP calls this hook once per parameter here (torch.compile with "
                "torch._dynamo.config.optimize_ddp='python_reducer' and compiled autograd): register it with "
                "commcomp.hooks.register_comm_hook(ddp_model, state, hook), or call state.bind(ddp_model) "
                "before the first backward, so the hook knows which gradients make up a backward pass"
            )
        return self._parameter_gradients

    def _end_iteration(self, device: torch.device) -> torch.futures.Future | None:
        """Bookkeeping in the last bucket's body (``device``: the bucket's); may return a future
        the iteration's last bucket waits for (launched through the communication thread)."""
        return None
