"""The one wire layer under every commcomp DDP hook (compression and robust aggregation alike).

What it owns, so no hook writes it again:

* **Groups and lanes.** A hook's first collective starts in the hook body, on the hook's group.
  A collective that needs an earlier one's result starts from a ``Future`` callback, and
  callbacks of different buckets finish in any order: launched on one group, two ranks could
  issue the same collectives in different orders and exchange the wrong buffers. So stage ``k >= 1``
  of a bucket runs on *lane* ``k``, a process group of its own, and each lane launches strictly in
  the order the hook bodies ran (:class:`Lanes`). Every rank then issues the same sequence on
  every group, and nothing in a hook body waits for a peer.
* **Frames.** What a rank sends for a bucket: one kind byte, then a codec payload
  (``FRAME_PAYLOAD``), or nothing but padding when the rank's bucket holds inf/NaN
  (``FRAME_NONFINITE``). A non-finite bucket anywhere sends that bucket again as a plain fp32
  average on the next lane (:meth:`BucketWire.fp32_average`), so AMP's GradScaler sees exactly
  what PyTorch's default hook would have given it.
* **Errors seen by one rank.** In an all-to-all each rank receives other bytes: a rank that finds
  a peer's payload invalid sends, in its next collective, a *blame* frame naming that peer
  (``FRAME_BLAME``), so every rank raises the same error instead of waiting for it.
* **Untrusted sizes.** :meth:`BucketWire.gather_variable` exchanges sizes first and refuses any
  announced size above a cap before it allocates anything.
* **Undecodable peers.** :func:`decode_frames` applies one policy: ``"raise"`` a
  :class:`PeerPayloadError` naming the sender, or ``"mark"`` the row invalid (``None``).
* **Iterations.** :func:`finish` is the one place an iteration ends: synchronously, in the body
  of the last bucket, where every rank gets to in the same order.
* **Group lifetimes.** A Gloo group joins its worker threads when it is destroyed; if the last
  reference to it were dropped by a callback running on one of those threads (a closure that
  outlives ``destroy_process_group``), the join would abort the process ("Resource deadlock
  avoided"). Every group a hook uses is therefore retained here and let go only from a hook body
  or at exit (:func:`retain_group`).
"""
from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import torch
import torch.distributed as dist

__all__ = [
    "FRAME_PAYLOAD",
    "FRAME_NONFINITE",
    "FRAME_BLAME",
    "blame_frame",
    "OnInvalid",
    "PeerPayloadError",
    "GroupInfo",
    "HookState",
    "Lanes",
    "BucketWire",
    "resolve_group",
    "retain_group",
    "make_frame",
    "new_frame",
    "mark_kind",
    "frame_kind",
    "decode_frames",
    "fp32_allreduce",
    "finish",
    "chain",
    "done_future",
]

FRAME_PAYLOAD, FRAME_NONFINITE, FRAME_BLAME = 1, 2, 3
OnInvalid = Literal["raise", "mark"]


class PeerPayloadError(RuntimeError):
    """A payload (or the size it announced) from another rank failed validation.

    ``rank`` is the sender's rank in the hook's group; the message names it.
    """

    def __init__(self, hook: str, rank: int, reason: str) -> None:
        super().__init__(f"commcomp {hook}: invalid payload from rank {rank}: {reason}")
        self.rank = rank


@dataclass(frozen=True)
class GroupInfo:
    group: dist.ProcessGroup
    rank: int
    world: int


def resolve_group(process_group: dist.ProcessGroup | None) -> GroupInfo:
    group = process_group if process_group is not None else dist.group.WORLD
    retain_group(group)
    return GroupInfo(group, dist.get_rank(group), dist.get_world_size(group))


_retained: dict[int, dist.ProcessGroup] = {}
_retained_lock = threading.Lock()
atexit.register(_retained.clear)  # at exit, on the main thread, before the interpreter winds down


