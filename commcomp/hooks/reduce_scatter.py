"""Compressed allreduce that scales with the world size: reduce-scatter, then all-gather, of
compressed chunks (the scheme of CGX and DeepSpeed ZeRO++'s qgZ).

For a bucket and ``W`` ranks:

1. The bucket is cut into ``W`` chunks on allowed cuts (:func:`~commcomp.hooks._params.chunk_bounds`:
   parameter boundaries or whole quantization buckets into a parameter; uneven ``W`` is fine).
   Each rank quantizes every chunk with its own Philox key and sends chunk ``r`` to rank ``r``:
   one ``all_to_all`` (fixed width: every size is computed, none exchanged; Elias: the sizes go
   first, as a stage of their own).
2. Rank ``r`` validates and decodes the ``W`` contributions to its chunk and averages them
   (``dequantize_accumulate``, senders in rank order), re-quantizes the average with fresh
   stochastic rounding, and all-gathers it (frames padded to the largest chunk's, whose size every
   rank computes; Elias: sizes first).
3. Every rank decodes the ``W`` reduced chunks into the bucket.

Per-rank wire bytes: ``(W-1)/W`` of the compressed bucket out and in for each phase, i.e.
``2(W-1)/W`` x the compressed size at any ``W``, as for a ring allreduce of the compressed data.
Both roundings are unbiased and independent, so the result is an unbiased estimate of the fp32
average; every rank decodes the same bytes in the same order, so parameters stay bit-identical.

Error feedback (``state.error_feedback``): each rank keeps the residual of what it sent in phase 1
for the whole bucket (``state.residuals.local``), and the residual of its re-quantization in
phase 2 for the chunk it owns (``state.residuals.reduced``), added back before the next
re-quantization of those coordinates. When the chunk layout moves (DDP rebuilt its buckets), a
rank hands the phase-2 residuals of coordinates it no longer owns over to its phase-1 residual
(times ``W``: they re-enter the next average unchanged). Without error feedback the result does
not depend on the bucket layout at all (quantization per parameter, phase-2 noise keyed by
parameter, not owner), so a resumed run is bit-identical with DDP's default layout; with error
feedback that needs a fixed layout (``bucket_cap_mb_list`` and ``find_unused_parameters=True``),
because the phase-2 residuals live on the rank that owned the chunk.

Non-finite buckets: a chunk with inf/NaN travels as a non-finite marker, its owner sends the
marker on in phase 2, and every rank then reduces the bucket in fp32 (as PyTorch's default hook).
A payload that fails validation on its receiver is reported in phase 2 (a blame frame), so every
rank raises the same :class:`~commcomp.hooks.PeerPayloadError` naming the sender.

Hierarchical mode (``CompressionState(..., hierarchical=True)``): an fp32 reduce-scatter inside each
node (fast links: ``reduce_scatter_single``, which NCCL runs as one ring pass and Gloo supports
through the communication thread's ``wait()``), the compressed two phases across nodes only (each
local rank handles its node's slice with its peers of the same local rank), then an fp32
all-gather inside the node.
"""
# no `from __future__ import annotations`: DDP checks that the hook's `bucket` annotation *is*
# dist.GradBucket, which string annotations fail
import torch
import torch.distributed as dist

from ..quantizers import Levels
from ._params import ParamSlice, chunk_bounds, pieces_in
from ._payload import accumulate_pieces, all_finite, decode_pieces, fixed_size, quantize_pieces, write_pieces
from ._wire import (
    FRAME_BLAME,
    BucketWire,
    GroupInfo,
    PeerPayloadError,
    blame_frame,
    decode_frames,
    finish,
    fp32_allreduce,
    make_frame,
    mark_kind,
    new_frame,
)
from ._bucket import ddp_comm_hook
from .state import CompressionState, check_compression_state

__all__ = ["reduce_scatter_hook"]


class _Step:
    """What callbacks of a bucket need from the state, read in the hook body: the iteration ends
    in the last bucket's body, possibly before an earlier bucket's callbacks run."""

    __slots__ = ("iteration", "own_wanted", "measure")

    def __init__(self, iteration: int, own_wanted: bool, measure: bool) -> None:
        self.iteration, self.own_wanted, self.measure = iteration, own_wanted, measure

    @classmethod
    def of(cls, state: CompressionState) -> "_Step":
        return cls(state.iteration, state.wants_decoded_own(), state.measuring_variance())

