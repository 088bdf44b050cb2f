"""Pieces both commcomp hooks use: process-group lookup, the fp32 fallback, error feedback."""
from __future__ import annotations

import torch
import torch.distributed as dist

from .state import CompressionState


def group_info(state: CompressionState) -> tuple[dist.ProcessGroup, int, int]:
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    return group, dist.get_rank(group), dist.get_world_size(group)


def allreduce_mean(state: CompressionState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """PyTorch's default fp32 allreduce (average), used in warm-up, for small buckets and for
    non-finite buckets (so AMP's GradScaler sees the inf/nan)."""
    group, _, world = group_info(state)
    buffer = bucket.buffer()
    buffer.div_(world)
    state.record(buffer.numel() * buffer.element_size(), buffer.numel() * buffer.element_size())
    fut = dist.all_reduce(buffer, group=group, async_op=True).get_future()
    return fut.then(lambda f: finish(state, bucket, f.value()[0]))


def finish(state: CompressionState, bucket: dist.GradBucket, result: torch.Tensor) -> torch.Tensor:
    if bucket.is_last():
        state.finish_iteration()
    return result


def with_residual(state: CompressionState, bucket: dist.GradBucket) -> torch.Tensor:
    """The bucket's gradient as flat fp32-or-native tensor, plus the error-feedback residual."""
    x = bucket.buffer()
    if not state.error_feedback:
        return x
    residual = state.residuals.get(bucket.index())
    if residual is None or residual.numel() != x.numel():
        return x
    return x.float() + residual.to(x.device)


def update_residual(state: CompressionState, bucket: dist.GradBucket, sent: torch.Tensor, decoded: torch.Tensor) -> None:
    if state.error_feedback:
        state.residuals[bucket.index()] = (sent.float() - decoded).detach()


def observe(state: CompressionState, x: torch.Tensor, norms: torch.Tensor | None = None) -> None:
    """Feed adaptive quantizers (ALQ/AMQ) the statistics they refit levels from, on the iterations
    their schedule asks for (``norms``: the bucket norms, if already computed)."""
    quantizer = state.quantizer
    should_observe = getattr(quantizer, "should_observe", None)
    if should_observe is not None and should_observe(state.iteration):
        quantizer.observe(x, norms)


def measure_variance(state: CompressionState, x: torch.Tensor, decoded: torch.Tensor) -> None:
    if state.measuring_variance():
        xf = x.float()
        denom = float(xf.pow(2).sum())
        state.variance_estimate = float((decoded - xf).pow(2).sum()) / denom if denom > 0 else 0.0