def retain_group(group: dist.ProcessGroup) -> None:
    """Keep ``group`` alive until c10d has forgotten it and a later hook body lets it go.

    Call from hook bodies only (never from a callback): groups that ``destroy_process_group``
    removed since the last call are released here, on this thread, which is no group's worker.
    """
    live = dist.distributed_c10d._world.pg_map
    with _retained_lock:
        released = [_retained.pop(key) for key, kept in list(_retained.items()) if kept not in live]
        _retained[id(group)] = group
    del released  # destroyed here, outside the lock


class Lanes:
    """Process groups for collectives launched from callbacks, each launching in body order.

    Lane ``k`` of a group is a copy of that group, created on first use from a hook body (every
    rank reaches it at the same bucket, so the group creation — a one-off store barrier among the
    group's ranks — is matched). Tickets are reserved in hook bodies, hence in the same order on
    every rank; a lane launches ticket ``t`` only after every earlier ticket was launched or skipped.
    """

    def __init__(self) -> None:
        self._lanes: dict[tuple[int, int], _Lane] = {}
        self._lock = threading.RLock()

    def reserve(self, base: dist.ProcessGroup, lane: int) -> tuple[_Lane, int]:
        """A ticket on lane ``lane`` (>= 1) of ``base``; call from a hook body only."""
        key = (id(base), lane)
        if key not in self._lanes:
            ranks = dist.get_process_group_ranks(base)
            group = dist.new_group(ranks=ranks, backend=dist.get_backend(base), use_local_synchronization=True)
            retain_group(group)
            self._lanes[key] = _Lane(group, base)
        target = self._lanes[key]
        with self._lock:
            ticket = target.reserved
            target.reserved += 1
        return target, ticket

    def submit(self, target: _Lane, ticket: int, launch: Callable[[dist.ProcessGroup], None] | None) -> None:
        """Run ``launch(group)`` (or nothing, for ``None``: a skipped stage) in ticket order."""
        with self._lock:
            target.waiting[ticket] = launch
            while target.next in target.waiting:
                start = target.waiting.pop(target.next)
                target.next += 1
                if start is not None:
                    start(target.group)  # launches without waiting (async_op=True)


class _Lane:
    __slots__ = ("group", "base", "reserved", "next", "waiting")

    def __init__(self, group: dist.ProcessGroup, base: dist.ProcessGroup) -> None:
        self.group, self.base = group, base  # `base` kept alive: lanes are keyed by its id
        self.reserved = self.next = 0
        self.waiting: dict[int, Callable[[dist.ProcessGroup], None] | None] = {}


class HookState:
    """What the wire layer keeps for a hook: its group, its iteration and its lanes.

    Subclasses (:class:`~commcomp.hooks.CompressionState`, the robust hook's state) override
    :meth:`_end_iteration`.
    """

    __slots__ = ("process_group", "iteration", "_lanes", "_parameter_gradients")

    def __init__(self, process_group: dist.ProcessGroup | None) -> None:
        self.process_group = process_group
        self.iteration = 0
        self._lanes: Lanes | None = None
        self._parameter_gradients = None

    def bind(self, model: torch.nn.Module) -> None:
        """Tell the state the model's parameters: the DDP model (DDP's ignored parameters are left
        out) or the module it wraps.

        Needed when DDP calls the hook once per parameter (compiled autograd with
        ``optimize_ddp="python_reducer"``): a backward pass is complete when every trainable
        parameter has handed over its gradient (see ``hooks/_bucket.py``).
        :func:`~commcomp.hooks.register_comm_hook` calls it.
        """
        from ._bucket import ParameterGradients, ddp_named_parameters

        self._parameter_gradients = ParameterGradients(ddp_named_parameters(model))

    def is_bound(self) -> bool:
        return self._parameter_gradients is not None

    def parameter_gradients(self):
        """The per-parameter calls of the current backward pass (:meth:`bind` first)."""
        if self._parameter_gradients is None:
            raise ValueError(
                "DDP calls this hook once per parameter here (torch.compile with "
                "torch._dynamo.config.optimize_ddp='python_reducer' and compiled autograd): register it with "
                "commcomp.hooks.register_comm_hook(ddp_model, state, hook), or call state.bind(ddp_model) "
                "before the first backward, so the hook knows which gradients make up a backward pass"
            )
        return self._parameter_gradients

    def lanes(self) -> Lanes:
        if self._lanes is None:
            self._lanes = Lanes()
        return self._lanes

    def _end_iteration(self) -> torch.futures.Future | None:
        """Bookkeeping after the last bucket's body; may return a future the iteration waits for."""
        return None