_HOOK = "reduce_scatter_hook"
# blame frames carry a 4-byte rank: phase-2 frames are at least this long
_MIN_FRAME = 5


def _check(state: CompressionState, world_size: int) -> None:
    check_compression_state(state, _HOOK)


@ddp_comm_hook(_check)
def reduce_scatter_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Average a DDP gradient bucket with a compressed reduce-scatter + all-gather.

    Works with every quantizer (QSGD, QSGDInf, NUQSGD, FixedLevels, ALQ, AMQ) and coding. See the
    module docstring for the protocol, error feedback, non-finite buckets and hierarchical mode.

    Example::

        >>> # torchrun --nproc_per_node=4 ... ; inside the script:
        >>> # state = CompressionState(commcomp.NUQSGD(bits=4, bucket_size=512))
        >>> # ddp_model.register_comm_hook(state, reduce_scatter_hook)
    """
    buffer = bucket.buffer()
    numel = buffer.numel()
    slices = state.parameter_slices(bucket)
    if not state.compressing(numel):
        return fp32_allreduce(state, bucket, state.record)
    levels = state.quantizer.levels  # this iteration's: a refit may land before the callbacks run
    # Hierarchical: a rank sends its node's slice, and keeps the residuals of that (see below).
    x = buffer.to(torch.float32) if state.hierarchical else state.with_residual(bucket, slices)
    compressed_stages = 2 if state.coding == "fixed" else 4
    if state.hierarchical:
        intra, inter, everyone = state.node_groups()
        # stages: node reduce-scatter, compressed phases across nodes, node all-gather, fallback
        groups = [intra] + [inter] * compressed_stages + [intra, everyone]
        wire = BucketWire(groups, len(groups), buffer.device)
        # ALQ/AMQ statistics from this rank's own gradient: the node's slices are only known later
        for piece in pieces_in(slices, 0, numel):
            state.observe(x[piece.start : piece.start + piece.numel])
        reduced = _hierarchical(state, wire, intra, inter, x, slices, levels)
    else:
        group = state.send_groups()[-1]
        wire = BucketWire(group, compressed_stages + 1, buffer.device)
        # fp32 buckets are decoded in place: no fresh 4-bytes-per-element buffer to fault in
        into = buffer if buffer.dtype == torch.float32 and buffer.is_contiguous() else None
        reduced = _compressed_average(state, wire, 0, group, x, 0, numel, slices, levels, _Step.of(state), True, into)
    fallback = len(wire.groups) - 1

    def into_bucket(average: torch.Tensor | None) -> torch.Tensor | torch.futures.Future:
        if average is None:  # some rank's bucket held inf/NaN
            return wire.fp32_average(fallback, buffer)
        wire.skip(fallback)
        return buffer if average.data_ptr() == buffer.data_ptr() else buffer.copy_(average)

    return finish(state, bucket, wire.chain(reduced, into_bucket))


def _compressed_average(
    state: CompressionState,
    wire: BucketWire,
    stage: int,
    group: GroupInfo,
    x: torch.Tensor,
    lo: int,
    hi: int,
    slices: list[ParamSlice],
    levels: Levels,
    step: _Step,
    observe: bool,
    into: torch.Tensor | None = None,
) -> torch.futures.Future:
    """The two compressed phases over ``group`` for bucket coordinates ``[lo, hi)`` of ``x`` (which
    holds the whole bucket); the future's value is the fp32 average of that range over the group's
    ranks, or ``None`` if some rank's range held inf/NaN. ``observe``: feed ALQ/AMQ statistics
    (only from a hook body). ``into``: an fp32 tensor in bucket coordinates to decode the average
    into (it may be ``x`` itself: ``x`` is read before it is overwritten)."""
    quantizer, world, me = state.quantizer, group.world, group.rank
    bucket_size, device, fixed = quantizer.bucket_size, x.device, state.coding == "fixed"
    chunks = chunk_bounds(slices, lo, hi, bucket_size, world)
    chunk_pieces = [pieces_in(slices, a, b) for a, b in chunks]
    mine_lo, mine_hi = chunks[me]
    seed = state.rank_seed(dist.get_rank())
    payloads = [quantize_pieces(quantizer, levels, x, 0, pieces, seed, step.iteration, 0) for pieces in chunk_pieces]
    if observe:
        for pieces, payload in zip(chunk_pieces, payloads):
            for piece, q in zip(pieces, payload):
                state.observe(x[piece.start : piece.start + piece.numel], q.norms)
    if fixed:
        sizes = [1 + fixed_size(pieces, bucket_size, levels) for pieces in chunk_pieces]
        send = new_frame(sum(sizes), device)
        at = 0
        for size, payload in zip(sizes, payloads):
            frame = send[at : at + size]
            write_pieces(payload, frame[1:])  # straight into the send buffer
            mark_kind(frame, all_finite(payload, device))
            at += size
        received = wire.exchange_fixed(stage, send, sizes, sizes[me])
        gather_size = max(_MIN_FRAME, max(sizes))  # phase-2 frames, padded to the largest chunk's
        # the compressed bucket: 2(W-1)/W of it crosses the wire per rank
        state.record(sum(sizes), (hi - lo) * x.element_size(), step.iteration)
    else:  # the codes' sizes are read on the host: on the communication thread

        def encode_and_exchange() -> torch.futures.Future:
            frames = [
                make_frame(state.elias.encode(p, pieces, state.coding, step.iteration).to(device), device,
                           finite=all_finite(p, device))
                for p, pieces in zip(payloads, chunk_pieces)
            ]
            state.record(sum(f.numel() for f in frames), (hi - lo) * x.element_size(), step.iteration)
            return wire.exchange_variable(stage, frames, state.payload_cap(hi - lo), "raise", _HOOK)

        received = wire.defer(encode_and_exchange)
    phase2 = stage + (1 if fixed else 2)

    pending: list = []  # this rank's phase-2 residual, kept once the whole bucket went through

    def reduce_mine(frames: list[torch.Tensor]) -> torch.futures.Future:
        frame = _reduce_and_requantize(state, frames, chunk_pieces[me], mine_lo, mine_hi, slices, levels, device, step, pending)
        if fixed:
            padded = new_frame(gather_size, device)
            padded[: frame.numel()] = frame
            return wire.gather_fixed(phase2, padded)
        return wire.gather_variable(phase2, frame, state.payload_cap(hi - lo), "raise", _HOOK)

    def assemble(frames: list[torch.Tensor]) -> torch.Tensor | None:
        if fixed:  # cut the padding off: each chunk's payload size is known
            frames = [f if f.numel() < 1 or int(f[0]) == FRAME_BLAME else f[: 1 + fixed_size(p, bucket_size, levels)]
                      for f, p in zip(frames, chunk_pieces)]
        reduced, nonfinite = decode_frames(
            frames, lambda r, body: decode_pieces(body, chunk_pieces[r], levels, bucket_size), "raise", _HOOK
        )
        if nonfinite:
            return None  # the bucket goes again in fp32; residuals stay as they were
        if step.own_wanted:
            own = torch.zeros(hi - lo, dtype=torch.float32, device=device)
            for pieces, payload in zip(chunk_pieces, payloads):
                accumulate_pieces(own, lo, pieces, [payload], levels, bucket_size, 1.0)
            state.after_compression(slices, x[lo:hi], own, lo, step.measure)
        for residual in pending:
            state.residuals.hand_over_reduced(slices, mine_lo, mine_hi, float(world), device)
            state.residuals.store(residual, slices, "reduced", mine_lo)
        out = into[lo:hi].zero_() if into is not None else torch.zeros(hi - lo, dtype=torch.float32, device=device)
        for pieces, payload in zip(chunk_pieces, reduced):
            accumulate_pieces(out, lo, pieces, [payload], levels, bucket_size, 1.0)
        return out

    return wire.chain(wire.chain(received, reduce_mine), assemble)


def _reduce_and_requantize(
    state: CompressionState,
    frames: list[torch.Tensor | None],
    pieces: list,
    lo: int,
    hi: int,
    slices: list[ParamSlice],
    levels: Levels,
    device: torch.device,
    step: _Step,
    pending: list,
) -> torch.Tensor:
    """Phase 2 on this rank: average the contributions to its chunk, re-quantize, frame it.

    A contribution that fails validation is not raised here (only this rank saw it): the frame
    blames its sender, so every rank raises the same error after the all-gather. The error of the
    re-quantization goes to ``pending`` (kept as a residual once the bucket went through).
    """
    quantizer = state.quantizer
    try:
        contributions, nonfinite = decode_frames(
            frames, lambda r, body: decode_pieces(body, pieces, levels, quantizer.bucket_size), "raise", _HOOK
        )
    except PeerPayloadError as err:
        return blame_frame(_MIN_FRAME, err.rank, device)
    if nonfinite:
        return make_frame(None, device)
    average = torch.zeros(hi - lo, dtype=torch.float32, device=device)
    accumulate_pieces(average, lo, pieces, contributions, levels, quantizer.bucket_size, 1.0 / len(frames))
    if state.error_feedback:
        state.residuals.add_to(average, slices, "reduced", lo)
    # Phase-2 noise is keyed by the parameters, not the owner: a re-cut chunk draws the same.
    requantized = quantize_pieces(quantizer, levels, average, lo, pieces, state.seed, step.iteration, 1)
    if state.error_feedback:
        decoded = torch.zeros_like(average)
        accumulate_pieces(decoded, lo, pieces, [requantized], levels, quantizer.bucket_size, 1.0)
        pending.append(average - decoded)
    if state.coding == "fixed":
        frame = new_frame(1 + fixed_size(pieces, quantizer.bucket_size, levels), device)
        write_pieces(requantized, frame[1:])
        return mark_kind(frame, all_finite(requantized, device))
    body = state.elias.encode(requantized, pieces, state.coding, step.iteration).to(device)
    return make_frame(body, device, finite=all_finite(requantized, device))


def _hierarchical(
    state: CompressionState,
    wire: BucketWire,
    intra: GroupInfo,
    inter: GroupInfo,
    x: torch.Tensor,
    slices: list[ParamSlice],
    levels: Levels,
) -> torch.futures.Future:
    """fp32 reduce-scatter in the node, compressed phases across nodes on this rank's slice,
    fp32 all-gather in the node; the future's value is the bucket's average, or ``None``."""
    numel, device = x.numel(), x.device
    local = intra.world
    slices_of_node = chunk_bounds(slices, 0, numel, state.quantizer.bucket_size, local)
    width = max(1, max(b - a for a, b in slices_of_node))
    send = torch.zeros(local * width, dtype=torch.float32, device=device)
    for k, (a, b) in enumerate(slices_of_node):
        send[k * width : k * width + (b - a)] = x[a:b]
    # Each local rank's slice summed over the node by one reduce-scatter (padded to equal widths).
    node_sum = torch.empty(width, dtype=torch.float32, device=device)
    summed = wire.start(0, lambda g: dist.reduce_scatter_single(node_sum, send, group=g, async_op=True))
    mine_lo, mine_hi = slices_of_node[intra.rank]
    compressed_stages = 2 if state.coding == "fixed" else 4
    gather_stage = 1 + compressed_stages
    step = _Step.of(state)

    def across_nodes(_: object) -> torch.futures.Future:
        node_mean = torch.zeros(numel, dtype=torch.float32, device=device)  # bucket coordinates
        node_mean[mine_lo:mine_hi] = node_sum[: mine_hi - mine_lo] / local
        if state.error_feedback:  # this rank sends its node's slice: its residuals live there
            state.residuals.keep_only(slices, "local", mine_lo, mine_hi)
            state.residuals.add_to(node_mean[mine_lo:mine_hi], slices, "local", mine_lo)
        return _compressed_average(state, wire, 1, inter, node_mean, mine_lo, mine_hi, slices, levels, step, False)

    def share_in_node(average: torch.Tensor | None) -> torch.futures.Future:
        frame = torch.zeros(1 + width, dtype=torch.float32, device=device)  # [non-finite flag, slice]
        if average is None:
            frame[0] = 1.0
        else:
            frame[1 : 1 + mine_hi - mine_lo] = average
        out = torch.empty(local * (1 + width), dtype=torch.float32, device=device)
        shared = wire.start(gather_stage, lambda g: dist.all_gather_single(out, frame, group=g, async_op=True))

        def assemble(_: object) -> torch.Tensor | None:
            rows = out.view(local, 1 + width)
            if bool((rows[:, 0] != 0).any()):
                return None
            bucket_average = torch.empty(numel, dtype=torch.float32, device=device)
            for k, (a, b) in enumerate(slices_of_node):
                bucket_average[a:b] = rows[k, 1 : 1 + b - a]
            return bucket_average

        return wire.chain(shared, assemble)

    return wire.chain(wire.chain(summed, across_nodes), share_in_node)
