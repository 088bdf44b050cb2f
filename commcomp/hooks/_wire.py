"""The one wire layer under every commcomp DDP hook (compression and robust aggregation alike).

What it owns, so no hook writes it again:

* **Stages.** A bucket's collectives are its *stages*: a hook body constructs a
  :class:`BucketWire` with the most stages the bucket can use (a function of the configuration
  only), which reserves one place per stage in the global launch order of the communication
  thread (:mod:`._comm_thread`); every reserved stage is then started or skipped exactly once.
  Stages go to commcomp's own copies of the hook's groups (:mod:`._groups`).
* **Follow-ups.** Whatever needs a collective's result (:meth:`BucketWire.chain`, :func:`chain`)
  runs on the communication thread, on commcomp's stream (:mod:`._streams`), after a
  ``wait()`` on the future it follows: futures are joined by waiting, never by reading a
  sub-future's value (which on CUDA would skip the stream synchronization).
* **Frames.** What a rank sends for a bucket: one kind byte, then a codec payload
  (``FRAME_PAYLOAD``), or nothing but padding when the rank's bucket holds inf/NaN
  (``FRAME_NONFINITE``). A non-finite bucket anywhere sends that bucket again as a plain fp32
  average (:meth:`BucketWire.fp32_average`), so AMP's GradScaler sees exactly what PyTorch's
  default hook would have given it. Frames live on the bucket's device.
* **Errors seen by one rank.** In an all-to-all each rank receives other bytes: a rank that finds
  a peer's payload invalid sends, in its next collective, a *blame* frame naming that peer
  (``FRAME_BLAME``), so every rank raises the same error instead of waiting for it.
* **Untrusted sizes.** :meth:`BucketWire.gather_variable` exchanges sizes first and refuses any
  announced size above a cap before it allocates anything.
* **Undecodable peers.** :func:`decode_frames` applies one policy: ``"raise"`` a
  :class:`PeerPayloadError` naming the sender, or ``"mark"`` the row invalid (``None``).
* **Iterations.** :func:`finish` is the one place an iteration ends: in the body of the last
  bucket, where every rank gets to in the same order.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch
import torch.distributed as dist

from ._comm_thread import comm_thread, new_future
from ._groups import GroupInfo

__all__ = [
    "FRAME_PAYLOAD",
    "FRAME_NONFINITE",
    "FRAME_BLAME",
    "blame_frame",
    "OnInvalid",
    "PeerPayloadError",
    "BucketWire",
    "make_frame",
    "new_frame",
    "mark_kind",
    "frame_kind",
    "decode_frames",
    "fp32_allreduce",
    "finish",
    "chain",
    "join",
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


def done_future(value: Any, device: torch.device | None = None) -> torch.futures.Future:
    fut = new_future(device)
    fut.set_result(value)
    return fut


def _after(fut: torch.futures.Future, then: Callable[[torch.futures.Future], None], device: torch.device) -> None:
    """Run ``then(fut)`` on the communication thread once ``fut`` is done (never inline here)."""
    thread = comm_thread()
    fut.add_done_callback(lambda f: thread.post(lambda: then(f), device))


def _settle(out: torch.futures.Future, fn: Callable[[], Any], device: torch.device) -> None:
    """Complete ``out`` with ``fn()``, or with the future ``fn()`` returns once that is done."""
    try:
        result = fn()
    except BaseException as err:  # noqa: BLE001 (handed to whoever waits on `out`)
        out.set_exception(err)
        return
    if isinstance(result, torch.futures.Future):
        _after(result, lambda f: _settle(out, f.wait, device), device)
    else:
        out.set_result(result)


def chain(
    fut: torch.futures.Future,
    fn: Callable[[Any], Any],
    device: torch.device,
    on_error: Callable[[], None] | None = None,
) -> torch.futures.Future:
    """``fut.then(fn)`` run on the communication thread, where ``fn(value)`` may return a value
    or another future (flattened). ``value`` comes from ``fut.wait()``. Errors of ``fut`` or
    ``fn`` reach the returned future (after ``on_error()``); the caller never waits."""

    def follow(f: torch.futures.Future) -> Any:
        try:
            return fn(f.wait())
        except BaseException:
            if on_error is not None:
                on_error()
            raise

    out = new_future(device)
    _after(fut, lambda f: _settle(out, lambda: follow(f), device), device)
    return out


def join(futures: Sequence[torch.futures.Future], device: torch.device) -> torch.futures.Future:
    """A future of the list of every future's value, each taken by ``wait()`` (in order): what
    ``collect_all`` is for, without reading a sub-future's value unsynchronized."""
    if not futures:
        return done_future([], device)
    first, rest = futures[0], futures[1:]
    return chain(first, lambda value: chain(join(rest, device), lambda values: [value, *values], device), device)