def done_future(value: Any, device: torch.device | None = None) -> torch.futures.Future:
    fut = _new_future(device)
    fut.set_result(value)
    return fut


def _new_future(device: torch.device | None) -> torch.futures.Future:
    # CUDA values need their devices declared so the future records the streams that made them.
    if device is not None and device.type == "cuda":
        return torch.futures.Future(devices=[device])
    return torch.futures.Future()


def _settle(out: torch.futures.Future, fn: Callable[[], Any]) -> None:
    try:
        result = fn()
    except BaseException as err:  # noqa: BLE001 (handed to whoever waits on `out`)
        out.set_exception(err)
        return
    if isinstance(result, torch.futures.Future):
        result.add_done_callback(lambda f: _settle(out, f.value))
    else:
        out.set_result(result)


def chain(fut: torch.futures.Future, fn: Callable[[Any], Any], device: torch.device | None = None) -> torch.futures.Future:
    """``fut.then(fn)`` where ``fn(value)`` may return a value or another future (flattened).

    Errors of ``fut`` or ``fn`` reach the returned future; nothing waits.
    """
    out = _new_future(device)
    fut.add_done_callback(lambda f: _settle(out, lambda: fn(f.value())))
    return out


class BucketWire:
    """The collectives of one bucket: stage 0 from the body on its group, stage ``k >= 1`` on
    lane ``k`` of its group, from callbacks.

    Construct it in the hook body with the most stages the bucket can use (a function of the
    configuration only, so every rank reserves the same tickets) and each stage's group (``groups``
    is one group for every stage, or one per stage: a hierarchical hook mixes node-local and
    cross-node stages); every reserved stage is then either started or skipped exactly once —
    :meth:`chain` skips what an error left unstarted.
    """

    def __init__(self, state: HookState, groups: GroupInfo | Sequence[GroupInfo], stages: int, device: torch.device) -> None:
        self.groups = [groups] * stages if isinstance(groups, GroupInfo) else list(groups)
        if len(self.groups) != stages:
            raise ValueError(f"{stages} stages need {stages} groups, got {len(self.groups)}")
        self.group = self.groups[0]
        self.device = device
        self._lanes = state.lanes() if stages > 1 else None
        self._tickets = {k: self._lanes.reserve(self.groups[k].group, k) for k in range(1, stages)} if self._lanes else {}
        self._open = set(self._tickets)

    def start(self, stage: int, launch: Callable[[dist.ProcessGroup], torch.futures.Future]) -> torch.futures.Future:
        """Launch ``launch(group)`` as ``stage``; returns a future of the collective's result."""
        if stage == 0:
            return launch(self.group.group)
        self._open.remove(stage)
        out = _new_future(self.device)

        def start_on(group: dist.ProcessGroup) -> None:
            try:
                inner = launch(group)
            except BaseException as err:  # noqa: BLE001
                out.set_exception(err)
                return
            inner.add_done_callback(lambda f: _settle(out, f.value))

        target, ticket = self._tickets[stage]
        self._lanes.submit(target, ticket, start_on)
        return out

    def skip(self, stage: int) -> None:
        if stage in self._open:
            self._open.remove(stage)
            target, ticket = self._tickets[stage]
            self._lanes.submit(target, ticket, None)

    def skip_rest(self) -> None:
        for stage in sorted(self._open):
            self.skip(stage)

    def chain(self, fut: torch.futures.Future, fn: Callable[[Any], Any]) -> torch.futures.Future:
        """:func:`chain`, skipping every still-open stage if ``fut`` or ``fn`` fails."""

        def guarded(value: Any) -> Any:
            try:
                return fn(value)
            except BaseException:
                self.skip_rest()
                raise

        out = _new_future(self.device)

        def on_done(f: torch.futures.Future) -> None:
            try:
                value = f.value()
            except BaseException:
                self.skip_rest()
                _settle(out, f.value)
                return
            _settle(out, lambda: guarded(value))

        fut.add_done_callback(on_done)
        return out

    # -- collectives -------------------------------------------------------------------------
    def gather_fixed(self, stage: int, frame: torch.Tensor) -> torch.futures.Future:
        """All-gather equal-size frames; the future's value is the list of every rank's frame."""
        world = self.groups[stage].world
        out = torch.empty(world * frame.numel(), dtype=frame.dtype, device=frame.device)

        def launch(group: dist.ProcessGroup) -> torch.futures.Future:
            return dist.all_gather_single(out, frame, group=group, async_op=True).get_future()

        return self.chain(self.start(stage, launch), lambda _: list(out.view(world, -1)))

    def gather_variable(self, stage: int, frame: torch.Tensor, cap: int, on_invalid: OnInvalid, hook: str) -> torch.futures.Future:
        """All-gather frames of any size: sizes on ``stage``, frames on ``stage + 1``.

        A size above ``cap`` (bytes) is never allocated: with ``on_invalid="raise"`` every rank
        raises :class:`PeerPayloadError` naming the sender, with ``"mark"`` that rank's frame is
        ``None``. Every rank sees the same sizes, so every rank takes the same branch.
        """
        world = self.groups[stage].world
        size = torch.tensor([_announced_size(frame)], dtype=torch.int64, device=frame.device)
        sizes = torch.empty(world, dtype=torch.int64, device=frame.device)

        def launch_sizes(group: dist.ProcessGroup) -> torch.futures.Future:
            return dist.all_gather_single(sizes, size, group=group, async_op=True).get_future()

        def gather_frames(_: Any) -> Any:
            announced = sizes.tolist()
            accepted = [0 < n <= cap for n in announced]
            if on_invalid == "raise" and not all(accepted):
                rank = accepted.index(False)
                raise PeerPayloadError(hook, rank, f"announced {announced[rank]} bytes, outside [1, {cap}]")
            width = max([n for n, ok in zip(announced, accepted) if ok], default=0)
            if width == 0:
                self.skip(stage + 1)
                return [None] * world
            padded = torch.zeros(width, dtype=torch.uint8, device=frame.device)
            padded[: min(width, frame.numel())] = frame[:width]
            out = torch.empty(world * width, dtype=torch.uint8, device=frame.device)

            def launch_frames(group: dist.ProcessGroup) -> torch.futures.Future:
                return dist.all_gather_single(out, padded, group=group, async_op=True).get_future()

            rows = out.view(world, width)
            return self.chain(
                self.start(stage + 1, launch_frames),
                lambda _: [rows[r, : announced[r]] if accepted[r] else None for r in range(world)],
            )

        return self.chain(self.start(stage, launch_sizes), gather_frames)

    def exchange_fixed(self, stage: int, send: torch.Tensor, send_sizes: list[int], recv_size: int) -> torch.futures.Future:
        """All-to-all: ``send`` is this rank's frames for ranks 0..W-1 back to back (``send_sizes``);
        every rank sends this rank ``recv_size`` bytes, a size each computes. The future's value
        is the list of frames this rank received, in rank order."""
        world = self.groups[stage].world
        recv = torch.empty(world * recv_size, dtype=torch.uint8, device=send.device)

        def launch(group: dist.ProcessGroup) -> torch.futures.Future:
            return dist.all_to_all_single(
                recv, send, output_split_sizes=[recv_size] * world, input_split_sizes=send_sizes, group=group, async_op=True
            ).get_future()

        return self.chain(self.start(stage, launch), lambda _: list(recv.view(world, recv_size)))

    def exchange_variable(
        self, stage: int, frames: list[torch.Tensor], cap: int, on_invalid: OnInvalid, hook: str
    ) -> torch.futures.Future:
        """All-to-all of frames of any size: every rank's sizes for every rank on ``stage`` (all
        ranks see the whole size matrix, so they refuse the same entries), frames on ``stage + 1``.

        A size above ``cap`` is never allocated: with ``"raise"`` every rank raises
        :class:`PeerPayloadError` naming the sender; with ``"mark"`` the refused frame is ``None``
        (its sender sends nothing for it).
        """
        info = self.groups[stage]
        world, me = info.world, info.rank
        device = frames[0].device
        mine = torch.tensor([_announced_size(f) for f in frames], dtype=torch.int64, device=device)
        matrix = torch.empty(world * world, dtype=torch.int64, device=device)

        def launch_sizes(group: dist.ProcessGroup) -> torch.futures.Future:
            return dist.all_gather_single(matrix, mine, group=group, async_op=True).get_future()

        def exchange(_: Any) -> Any:
            sizes = matrix.view(world, world).tolist()  # sizes[sender][receiver]
            ok = [[0 < n <= cap for n in row] for row in sizes]
            for sender, row in enumerate(ok):
                if on_invalid == "raise" and not all(row):
                    n = sizes[sender][row.index(False)]
                    raise PeerPayloadError(hook, sender, f"announced {n} bytes, outside [1, {cap}]")
            send_sizes = [sizes[me][r] if ok[me][r] else 0 for r in range(world)]
            recv_sizes = [sizes[s][me] if ok[s][me] else 0 for s in range(world)]
            send = torch.cat([f if ok[me][r] else f[:0] for r, f in enumerate(frames)])
            recv = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=device)

            def launch_frames(group: dist.ProcessGroup) -> torch.futures.Future:
                return dist.all_to_all_single(
                    recv, send, output_split_sizes=recv_sizes, input_split_sizes=send_sizes, group=group, async_op=True
                ).get_future()

            def split(_: Any) -> list[torch.Tensor | None]:
                parts = list(torch.split(recv, recv_sizes))
                return [parts[s] if ok[s][me] else None for s in range(world)]

            return self.chain(self.start(stage + 1, launch_frames), split)

        return self.chain(self.start(stage, launch_sizes), exchange)

    def fp32_average(self, stage: int, buffer: torch.Tensor) -> torch.futures.Future:
        """``buffer`` reduced as PyTorch's default hook does it (in place: fp32 sum / world), on
        ``stage``; the future's value is ``buffer``."""
        buffer.div_(self.groups[stage].world)

        def launch(group: dist.ProcessGroup) -> torch.futures.Future:
            return dist.all_reduce(buffer, group=group, async_op=True).get_future()

        return self.chain(self.start(stage, launch), lambda _: buffer)


