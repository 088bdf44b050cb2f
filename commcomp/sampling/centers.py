"""Cluster centres in gradient space and the per-cluster sums a Lloyd update needs.

A centre has one block per parameter, matching :class:`~commcomp.sampling.capture.BatchGradients`:
a rank-``r`` factor pair ``(U, V)`` per factored weight and a dense row for everything else.
Squared distances ``||g_i - C_k||^2`` are assembled block by block from inner products, so a
factored weight's per-example gradient is never formed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .capture import BatchGradients
from .factors import Method, center_sq_norms, cluster_sums, example_center_dots, example_sq_norms, truncate_rank

__all__ = ["GradientCenters", "ClusterSums"]


@dataclass
class GradientCenters:
    """``K`` centres: ``factors[l] = (U (K, r, dout), V (K, r, din))`` per factored weight and
    ``dense (K, P)``."""

    factors: list[tuple[torch.Tensor, torch.Tensor]]
    dense: torch.Tensor

    @property
    def num_clusters(self) -> int:
        return int(self.dense.shape[0])

    def sq_norms(self) -> torch.Tensor:
        """``||C_k||^2``: shape ``(K,)``."""
        total = self.dense.square().sum(1)
        for U, V in self.factors:
            total = total + center_sq_norms(U, V)
        return total

    def sq_distances(self, batch: BatchGradients, method: Method = "auto") -> torch.Tensor:
        """``||g_i - C_k||^2`` for every example and centre: shape ``(B, K)``."""
        if len(batch.layers) != len(self.factors) or batch.dense.shape[1] != self.dense.shape[1]:
            raise ValueError("batch and centres describe different parameter layouts")
        dots = batch.dense @ self.dense.T
        norms = batch.dense.square().sum(1)
        for f, (U, V) in zip(batch.layers, self.factors):
            dots = dots + example_center_dots(f.A, f.G, U, V, method)
            norms = norms + example_sq_norms(f.A, f.G, method)
        # Expanded square: rounding can leave tiny negatives for a point on its own centre.
        return (norms[:, None] - 2 * dots + self.sq_norms()[None, :]).clamp_min(0)


class ClusterSums:
    """Running ``sum_{i in k} g_i`` (dense per weight: ``K`` weight-sized tensors), member counts
    and distortions ``sum_{i in k} ||g_i - C_k||^2`` of ``K`` clusters."""

    def __init__(self, num_clusters: int, shapes: list[tuple[int, int]], dense_size: int, dtype: torch.dtype, device: torch.device) -> None:
        self.sums = [torch.zeros(num_clusters, dout, din, dtype=dtype, device=device) for dout, din in shapes]
        self.dense = torch.zeros(num_clusters, dense_size, dtype=dtype, device=device)
        self.counts = torch.zeros(num_clusters, dtype=dtype, device=device)
        self.distortion = torch.zeros(num_clusters, dtype=dtype, device=device)

    def add(self, batch: BatchGradients, assign: torch.Tensor, dist_to_center: torch.Tensor | None = None) -> None:
        """Add the batch's examples to the clusters ``assign (B,)`` names."""
        K = self.counts.shape[0]
        onehot = torch.nn.functional.one_hot(assign, K).to(self.dense.dtype)
        for s, f in zip(self.sums, batch.layers):
            s += cluster_sums(f.A, f.G, onehot)
        self.dense += onehot.T @ batch.dense.to(self.dense.dtype)
        self.counts += onehot.sum(0)
        if dist_to_center is not None:
            self.distortion.index_add_(0, assign, dist_to_center.to(self.distortion.dtype))

    def tensors(self) -> list[torch.Tensor]:
        return [*self.sums, self.dense, self.counts, self.distortion]

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum over the ranks of ``group`` (each rank saw a disjoint part of the data)."""
        flat = torch.cat([t.reshape(-1) for t in self.tensors()])
        dist.all_reduce(flat, group=group)
        offset = 0
        for t in self.tensors():
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def centers(self, rank: int, previous: GradientCenters | None = None) -> GradientCenters:
        """Lloyd update: each centre becomes its cluster's mean gradient, with every factored
        block truncated to its best rank-``rank`` approximation. Among rank-``rank`` centres this
        minimizes the cluster's summed squared distance, because
        ``sum_i ||g_i - C||^2 = sum_i ||g_i - M||^2 + N ||M - C||^2`` for the mean ``M``.
        Clusters without members keep their ``previous`` centre (zero without one)."""
        n = self.counts.clamp_min(1)
        factors = [truncate_rank(s / n[:, None, None], rank) for s in self.sums]
        centers = GradientCenters(factors, self.dense / n[:, None])
        empty = self.counts == 0
        if previous is not None and bool(empty.any()):
            for (U, V), (U0, V0) in zip(centers.factors, previous.factors):
                U[empty], V[empty] = U0[empty].to(U.dtype), V0[empty].to(V.dtype)
            centers.dense[empty] = previous.dense[empty].to(centers.dense.dtype)
        return centers