class BucketWire:
    """The collectives of one bucket, in stages.

    Construct it in the hook body with the most stages the bucket can use (a function of the
    configuration only, so every rank reserves the same places) and each stage's group
    (``groups`` is one group for every stage, or one per stage: a hierarchical hook mixes
    node-local and cross-node stages; commcomp's copies, :mod:`._groups`); every reserved stage
    is then either started or skipped exactly once — :meth:`chain` skips what an error left
    unstarted.
    """

    def __init__(self, groups: GroupInfo | Sequence[GroupInfo], stages: int, device: torch.device) -> None:
        self.groups = [groups] * stages if isinstance(groups, GroupInfo) else list(groups)
        if len(self.groups) != stages:
            raise ValueError(f"{stages} stages need {stages} groups, got {len(self.groups)}")
        self.group = self.groups[0]
        self.device = device
        self._thread = comm_thread()
        self._tickets = [self._thread.reserve() for _ in range(stages)]
        self._open = set(range(stages))

    def start(self, stage: int, launch: Callable[[dist.ProcessGroup], dist.Work]) -> torch.futures.Future:
        """Launch ``launch(group)`` (an ``async_op=True`` collective returning its ``Work``) as
        ``stage``; returns a future completed once the collective is done (value ``None``)."""
        self._open.remove(stage)
        group = self.groups[stage].group
        return self._thread.submit(self._tickets[stage], lambda: launch(group), self.device)

    def defer(self, fn: Callable[[], Any]) -> torch.futures.Future:
        """Run ``fn()`` on the communication thread (it may return a future, flattened): work of a
        hook body that reads on the host (an Elias code's size, a row's check), kept off backward's
        thread. A failure skips the still-open stages, as in :meth:`chain`."""
        return self.chain(done_future(None, self.device), lambda _: fn())

    def skip(self, stage: int) -> None:
        if stage in self._open:
            self._open.remove(stage)
            self._thread.submit(self._tickets[stage], None, self.device)

    def skip_rest(self) -> None:
        for stage in sorted(self._open):
            self.skip(stage)

    def chain(self, fut: torch.futures.Future, fn: Callable[[Any], Any]) -> torch.futures.Future:
        """:func:`chain`, skipping every still-open stage if ``fut`` or ``fn`` fails."""
        return chain(fut, fn, self.device, on_error=self.skip_rest)

    # -- collectives -------------------------------------------------------------------------
    def gather_fixed(self, stage: int, frame: torch.Tensor) -> torch.futures.Future:
        """All-gather equal-size frames; the future's value is the list of every rank's frame."""
        world = self.groups[stage].world
        out = torch.empty(world * frame.numel(), dtype=frame.dtype, device=frame.device)

        def launch(group: dist.ProcessGroup) -> dist.Work:
            return dist.all_gather_single(out, frame, group=group, async_op=True)

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

        def launch_sizes(group: dist.ProcessGroup) -> dist.Work:
            return dist.all_gather_single(sizes, size, group=group, async_op=True)

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

            def launch_frames(group: dist.ProcessGroup) -> dist.Work:
                return dist.all_gather_single(out, padded, group=group, async_op=True)

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

        def launch(group: dist.ProcessGroup) -> dist.Work:
            return dist.all_to_all_single(
                recv, send, output_split_sizes=[recv_size] * world, input_split_sizes=send_sizes, group=group, async_op=True
            )

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

        def launch_sizes(group: dist.ProcessGroup) -> dist.Work:
            return dist.all_gather_single(matrix, mine, group=group, async_op=True)

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

            def launch_frames(group: dist.ProcessGroup) -> dist.Work:
                return dist.all_to_all_single(
                    recv, send, output_split_sizes=recv_sizes, input_split_sizes=send_sizes, group=group, async_op=True
                )

            def split(_: Any) -> list[torch.Tensor | None]:
                parts = list(torch.split(recv, recv_sizes))
                return [parts[s] if ok[s][me] else None for s in range(world)]

            return self.chain(self.start(stage + 1, launch_frames), split)

        return self.chain(self.start(stage, launch_sizes), exchange)

    def fp32_average(self, stage: int, buffer: torch.Tensor) -> torch.futures.Future:
        """``buffer`` reduced as PyTorch's default hook does it (in place: fp32 sum / world), on
        ``stage``; the future's value is ``buffer``."""
        buffer.div_(self.groups[stage].world)

        def launch(group: dist.ProcessGroup) -> dist.Work:
            return dist.all_reduce(buffer, group=group, async_op=True)

        return self.chain(self.start(stage, launch), lambda _: buffer)

    def all_reduce_sum(self, stage: int, tensor: torch.Tensor) -> torch.futures.Future:
        """``tensor`` summed over the stage's group in place; the future's value is ``tensor``."""

        def launch(group: dist.ProcessGroup) -> dist.Work:
            return dist.all_reduce(tensor, group=group, async_op=True)

        return self.chain(self.start(stage, launch), lambda _: tensor)