def _announced_size(frame: torch.Tensor) -> int:
    # What this rank tells its peers; a separate function so tests can play a hostile peer.
    return frame.numel()


def new_frame(size: int, device: torch.device | None) -> torch.Tensor:
    """A zeroed frame of ``size`` bytes (kind byte first): fill ``frame[1:]``, then :func:`mark_kind`."""
    return torch.zeros(size, dtype=torch.uint8, device=device)


def mark_kind(frame: torch.Tensor, finite: torch.Tensor | bool) -> torch.Tensor:
    """Set the kind byte: payload, or the non-finite marker when ``finite`` is false. ``finite``
    may be a 0-d bool tensor (e.g. ``isfinite(norms).all()``): no host synchronization."""
    if isinstance(finite, torch.Tensor):
        kinds = torch.tensor([FRAME_NONFINITE, FRAME_PAYLOAD], dtype=torch.uint8, device=frame.device)
        frame[0] = kinds[finite.to(torch.long)]
    else:
        frame[0] = FRAME_PAYLOAD if finite else FRAME_NONFINITE
    return frame


def make_frame(body: torch.Tensor | None, size: int | None = None, finite: torch.Tensor | bool = True) -> torch.Tensor:
    """A kind byte followed by ``body`` (a uint8 payload), or the non-finite marker.

    The marker is sent for ``body=None`` or when ``finite`` is false (see :func:`mark_kind`).
    ``size`` pads the frame to a length every rank computes the same (fixed-width payloads), so
    a marker travels in the same collective as everyone else's payload.
    """
    length = size if size is not None else 1 + (body.numel() if body is not None else 0)
    frame = new_frame(length, body.device if body is not None else None)
    if body is None:
        return mark_kind(frame, False)
    if 1 + body.numel() > length:
        raise ValueError(f"payload of {body.numel()} bytes does not fit a frame of {length} bytes")
    frame[1 : 1 + body.numel()] = body
    return mark_kind(frame, finite)


