"""The one thread that launches, waits for and follows up every collective a commcomp hook sends.

Why a thread of commcomp's own (``commcomp-comm``), as CGX and Horovod have:

* **Nothing on the backward thread waits.** A hook body quantizes, reserves its collectives'
  places in the launch order and returns. Everything that needs a peer's data (validating a
  frame, decoding, the next stage) runs here. On NCCL a collective's future completes at enqueue
  and its callbacks would run inline in the hook body, where any host read of received data would
  stall backward until the slowest peer has sent; here a host read stalls only this thread.
* **One global launch order, identical on every rank.** NCCL requires the collectives of all its
  communicators to be issued in the same order on every rank. Hook bodies run in bucket order on
  every rank, so the tickets they reserve (:meth:`CommThread.reserve`) are numbered the same
  everywhere; this thread launches ticket ``t`` only after every earlier ticket was launched or
  skipped, whatever order the data arrives in.
* **No Python on the process group's threads.** Gloo completes futures on its worker threads;
  Python callbacks there (and the release of their closures) can still be running when the main
  thread exits, and a thread that takes the GIL while the interpreter shuts down aborts the
  process ("terminate called without an active exception", or, if it drops the last reference to
  a group, "Resource deadlock avoided"). Here works are waited for with ``work.wait()`` and every
  callback runs on this thread, which the interpreter's exit stops and joins first.

Device work on this thread runs on commcomp's stream (:mod:`._streams`): ``work.wait()`` then makes
that stream, not the host, wait for the collective on CUDA.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
from typing import Any, Callable

import torch
import torch.distributed as dist

from ._streams import on_comm_stream

__all__ = ["CommThread", "comm_thread", "new_future", "THREAD_NAME"]

THREAD_NAME = "commcomp-comm"
logger = logging.getLogger("commcomp.hooks")
Launch = Callable[[], "dist.Work | None"]


def new_future(device: torch.device | None) -> torch.futures.Future:
    """A future for values on ``device``: CUDA ones declare it, so completing the future records
    the stream that made the value and waiting for it synchronizes with that stream."""
    if device is not None and device.type == "cuda":
        return torch.futures.Future(devices=[device])
    return torch.futures.Future()


class _Ticket:
    __slots__ = ("launch", "device", "future")

    def __init__(self, launch: Launch | None, device: torch.device, future: torch.futures.Future | None) -> None:
        self.launch, self.device, self.future = launch, device, future


class CommThread:
    """Launches collectives in ticket order, waits for them in launch order, and runs callbacks.

    Tickets are reserved by hook bodies (:meth:`reserve`), so in the same order on every rank;
    each is then either submitted with a launch (:meth:`submit`) or skipped (``launch=None``)
    exactly once, from any thread. Callbacks that follow up a collective are posted (:meth:`post`)
    and run here in posting order.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._reserved = 0  # next ticket to hand out
        self._next = 0  # next ticket to launch
        self._submitted: dict[int, _Ticket] = {}
        self._tasks: collections.deque[tuple[Callable[[], None], torch.device]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- from any thread ---------------------------------------------------------------------
    def reserve(self) -> int:
        """A place in the launch order; reserve from hook bodies only (the same order on every rank)."""
        with self._cond:
            ticket = self._reserved
            self._reserved += 1
            return ticket

    def reserved(self) -> int:
        """How many tickets were reserved so far: the next one to be handed out."""
        with self._cond:
            return self._reserved

    def abandon(self, first: int) -> None:
        """Skip every ticket from ``first`` on that was reserved but not submitted: a hook body that
        raised will not start its stages, and later tickets must not wait for them."""
        with self._cond:
            for ticket in range(max(first, self._next), self._reserved):
                if ticket not in self._submitted:
                    self._submitted[ticket] = _Ticket(None, torch.device("cpu"), None)
            self._cond.notify()

    def submit(self, ticket: int, launch: Launch | None, device: torch.device) -> torch.futures.Future | None:
        """Launch ``launch()`` (an ``async_op=True`` collective returning its ``Work``) as ``ticket``,
        or skip the ticket (``launch=None``). Returns a future completed, on this thread, once the
        work is done (its value is ``None``; the launch's own tensors hold the result)."""
        future = new_future(device) if launch is not None else None
        with self._cond:
            if ticket in self._submitted or not self._next <= ticket < self._reserved:
                raise RuntimeError(f"commcomp: launch ticket {ticket} submitted twice or never reserved")
            self._submitted[ticket] = _Ticket(launch, device, future)
            self._start_locked()
            self._cond.notify()
        return future

    def post(self, task: Callable[[], None], device: torch.device) -> None:
        """Run ``task()`` on this thread, on commcomp's stream of ``device``."""
        with self._cond:
            self._tasks.append((task, device))
            self._start_locked()
            self._cond.notify()

    def stop(self) -> None:
        """Let the thread finish what it holds and exit (at interpreter exit, before teardown)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60.0)

    # -- on the thread -----------------------------------------------------------------------
    def _start_locked(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=_thread_main, args=(self,), name=THREAD_NAME, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        inflight: collections.deque[tuple[dist.Work, _Ticket]] = collections.deque()
        while True:
            with self._cond:
                while not (self._tasks or self._next in self._submitted or inflight or self._stopping):
                    self._cond.wait()
                if self._stopping and not (self._tasks or self._next in self._submitted or inflight):
                    self._thread = None
                    return
                launches = []
                while self._next in self._submitted:
                    launches.append(self._submitted.pop(self._next))
                    self._next += 1
                tasks = list(self._tasks)
                self._tasks.clear()
            for ticket in launches:  # in ticket order: the global launch order
                work = _launch(ticket)
                if work is not None:
                    inflight.append((work, ticket))
            for task, device in tasks:
                with on_comm_stream(device):
                    _run_task(task)
            if not launches and not tasks and inflight:
                _finish(*inflight.popleft())


def _run_task(task: Callable[[], None]) -> None:
    # Follow-ups complete their futures with their own errors; anything escaping is a bug, logged
    # here rather than allowed to end the thread that every later collective needs.
    try:
        task()
    except Exception:  # noqa: BLE001
        logger.exception("commcomp: a follow-up on the communication thread raised")


def _launch(ticket: _Ticket) -> "dist.Work | None":
    if ticket.launch is None:
        return None
    try:
        with on_comm_stream(ticket.device):
            work = ticket.launch()
    except BaseException as err:  # noqa: BLE001 (handed to whoever waits on the future)
        ticket.future.set_exception(err)
        return None
    if work is None:  # a backend that ran it synchronously
        _complete(ticket, None)
    return work


def _finish(work: "dist.Work", ticket: _Ticket) -> None:
    try:
        with on_comm_stream(ticket.device):
            work.wait()  # CUDA: the stream waits, not the host
    except BaseException as err:  # noqa: BLE001
        ticket.future.set_exception(err)
        return
    _complete(ticket, None)


def _complete(ticket: _Ticket, value: Any) -> None:
    with on_comm_stream(ticket.device):
        ticket.future.set_result(value)


def _thread_main(owner: CommThread) -> None:
    # A module-level entry point, so a test harness can wrap the thread (tests/_strict_nccl.py).
    owner._run()


_THE_THREAD = CommThread()


def comm_thread() -> CommThread:
    """The process's communication thread (started on first use)."""
    return _THE_THREAD


def _stop_at_exit() -> None:
    # atexit runs before the interpreter tears down: no Python is left running on the thread then.
    _THE_THREAD.stop()


def _forget_after_fork() -> None:
    # A forked child (a DataLoader worker) has no copy of the thread; it starts its own if needed.
    global _THE_THREAD
    _THE_THREAD = CommThread()


atexit.register(_stop_at_exit)
os.register_at_fork(after_in_child=_forget_after_fork)
