"""Allreduce aggregation with a shared scale: the wire stays a (ring-efficient) allreduce.

Ranks all-reduce the per-bucket max norm, quantize their gradients against that shared scale, map
symbols to signed integers on the level table's grid, and all-reduce the integers (on the next
stage of :mod:`._wire`, followed up on the communication thread: the hook body waits for
nothing). The sum decodes to the average.

Trade-off against :func:`~commcomp.hooks.allgather_hook`: the estimate is still unbiased (stochastic
rounding is unbiased for any scale >= the bucket's own norm), but each rank rounds at the coarser
resolution of the *largest* norm, so the variance grows with the spread of norms across ranks; and
the integers grow with the world size (int8 while ``max_level_integer * world_size <= 127``, else
int32), so the per-coordinate wire cost is 8 or 32 bits, not ``bits``. In exchange the traffic per
rank does not grow with the number of ranks, as an all-gather's does. Only level tables on an
integer grid qualify: uniform (QSGD, QSGDInf) and exponential (NUQSGD up to 6 bits).

What cannot work is refused before anything is sent (:func:`check_allreduce_state`, run by
:func:`~commcomp.hooks.hook_from_spec`, :func:`~commcomp.hooks.register_comm_hook` and every call):
ALQ/AMQ (their refits leave the grid), level tables off the grid, Elias codings (nothing to code),
and int32 sums, which cost what fp32 does, unless ``CompressionState(allow_wide_sums=True)``.
"""
import torch
import torch.distributed as dist

from .. import ops
from ..quantizers import Levels
from ._bucket import ddp_comm_hook
from ._params import pieces_in, stream_offset
from ._wire import BucketWire, finish, fp32_allreduce
from .state import CompressionState, check_compression_state

__all__ = ["allreduce_hook", "level_grid", "wire_dtype", "check_allreduce_state"]

_INT32_MAX = 2**31 - 1


def level_grid(levels: Levels) -> tuple[float, torch.Tensor]:
    """``(unit, integers)`` with ``levels == unit * integers`` up to float32 rounding, or ``ValueError``.

    ``unit = 1 / integers[-1]``; every level must be an integer multiple of it (to 1e-6 relative,
    since float32 cannot hold e.g. 2/7 exactly; the resulting bias is below float32 resolution).
    """
    values = torch.tensor(levels.values, dtype=torch.float64)
    integers = (values / values[1]).round()
    unit = 1.0 / float(integers[-1]) if integers[-1] > 0 else 0.0
    on_grid = bool(((integers * unit - values).abs() <= 1e-6 * values).all())
    if not on_grid or integers[-1] > _INT32_MAX:
        raise ValueError(
            f"allreduce_hook needs levels on an integer grid (QSGD, QSGDInf, NUQSGD <= 6 bits); "
            f"got {levels.values[:4]}...: use reduce_scatter_hook or allgather_hook for ALQ/AMQ, NUQSGD above 6 bits "
            "or other tables"
        )
    return unit, integers.to(torch.int64)


def wire_dtype(max_integer: int, world_size: int) -> torch.dtype:
    """Narrowest integer type (of those Gloo and NCCL both reduce) that cannot overflow."""
    if max_integer * world_size <= 127:
        return torch.int8
    if max_integer * world_size <= _INT32_MAX:
        return torch.int32
    raise ValueError(f"level integers up to {max_integer} overflow int32 when summed over {world_size} ranks")


def check_allreduce_state(state: CompressionState, world_size: int | None) -> None:
    """``ValueError`` unless :func:`allreduce_hook` can run ``state`` at ``world_size`` ranks
    (``None``: not known yet) and save bytes doing it (or ``state.allow_wide_sums``)."""
    check_compression_state(state, "allreduce_hook")
    quantizer = state.quantizer
    if hasattr(quantizer, "start_update"):  # ALQ, AMQ: rank-synchronized refits
        raise ValueError(
            f"allreduce_hook cannot use {quantizer!r}: its refits move the levels off the integer grid the "
            f"integer allreduce needs, so it would fail at the first refit; use reduce_scatter_hook "
            f"('rs-{quantizer.name}:{quantizer.bits}') or allgather_hook ('{quantizer.name}:{quantizer.bits}')"
        )
    if state.coding != "fixed":
        raise ValueError(
            f"allreduce_hook sends integer sums, not coded symbols: coding={state.coding!r} would be ignored; "
            "use coding='fixed', or allgather_hook / reduce_scatter_hook for Elias codings"
        )
    _, integers = level_grid(quantizer.levels)
    if world_size is None:
        return
    top = int(integers[-1])
    if wire_dtype(top, world_size) == torch.int32 and not state.allow_wide_sums:
        raise ValueError(
            f"allreduce_hook with {quantizer!r} at world size {world_size} needs int32 sums (level integers up "
            f"to {top}, x {world_size} ranks > 127): 4 bytes per coordinate, what fp32 sends, so nothing is "
            "saved. Use fewer bits or QSGD levels (int8 while max level x world size <= 127), "
            "reduce_scatter_hook ('rs-' specs), or CompressionState(..., allow_wide_sums=True) to accept it"
        )