def frame_kind(frame: torch.Tensor) -> int:
    if frame.numel() < 1:
        raise ValueError("empty frame")
    kind = int(frame[0])
    if kind not in (FRAME_PAYLOAD, FRAME_NONFINITE, FRAME_BLAME):
        raise ValueError(f"unknown frame kind {kind}")
    return kind


def blame_frame(size: int, blamed: int, device: torch.device | None) -> torch.Tensor:
    """A frame (of ``size`` >= 5 bytes) telling every rank that rank ``blamed`` sent this rank an
    invalid payload."""
    frame = new_frame(size, device)
    frame[0] = FRAME_BLAME
    frame[1:5] = torch.tensor([blamed], dtype=torch.int32).view(torch.uint8).to(frame.device)
    return frame


def decode_frames(
    frames: Sequence[torch.Tensor | None],
    decode: Callable[[int, torch.Tensor], Any],
    on_invalid: OnInvalid,
    hook: str,
) -> tuple[list[Any], bool]:
    """Decode every rank's frame with ``decode(rank, body)``; returns ``(rows, any_nonfinite)``.

    A row is ``None`` for a non-finite marker and, under ``on_invalid="mark"``, for a frame that
    is missing or fails to decode (``ValueError``); under ``"raise"`` such a frame raises
    :class:`PeerPayloadError` naming its sender.
    """
    rows: list[Any] = []
    nonfinite = False
    for rank, frame in enumerate(frames):
        try:
            if frame is None:
                raise ValueError("no frame (its announced size was refused)")
            kind = frame_kind(frame)
            if kind == FRAME_NONFINITE:
                nonfinite = True
                rows.append(None)
                continue
            if kind == FRAME_BLAME:
                if frame.numel() < 5:
                    raise ValueError("truncated blame frame")
                blamed = int(frame[1:5].clone().view(torch.int32))
                raise PeerPayloadError(hook, blamed, f"reported by rank {rank}, which received it")
            rows.append(decode(rank, frame[1:]))
        except PeerPayloadError:
            if on_invalid == "raise":
                raise
            rows.append(None)
        except ValueError as err:
            if on_invalid == "raise":
                raise PeerPayloadError(hook, rank, str(err)) from err
            rows.append(None)
    return rows, nonfinite


