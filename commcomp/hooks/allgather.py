"""All-gather aggregation of compressed gradients: what QSGD/NUQSGD analyse.

Each rank quantizes and encodes its bucket; payload sizes, then payloads, are all-gathered; every
rank decodes all payloads in rank order and averages them. The average is unbiased, and every rank
computes it from the same bytes in the same order, so parameters stay bit-identical across ranks.
"""

import torch
import torch.distributed as dist

from .. import codecs, ops
from ._common import allreduce_mean, finish, group_info, measure_variance, observe, update_residual, with_residual
from .state import CompressionState

__all__ = ["allgather_hook"]

# One leading byte tells a receiver how to read the rest of a rank's frame.
_FRAME_RAW, _FRAME_CODEC = 0, 1


def allgather_hook(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Quantize, encode, all-gather and average a DDP gradient bucket.

    Buckets in warm-up (``state.start_iter``) or smaller than ``state.min_compression_numel`` go
    through fp32 allreduce. A bucket holding inf/NaN on some rank is sent raw by that rank, so the
    averaged gradient carries the inf/NaN and AMP's GradScaler skips the step as usual. A payload
    that fails validation raises ``RuntimeError`` naming the sending rank.

    Example::

        >>> # torchrun --nproc_per_node=2 ... ; inside the script:
        >>> # state = CompressionState(commcomp.QSGD(bits=4, bucket_size=512), coding="elias-gamma")
        >>> # ddp_model.register_comm_hook(state, allgather_hook)
    """
    buffer = bucket.buffer()
    if not state.compressing(buffer.numel()):
        return allreduce_mean(state, bucket)
    group, rank, world = group_info(state)
    x = with_residual(state, bucket)
    quantizer = state.quantizer
    if bool(torch.isfinite(x).all()):
        q = quantizer.quantize(x, seed=state.rank_seed(rank), offset=state.next_offset())
        observe(state, x, q.norms)
        body = codecs.encode(q, coding=state.coding)
        frame = torch.cat([body.new_tensor([_FRAME_CODEC]), body])
        if state.error_feedback or state.measuring_variance():
            decoded = quantizer.dequantize(q, torch.float32)
            update_residual(state, bucket, x, decoded)
            measure_variance(state, x, decoded)
    else:
        state.next_offset()  # keep every rank's stream position in step
        raw = x.detach().float().contiguous().view(torch.uint8)
        frame = torch.cat([raw.new_tensor([_FRAME_RAW]), raw])
    state.record(frame.numel(), buffer.numel() * buffer.element_size())

    size = torch.tensor([frame.numel()], dtype=torch.int64, device=buffer.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size, group=group)
    lengths = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(lengths), dtype=torch.uint8, device=buffer.device)
    padded[: frame.numel()] = frame
    gathered = [torch.empty_like(padded) for _ in range(world)]
    fut = dist.all_gather(gathered, padded, group=group, async_op=True).get_future()

    def decode_and_average(_: torch.futures.Future) -> torch.Tensor:
        total = _average_frames(state, [g[:n] for g, n in zip(gathered, lengths)], buffer.numel(), buffer.device)
        buffer.copy_(total)
        return finish(state, bucket, buffer)

    return fut.then(decode_and_average)


def _average_frames(state: CompressionState, frames: list[torch.Tensor], numel: int, device: torch.device) -> torch.Tensor:
    world = len(frames)
    norms, symbols, raws = [], [], []
    # Payloads are decoded with the levels they carry: an adaptive quantizer may have refit its
    # levels since they were encoded. All ranks encode with the same levels, so they must agree.
    levels = None
    for rank, frame in enumerate(frames):
        try:
            kind, body = _split_frame(frame)
            if kind == _FRAME_RAW:
                if body.numel() != numel * 4:
                    raise ValueError(f"raw frame holds {body.numel()} bytes, expected {numel * 4}")
                raws.append(body.clone().view(torch.float32))  # clone: realign to 4 bytes
                continue
            q = codecs.decode(body, numel=numel)
            if q.bucket_size != state.quantizer.bucket_size:
                raise ValueError(f"payload bucket size {q.bucket_size} differs from {state.quantizer.bucket_size}")
            if levels is not None and q.levels != levels:
                raise ValueError("payload was quantized with other levels than the other ranks' payloads")
            levels = q.levels
        except ValueError as err:
            raise RuntimeError(f"commcomp allgather_hook: invalid payload from rank {rank}: {err}") from err
        norms.append(q.norms.to(device))
        symbols.append(q.symbols.to(device))
    total = torch.zeros(numel, dtype=torch.float32, device=device)
    if levels is not None:
        ops.dequantize_accumulate(total, norms, symbols, levels.tensor(device), state.quantizer.bucket_size, 1.0 / world)
    for raw in raws:
        total.add_(raw, alpha=1.0 / world)
    return total


def _split_frame(frame: torch.Tensor) -> tuple[int, torch.Tensor]:
    if frame.numel() < 1:
        raise ValueError("empty frame")
    kind = int(frame[0].item())
    if kind not in (_FRAME_RAW, _FRAME_CODEC):
        raise ValueError(f"unknown frame kind {kind}")
    return kind, frame[1:]