def _announced_size(frame: torch.Tensor) -> int:
    # What this rank tells its peers; a separate function so tests can play a hostile peer.
    return frame.numel()


def new_frame(size: int, device: torch.device) -> torch.Tensor:
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


def make_frame(
    body: torch.Tensor | None, device: torch.device, size: int | None = None, finite: torch.Tensor | bool = True
) -> torch.Tensor:
    """A kind byte followed by ``body`` (a uint8 payload), or the non-finite marker, on ``device``
    (the bucket's: a collective's tensors live on the process group's device).

    The marker is sent for ``body=None`` or when ``finite`` is false (see :func:`mark_kind`).
    ``size`` pads the frame to a length every rank computes the same (fixed-width payloads), so
    a marker travels in the same collective as everyone else's payload.
    """
    length = size if size is not None else 1 + (body.numel() if body is not None else 0)
    frame = new_frame(length, device)
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


def blame_frame(size: int, blamed: int, device: torch.device) -> torch.Tensor:
    """A frame (of ``size`` >= 5 bytes) telling every rank that rank ``blamed`` sent this rank an
    invalid payload."""
    frame = new_frame(size, device)
    frame[0] = FRAME_BLAME
    frame[1:5] = torch.tensor([blamed], dtype=torch.int32, device=device).view(torch.uint8)
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


def fp32_allreduce(state: Any, bucket: dist.GradBucket, record: Callable[[int, int], None] | None = None) -> torch.futures.Future:
    """PyTorch's default fp32 allreduce (average) of ``bucket``, from a hook body: warm-up, small
    buckets, and hooks that compress nothing."""
    buffer = bucket.buffer()
    if record is not None:
        nbytes = buffer.numel() * buffer.element_size()
        record(nbytes, nbytes)
    wire = BucketWire(state.send_groups()[-1], 1, buffer.device)
    return finish(state, bucket, wire.fp32_average(0, buffer))


def finish(state: Any, bucket: dist.GradBucket, fut: torch.futures.Future) -> torch.futures.Future:
    """Every hook returns through here. On the last bucket the iteration ends *now*, in the body:
    bodies run in bucket order on every rank, so whatever the end of an iteration launches (an
    ALQ refit's all-reduce) takes its place in the launch order at the same point on every rank.
    The returned future waits for that too, so the next iteration starts with its results in
    place."""
    if not bucket.is_last():
        return fut
    device = bucket.buffer().device
    extra = state._end_iteration(device)
    state.iteration += 1
    if extra is None:
        return fut
    return chain(fut, lambda value: chain(extra, lambda _: value, device), device)
