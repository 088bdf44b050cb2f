"""Build a (state, hook) pair from a short string, for command-line flags such as ``--comm-hook``.

Grammar: ``[rs-|allreduce-]SCHEME:BITS[:CODING]`` with SCHEME in qsgd, qsgdinf, nuqsgd, alq, amq and
CODING in fixed, elias-gamma, elias-delta, elias-omega (``elias`` = elias-gamma); the ``rs-``
prefix selects :func:`reduce_scatter_hook` (compressed reduce-scatter + all-gather: the one that
scales), ``allreduce-`` :func:`allreduce_hook` (shared scale, integer allreduce), no prefix
:func:`allgather_hook`. PyTorch's own hooks for comparison: ``none`` / ``fp32`` (fp32 allreduce,
what DDP does without a hook), ``fp16``, ``bf16`` (CUDA + NCCL builds), ``powersgd:RANK``,
``quant-pertensor`` (NCCL only). Two of PyTorch's hooks misbehave on Gloo in torch 2.13:
``quantization_pertensor_hook`` fails (it is refused here under Gloo), DDP refuses
``bf16_compress_hook`` on builds without CUDA and NCCL (refused here too), and ``powerSGD_hook`` can race between buckets, so the examples' ``wrap_ddp``
(examples/common) gives it a single DDP bucket.

The combination is checked when the state is built, against the group's world size when a
process group is initialized: ``allreduce-alq``/``-amq``, level tables off the integer grid and
int32 sums that save nothing (``allreduce-nuqsgd:4`` at 2 ranks) raise ``ValueError`` here, not
in a backward pass (``allow_wide_sums=True`` accepts the int32 sums).

Example::

    >>> from commcomp.hooks import hook_from_spec
    >>> state, hook = hook_from_spec("nuqsgd:4:elias", bucket_size=1024)
    >>> state.quantizer, state.coding, hook.__name__
    (NUQSGD(bits=4, bucket_size=1024, norm='l2'), 'elias-gamma', 'allgather_hook')
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist

from .. import adaptive
from ..codecs import CODING_ALIASES, CODINGS, canonical_coding
from ..quantizers import MAX_BITS, MIN_BITS, make_quantizer, scheme_names
from .allgather import allgather_hook
from .allreduce import allreduce_hook
from .reduce_scatter import reduce_scatter_hook
from .state import CompressionState

__all__ = ["hook_from_spec", "accepted_specs", "make_quantizer", "SCHEMES"]

SCHEMES = scheme_names()  # the quantizers' registry; commcomp.adaptive has added ALQ and AMQ
_ADAPTIVE = tuple(cls.name for cls in (adaptive.ALQ, adaptive.AMQ))


def hook_from_spec(
    spec: str,
    process_group: dist.ProcessGroup | None = None,
    bucket_size: int = 512,
    update_schedule: Any | None = None,
    **state_kwargs: Any,
) -> tuple[Any, Callable]:
    """Parse ``spec`` and return ``(state, hook)`` ready for ``ddp.register_comm_hook``.

    ``update_schedule`` (a :class:`commcomp.UpdateSchedule`) sets when ALQ/AMQ refit their levels
    (default: iterations 100, 2000, 10000 and every 10000). ``state_kwargs`` go to
    :class:`CompressionState` (``seed``, ``start_iter``, ``min_compression_numel``,
    ``error_feedback``, ``log_every``, ``allow_wide_sums``, ...). Every error names the accepted
    forms (:func:`accepted_specs`).
    """
    if not isinstance(spec, str):
        raise ValueError(f"comm hook spec must be a string, one of {accepted_specs()}; got {spec!r}")
    spec = spec.strip().lower()
    torch_hook = _torch_hook(spec, process_group)
    if torch_hook is not None:
        return torch_hook
    parts = spec.split(":")
    prefix, scheme = _split_prefix(parts[0])
    use_allreduce = prefix == "allreduce-"
    if len(parts) not in (2, 3) or not parts[1].isdigit():
        raise ValueError(f"comm hook spec must look like one of {accepted_specs()}; got {spec!r}")
    try:
        coding = canonical_coding(parts[2] if len(parts) == 3 else "fixed")
        if use_allreduce and coding != "fixed":
            raise ValueError(f"allreduce hooks send integers, not coded payloads: drop ':{parts[2]}'")
        adaptive_kwargs = {"update_schedule": update_schedule} if update_schedule is not None and scheme in _ADAPTIVE else {}
        quantizer = make_quantizer(scheme, int(parts[1]), bucket_size, **adaptive_kwargs)
    except ValueError as err:
        raise ValueError(f"in comm hook spec {spec!r}: {err}. Accepted: {accepted_specs()}") from None
    state = CompressionState(quantizer, process_group, coding=coding, **state_kwargs)
    hook = _HOOKS[prefix]
    try:
        hook.check_state(state, _world_size(process_group))
    except ValueError as err:
        raise ValueError(f"comm hook spec {spec!r}: {err}") from None
    return state, hook


def accepted_specs() -> str:
    """Every form :func:`hook_from_spec` accepts, in words (error messages list it)."""
    codings = ", ".join(list(CODINGS) + [f"{a} (= {t})" for a, t in CODING_ALIASES.items()])
    return (
        "'none' or 'fp32' (PyTorch's fp32 allreduce), 'fp16', 'bf16' (CUDA + NCCL builds), 'powersgd:RANK', "
        "'quant-pertensor' (NCCL only), or '[rs-|allreduce-]SCHEME:BITS[:CODING]' with SCHEME in "
        f"{', '.join(SCHEMES)}, BITS in {MIN_BITS}..{MAX_BITS} and CODING in {codings} (allreduce-: fixed only)"
    )


def _world_size(process_group: dist.ProcessGroup | None) -> int | None:
    """The group's world size once a process group is initialized, else ``None``."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_world_size(process_group)


