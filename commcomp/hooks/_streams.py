"""Where commcomp's device work runs: one stream per CUDA device that commcomp owns.

Every kernel a hook enqueues (quantize in the hook body; decode, re-quantize and copy back on the
communication thread, :mod:`._comm_thread`) runs on that stream, ``C``. So:

* A hook body first makes ``C`` wait for the stream that produced the gradients (backward's), then
  works on ``C``: backward's own stream never waits for commcomp, let alone for a peer.
* The communication thread works on ``C`` only, and waits for a collective with ``work.wait()``
  made while ``C`` is current: ``C`` waits for the collective's stream, the host does not.
* Every tensor commcomp allocates is allocated and used on ``C``, so the caching allocator never
  hands its memory to another stream while ``C``'s kernels still use it: no ``record_stream`` is
  needed for them. The tensors that cross streams are DDP's (the bucket, the gradients), which
  DDP keeps alive, and the collectives' own, which the process group protects.
* The future a hook returns is completed while ``C`` is current, so it records ``C``'s work:
  DDP's ``wait()`` makes backward's stream wait for it.

On the CPU (and any device without streams) the context only records which device the thread is
working for, which the NCCL strict test mode (``tests/_strict_nccl.py``) checks: every device op
of a hook must run inside :func:`on_comm_stream`.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

__all__ = ["on_comm_stream", "comm_device"]

_local = threading.local()
_cuda_streams: dict[int, "torch.cuda.Stream"] = {}
_streams_lock = threading.Lock()


def comm_device() -> torch.device | None:
    """The device this thread is doing commcomp work for (``None`` outside :func:`on_comm_stream`)."""
    return getattr(_local, "device", None)


def _stream_of(device: torch.device) -> "torch.cuda.Stream":
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _streams_lock:
        stream = _cuda_streams.get(index)
        if stream is None:
            stream = _cuda_streams[index] = torch.cuda.Stream(device=index)
        return stream


@contextlib.contextmanager
def on_comm_stream(device: torch.device, wait_for_caller: bool = False, caller_waits: bool = False) -> Iterator[None]:
    """Run the block on commcomp's stream of ``device``, with ``device`` current (the
    ``CUDAGuard`` of every launch).

    ``wait_for_caller``: first make that stream wait for the calling thread's current stream (a
    hook body, whose gradients come from backward's). ``caller_waits``: at the end, make the
    caller's stream wait for commcomp's (a caller that goes on to read what the block wrote
    without a future to wait for: the per-parameter adapter of ``hooks/_bucket.py``).
    """
    outer = getattr(_local, "device", None)
    _local.device = device
    try:
        if device.type == "cuda":
            stream = _stream_of(device)
            with torch.cuda.device(device):
                caller = torch.cuda.current_stream(device)
                if wait_for_caller:
                    stream.wait_stream(caller)
                with torch.cuda.stream(stream):
                    yield
                if caller_waits:
                    caller.wait_stream(stream)
        else:
            yield
    finally:
        _local.device = outer
