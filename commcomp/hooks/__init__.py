"""DDP communication hooks that put compressed gradients on the wire.

* :func:`reduce_scatter_hook` — compressed reduce-scatter + all-gather: per-rank bytes
  ``2(W-1)/W`` x the compressed size at any world size ``W`` (the one that scales); optional
  hierarchy (fp32 inside a node, compressed across nodes).
* :func:`allgather_hook` — quantize + encode, all-gather payloads, decode and average (unbiased).
* :func:`allreduce_hook` — shared max-norm scale, integer symbols all-reduced (wire stays allreduce).
* :class:`CompressionState` — configuration, counters, error feedback, ``state_dict`` for resume.
* :func:`hook_from_spec` — ``"nuqsgd:4:elias"``-style strings for command-line flags.
* :func:`register_comm_hook` — register a spec or a (state, hook) on a DDP model, checked against
  its world size (what ``commcomp.integrations`` uses for Lightning and accelerate).

Every hook also runs where DDP calls it once per parameter (``torch.compile`` with
``torch._dynamo.config.optimize_ddp = "python_reducer"`` and compiled autograd): register it with
:func:`register_comm_hook`, or call ``state.bind(ddp_model)`` first (see ``hooks/_bucket.py``).

Example::

    import torch, torch.distributed as dist, commcomp
    from commcomp.hooks import CompressionState, allgather_hook

    dist.init_process_group("gloo")            # launched by torchrun
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1000, 10))
    state = CompressionState(commcomp.NUQSGD(bits=4, bucket_size=512), coding="elias-gamma")
    model.register_comm_hook(state, allgather_hook)
    model(torch.randn(8, 1000)).sum().backward()   # gradients averaged from 4-bit payloads
    print(state.compression_ratio)
"""
from ._wire import PeerPayloadError
from .allgather import allgather_hook
from .allreduce import allreduce_hook, level_grid
from .reduce_scatter import reduce_scatter_hook
from .register import register_comm_hook
from .spec import SCHEMES, accepted_specs, hook_from_spec, make_quantizer
from .state import CODINGS, CompressionState

__all__ = [
    "CompressionState",
    "PeerPayloadError",
    "allgather_hook",
    "allreduce_hook",
    "reduce_scatter_hook",
    "hook_from_spec",
    "accepted_specs",
    "register_comm_hook",
    "make_quantizer",
    "level_grid",
    "CODINGS",
    "SCHEMES",
]