def fp32_allreduce(state: HookState, bucket: dist.GradBucket, record: Callable[[int, int], None] | None = None) -> torch.futures.Future:
    """PyTorch's default fp32 allreduce (average) of ``bucket``, from a hook body: warm-up, small
    buckets, and hooks that compress nothing."""
    group = resolve_group(state.process_group)
    buffer = bucket.buffer()
    if record is not None:
        nbytes = buffer.numel() * buffer.element_size()
        record(nbytes, nbytes)
    return finish(state, bucket, BucketWire(state, group, 1, buffer.device).fp32_average(0, buffer))


def finish(state: HookState, bucket: dist.GradBucket, fut: torch.futures.Future) -> torch.futures.Future:
    """Every hook returns through here. On the last bucket the iteration ends *now*, in the body:
    bodies run in bucket order on every rank, so whatever the end of an iteration launches (an
    ALQ refit's all-reduce) is issued in the same place on every rank. The returned future waits
    for that too, so the next iteration starts with its results in place."""
    if not bucket.is_last():
        return fut
    extra = state._end_iteration()
    state.iteration += 1
    if extra is None:
        return fut
    def bucket_result(both: list[torch.futures.Future]) -> Any:
        both[1].value()  # raises if the end-of-iteration work failed
        return both[0].value()

    return chain(torch.futures.collect_all([fut, extra]), bucket_result, bucket.buffer().device)
