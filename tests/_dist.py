"""Spawn a few Gloo ranks on 127.0.0.1 for multi-process tests.

``run_ranks(fn, world_size, *args)`` runs ``fn(rank, world_size, *args)`` in ``world_size``
processes that have joined a Gloo process group, and returns each rank's return value (must be
picklable), ordered by rank. A failure in any rank raises in the test with that rank's traceback;
a rank that hangs is killed after ``timeout`` seconds.

``mode``: ``"native"`` (Gloo as it is) or ``"strict"`` (NCCL's rules enforced on the ranks' hooks:
``tests/_strict_nccl.py``; ``strict`` may also be a dict of its options, e.g. ``{"skew": True}``).
Without ``mode``, the mode of the running test is used (:data:`MODE`, which the ``comm_mode``
parametrization of ``conftest.py`` sets): hook tests run in both.
"""
from __future__ import annotations

import os
import pickle
import socket
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The mode of the running test (conftest.py's comm_mode fixture sets it): "native" or "strict".
MODE = "native"


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue: Any, mode: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        if mode != "native":
            import _strict_nccl

            _strict_nccl.install(rank, **(mode if isinstance(mode, dict) else {}))
        result = fn(rank, world_size, *args)
        if mode != "native" and dist.is_initialized():
            _strict_nccl.finish()
        # Plain pickle copies tensor data into bytes; the queue's own pickler would share memory
        # through file descriptors that die with this process.
        queue.put((rank, True, pickle.dumps(result)))
    except BaseException:  # report every failure to the parent, whatever it is
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable, world_size: int, *args: Any, timeout: float = 120.0, mode: Any = None) -> list[Any]:
    mode = MODE if mode is None else mode
    if mode not in ("native", "strict") and not isinstance(mode, dict):
        raise ValueError(f"mode must be 'native', 'strict' or a dict of strict options, got {mode!r}")
    mode = {} if mode == "strict" else mode
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, queue, mode)) for r in range(world_size)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world_size):
            rank, ok, value = queue.get(timeout=timeout)
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world_size)]
