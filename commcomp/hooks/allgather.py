"""All-gather aggregation of compressed gradients: what QSGD/NUQSGD analyse.

Each rank quantizes its bucket, parameter by parameter (:mod:`._params`: the result does not
depend on DDP's bucket layout), and sends the payloads in one frame (:mod:`._wire`); frames are
all-gathered (fixed-width frames have a size every rank computes, so one collective; Elias frames
exchange their sizes first, a stage before); every rank decodes all frames in rank order and
averages them. The average is unbiased, and every rank computes it from the same bytes in the
same order, so parameters stay bit-identical across ranks. Nothing in the hook body waits for a
peer. Per-rank traffic grows with the world size: :func:`~commcomp.hooks.reduce_scatter_hook`
is the one that scales.
"""

import torch
import torch.distributed as dist

from ..quantizers import Levels
from ._params import ParamSlice, pieces_in
from ._payload import accumulate_pieces, all_finite, decode_pieces, fixed_size, quantize_pieces, write_pieces
from ._wire import BucketWire, decode_frames, finish, fp32_allreduce, make_frame, mark_kind, new_frame
from ._bucket import ddp_comm_hook
from .state import CompressionState, check_compression_state

__all__ = ["allgather_hook"]

_HOOK = "allgather_hook"


def _check(state: CompressionState, world_size: int) -> None:
    check_compression_state(state, _HOOK)


@ddp_comm_hook(_check)
def allgather_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Quantize, encode, all-gather and average a DDP gradient bucket.

    Buckets in warm-up (``state.start_iter``) or smaller than ``state.min_compression_numel`` go
    through fp32 allreduce. A bucket holding inf/NaN on some rank is sent by that rank as a
    non-finite marker; every rank then reduces that bucket in fp32 instead, so AMP's GradScaler
    sees the inf/NaN as with PyTorch's default hook. A payload that fails validation, or an
    announced size above ``state.max_payload_bytes``, raises
    :class:`~commcomp.hooks.PeerPayloadError` (a ``RuntimeError``) naming the sending rank.

    Example::

        >>> # torchrun --nproc_per_node=2 ... ; inside the script:
        >>> # state = CompressionState(commcomp.QSGD(bits=4, bucket_size=512), coding="elias-gamma")
        >>> # ddp_model.register_comm_hook(state, allgather_hook)
    """
    buffer = bucket.buffer()
    numel = buffer.numel()
    slices = state.parameter_slices(bucket)
    if not state.compressing(numel):
        return fp32_allreduce(state, bucket, state.record)
    group = state.send_groups()[-1]
    quantizer = state.quantizer
    levels = quantizer.levels  # this iteration's: a refit may land before the callbacks run
    fixed = state.coding == "fixed"
    # stages: [sizes,] frames, fp32 fallback for a non-finite bucket
    wire = BucketWire(group, 2 if fixed else 3, buffer.device)
    fallback_stage = 1 if fixed else 2
    x = state.with_residual(bucket, slices)
    pieces = pieces_in(slices, 0, numel)
    # Non-finite buckets come back with their inf/NaN norm (the kernel reads every element anyway):
    # the frame's kind byte says so, computed on the device, with no second pass over x.
    payload = quantize_pieces(quantizer, levels, x, 0, pieces, state.rank_seed(group.rank), state.iteration, 0)
    for piece, q in zip(pieces, payload):
        state.observe(x[piece.start : piece.start + piece.numel], q.norms)
    finite = all_finite(payload, buffer.device)
    if fixed:
        frame = new_frame(1 + fixed_size(pieces, quantizer.bucket_size, levels), buffer.device)
        write_pieces(payload, frame[1:])  # straight into the send buffer
        mark_kind(frame, finite)
        gathered = wire.gather_fixed(0, frame)
        state.record(frame.numel(), numel * buffer.element_size())
    else:  # the code's size is read on the host: on the communication thread
        iteration = state.iteration

        def encode_and_gather() -> torch.futures.Future:
            body = state.elias.encode(payload, pieces, state.coding, iteration).to(buffer.device)
            frame = make_frame(body, buffer.device, finite=finite)
            state.record(frame.numel(), numel * buffer.element_size(), iteration)
            return wire.gather_variable(0, frame, state.payload_cap(numel), "raise", _HOOK)

        gathered = wire.defer(encode_and_gather)
    own_wanted, measure = state.wants_decoded_own(), state.measuring_variance()

    def average(frames: list[torch.Tensor]) -> torch.Tensor | torch.futures.Future:
        decoded = _decode_frames(state, frames, slices, numel, levels)
        if decoded is None:
            return wire.fp32_average(fallback_stage, buffer)
        wire.skip(fallback_stage)
        if own_wanted:  # before the bucket is overwritten: x may be the bucket itself
            own = torch.zeros(numel, dtype=torch.float32, device=buffer.device)
            accumulate_pieces(own, 0, pieces, [payload], levels, quantizer.bucket_size, 1.0)
            state.after_compression(slices, x, own, measure=measure)
        # fp32 buckets are decoded in place: no fresh 4-bytes-per-element buffer to fault in
        in_place = buffer.dtype == torch.float32 and buffer.is_contiguous()
        total = buffer.zero_() if in_place else torch.zeros(numel, dtype=torch.float32, device=buffer.device)
        accumulate_pieces(total, 0, pieces, decoded, levels, quantizer.bucket_size, 1.0 / len(frames))
        return buffer if in_place else buffer.copy_(total)

    return finish(state, bucket, wire.chain(gathered, average))


def _decode_frames(
    state: CompressionState, frames: list[torch.Tensor], slices: list[ParamSlice], numel: int, levels: Levels
) -> list | None:
    """Every rank's validated payloads, or ``None`` if some rank sent a non-finite marker.

    Every payload must carry ``levels``, the levels this rank quantized with: honest ranks
    quantize an iteration with the same levels, so a payload with others is blamed on its sender.
    """
    pieces = pieces_in(slices, 0, numel)
    bucket_size = state.quantizer.bucket_size
    payloads, nonfinite = decode_frames(
        frames, lambda rank, body: decode_pieces(body, pieces, levels, bucket_size), "raise", _HOOK
    )
    return None if nonfinite else payloads


def _average_frames(
    state: CompressionState,
    frames: list[torch.Tensor],
    slices: list[ParamSlice],
    numel: int,
    device: torch.device,
    levels: Levels | None = None,
) -> torch.Tensor | None:
    """The average of every rank's decoded frame (a fresh fp32 tensor), or ``None`` if some rank
    sent a non-finite marker; ``levels`` defaults to the quantizer's."""
    levels = levels if levels is not None else state.quantizer.levels
    decoded = _decode_frames(state, frames, slices, numel, levels)
    if decoded is None:
        return None
    total = torch.zeros(numel, dtype=torch.float32, device=device)
    accumulate_pieces(total, 0, pieces_in(slices, 0, numel), decoded, levels, state.quantizer.bucket_size, 1.0 / len(frames))
    return total