@ddp_comm_hook(check_allreduce_state)
def allreduce_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Quantize against the ranks' shared max norm and all-reduce integer symbols.

    Non-finite buckets on any rank switch every rank to fp32 allreduce for that bucket (a flag rides
    along with the norms), so AMP's GradScaler sees the inf/NaN.

    Example::

        >>> # state = CompressionState(commcomp.QSGD(bits=4, bucket_size=512))
        >>> # ddp_model.register_comm_hook(state, allreduce_hook)
    """
    buffer = bucket.buffer()
    numel = buffer.numel()
    slices = state.parameter_slices(bucket)
    if not state.compressing(numel):
        return fp32_allreduce(state, bucket, state.record)
    group = state.send_groups()[-1]
    quantizer = state.quantizer
    levels = quantizer.levels
    unit, integers = level_grid(levels)
    dtype = wire_dtype(int(integers[-1]), group.world)  # int32 only with state.allow_wide_sums
    wire = BucketWire(group, 2, buffer.device)  # stages: norms, integers (or fp32)
    x = state.with_residual(bucket, slices).contiguous()
    pieces = pieces_in(slices, 0, numel)
    # Quantization buckets start at each parameter (see _params): the norms of every piece.
    piece_norms = [ops.bucket_norms(x[p.start : p.start + p.numel], quantizer.bucket_size, quantizer.norm) for p in pieces]
    norms = torch.cat(piece_norms) if piece_norms else x.new_zeros(0, dtype=torch.float32)
    finite = torch.isfinite(norms)
    # Norms and a "some rank is non-finite" flag travel in one MAX-allreduce.
    packet = torch.cat([torch.where(finite, norms, torch.zeros_like(norms)), (~finite.all()).float().reshape(1)])
    seed, iteration = state.rank_seed(group.rank), state.iteration
    own_wanted, measure = state.wants_decoded_own(), state.measuring_variance()
    for piece, n in zip(pieces, piece_norms):
        state.observe(x[piece.start : piece.start + piece.numel], n)
    state.record(packet.numel() * 4 + numel * dtype.itemsize, numel * buffer.element_size())
    shared_norms = wire.start(0, lambda g: dist.all_reduce(packet, op=dist.ReduceOp.MAX, group=g, async_op=True))
    # symbol -> signed integer on the level grid, for every symbol value of this width
    symbol = torch.arange(2 ** quantizer.bits, dtype=torch.int64)
    index = (symbol >> 1).clamp(max=len(levels) - 1)
    to_integer = (integers[index] * (1 - 2 * (symbol & 1))).to(dtype).to(x.device)

    def reduce_integers(_: object) -> torch.futures.Future:
        if packet[-1].item() != 0.0:
            return wire.fp32_average(1, buffer)
        table = levels.tensor()
        summed = torch.empty(numel, dtype=dtype, device=x.device)
        scale = torch.empty(numel, dtype=torch.float32, device=x.device)
        at = 0
        for piece, n in zip(pieces, piece_norms):
            shared = packet[at : at + n.numel()]
            at += n.numel()
            window = slice(piece.start, piece.start + piece.numel)
            _, packed = ops.quantize(
                x[window], table, quantizer.bucket_size, quantizer.norm, seed,
                stream_offset(iteration, piece.param.index, 0), shared, False, piece.param_index,
            )
            symbols = ops.unpack_symbols(packed, quantizer.bits, piece.numel)
            summed[window] = to_integer[symbols.to(torch.int64)]
            scale[window] = torch.repeat_interleave(shared, quantizer.bucket_size)[: piece.numel] * unit
        if own_wanted:
            state.after_compression(slices, x, summed.float() * scale, measure=measure)
        reduced = wire.start(1, lambda g: dist.all_reduce(summed, group=g, async_op=True))
        return wire.chain(reduced, lambda _: buffer.copy_(summed.float() * scale / group.world))

    return finish(state, bucket, wire.chain(shared_norms, reduce_integers))