_HOOKS = {"": allgather_hook, "rs-": reduce_scatter_hook, "allreduce-": allreduce_hook}


def _split_prefix(head: str) -> tuple[str, str]:
    for prefix in ("rs-", "allreduce-"):
        if head.startswith(prefix):
            return prefix, head.removeprefix(prefix)
    return "", head


def _torch_hook(spec: str, process_group: dist.ProcessGroup | None) -> tuple[Any, Callable] | None:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook, quantization_hooks

    if spec in ("none", "fp32"):
        return process_group, default_hooks.allreduce_hook
    if spec == "fp16":
        return process_group, default_hooks.fp16_compress_hook
    if spec == "bf16":
        if not _nccl_build():
            raise ValueError(
                "bf16 (PyTorch's bf16_compress_hook) needs a torch build with CUDA and NCCL: DDP refuses it "
                "otherwise; use fp16"
            )
        return process_group, default_hooks.bf16_compress_hook
    if spec == "quant-pertensor":
        if dist.is_available() and dist.is_initialized() and dist.get_backend(process_group) == "gloo":
            raise ValueError("quant-pertensor (PyTorch's quantization_pertensor_hook) fails on Gloo in torch 2.13; use NCCL")
        return process_group, quantization_hooks.quantization_pertensor_hook
    if spec.startswith("powersgd:"):
        rank = spec.split(":", 1)[1]
        if not rank.isdigit() or int(rank) < 1:
            raise ValueError(f"powersgd spec must be 'powersgd:RANK' with RANK >= 1, got {spec!r}")
        state = powerSGD_hook.PowerSGDState(process_group=process_group, matrix_approximation_rank=int(rank),
                                            start_powerSGD_iter=2, use_error_feedback=True, warm_start=True)
        return state, powerSGD_hook.powerSGD_hook
    return None


def _nccl_build() -> bool:
    # What DDP checks before it accepts bf16_compress_hook (torch 2.13).
    cuda = torch.version.cuda is not None or torch.version.hip is not None
    return cuda and dist.is_available() and dist.is_nccl_available()
