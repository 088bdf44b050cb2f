"""Gradient Clustering (Faghri et al., 2020): weighted k-means over per-example gradients.

Sampling one example per cluster and weighting it by ``N_k / N`` gives a mini-batch gradient
whose variance is ``(1/N^2) sum_k N_k sum_{i in k} ||g_i - mu_k||^2``. Minimizing it is a
*weighted* clustering problem: moving an example into cluster ``k`` costs roughly
``(N_k + 1) ||g_i - C_k||^2``, so the assignment step picks

    a_i = argmin_k (N_k + 1) ||g_i - C_k||^2

with ``N_k`` the cluster sizes, starting from the previous pass and updated after every few
(``size_update_every``) examples of the sweep as they move (the paper freezes them for a pass; that made consecutive passes
oscillate between a few huge and many empty clusters in our runs). For the cluster an example is
already in, the multiplier is ``N_k`` (its marginal cost, as in Hartigan's k-means). The update
step sets every centre to its cluster's mean gradient (truncated to rank ``r`` per Linear/Conv2d
weight, see :class:`ClusterSums`). Clusters that collapse below ``min_cluster_size`` are re-seeded
by moving a random half of the cluster with the largest distortion into them; an extra pass over
just the moved examples keeps both centres exact means.

Call :meth:`GradientClustering.fit_pass` every ``R`` training iterations; each call is one
assignment + update sweep over the dataset with the current model.

Example::

    >>> import torch
    >>> from commcomp.sampling import GradientClustering
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> model = torch.nn.Linear(5, 3)
    >>> x, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    >>> gc = GradientClustering(num_clusters=4)
    >>> stats = gc.fit_pass(model, torch.nn.CrossEntropyLoss(reduction="none"), x, y)
    >>> int(gc.sizes.sum()), gc.assignments.shape
    (60, torch.Size([60]))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .capture import LossFn, PerExampleGradients, unwrap_model
from .centers import ClusterSums, GradientCenters
from .factors import Method

__all__ = ["ClusteringStats", "GradientClustering"]


@dataclass(frozen=True)
class ClusteringStats:
    """Outcome of one pass.

    ``weighted_distortion`` is ``sum_k N_k D_k / N^2`` with ``D_k`` the members' summed squared
    distance to the centre they were assigned to: an upper bound on the total (summed over
    coordinates) variance of the one-example-per-cluster estimator under the new centres.
    """

    sizes: list[int]
    distortion: float
    weighted_distortion: float
    splits: int
    changed: int


class GradientClustering:
    """Weighted k-means in per-example gradient space.

    Args:
        num_clusters: ``K``; also the stratified mini-batch size (one example per cluster).
        rank: rank of each Linear/Conv2d block of a centre (the paper uses 1).
        min_cluster_size: clusters smaller than this after a pass are re-seeded by a split.
        seed: seeds centre initialization and splits (must agree across ranks).
        method: contraction used for the factored inner products (see :mod:`.factors`).
    """

    def __init__(self, num_clusters: int, rank: int = 1, min_cluster_size: int = 1, seed: int = 0, method: Method = "auto") -> None:
        if num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {num_clusters}")
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if min_cluster_size < 1:
            raise ValueError(f"min_cluster_size must be >= 1, got {min_cluster_size}")
        self.num_clusters = num_clusters
        self.rank = rank
        self.min_cluster_size = min_cluster_size
        self.seed = seed
        self.method = method
        self.centers: GradientCenters | None = None
        self.assignments: torch.Tensor | None = None  # (N,) cluster of every example
        self.sizes = torch.zeros(num_clusters)  # N_k of the last pass
        self.passes = 0
        self.size_update_every = 8  # examples assigned between updates of N_k within a pass

    # -- public -------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_pass(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        batch_size: int = 256,
        indices: torch.Tensor | None = None,
        process_group: dist.ProcessGroup | None = None,
    ) -> ClusteringStats:
        """One assignment + Lloyd update sweep over the dataset ``(inputs, targets)``.

        Under a process group each rank passes its own ``indices`` (disjoint, together covering
        the dataset); sums are all-reduced, so every rank ends with identical centres and
        assignments. Without ``indices`` this rank processes every example.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        N = int(inputs.shape[0])
        if targets.shape[0] != N:
            raise ValueError(f"inputs and targets disagree on the number of examples: {N} vs {targets.shape[0]}")
        if N < self.num_clusters:
            raise ValueError(f"need at least num_clusters={self.num_clusters} examples, got {N}")
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(process_group) > 1
        world = dist.get_world_size(process_group) if distributed else 1
        own = torch.arange(N) if indices is None else torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        capture = PerExampleGradients(unwrap_model(model), loss_fn)
        dtype = next(unwrap_model(model).parameters()).dtype
        if self.centers is None:
            self.centers = self._initial_centers(capture, inputs, targets, dtype)

        acc = self._new_sums(capture, dtype, inputs.device)
        assign = torch.full((N,), -1, dtype=torch.long)
        sizes = self.sizes.to(dtype=dtype, device=inputs.device)
        for chunk in own.split(batch_size):
            batch = capture(inputs[chunk], targets[chunk])
            d = self.centers.sq_distances(batch, self.method)
            a = torch.empty(len(chunk), dtype=torch.long, device=d.device)
            for rows in torch.arange(len(chunk)).split(self.size_update_every):
                a[rows] = (self._cost_weights(chunk[rows], sizes) * d[rows]).argmin(1)
                if self.assignments is not None:
                    # Sizes follow the moves within the pass (each rank sees 1/W of them): with
                    # sizes frozen, every example would flee the same large clusters at once, and
                    # passes oscillate between a few huge clusters and many empty ones.
                    step = torch.full((len(rows),), float(world), dtype=dtype, device=sizes.device)
                    sizes.index_add_(0, self.assignments[chunk[rows]].to(sizes.device), -step)
                    sizes.index_add_(0, a[rows], step)
                    sizes.clamp_min_(0)
            acc.add(batch, a, d.gather(1, a[:, None]).squeeze(1))
            assign[chunk] = a.cpu()
        if distributed:
            acc.all_reduce(process_group)
            # Each example is assigned on exactly one rank; the others hold -1.
            dist.all_reduce(assign, op=dist.ReduceOp.MAX, group=process_group)
        if bool((assign < 0).any()):
            raise ValueError("indices of all ranks together must cover every example")

        splits = self._split_collapsed(acc, assign, capture, inputs, targets, own, distributed, process_group, dtype)
        changed = int((assign != self.assignments).sum()) if self.assignments is not None else N
        self.centers = acc.centers(self.rank, previous=self.centers)
        self.assignments = assign
        self.sizes = acc.counts.detach().cpu().float()
        self.passes += 1
        n = acc.counts.cpu().double()
        D = acc.distortion.cpu().double()
        return ClusteringStats(
            sizes=[int(round(v)) for v in n.tolist()],
            distortion=float(D.sum()),
            weighted_distortion=float((n * D).sum() / N**2),
            splits=splits,
            changed=changed,
        )

    # -- internals ----------------------------------------------------------------------------
    def _cost_weights(self, chunk: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` multipliers of ``||g_i - C_k||^2``: ``N_k + 1`` to join cluster ``k``, but
        ``N_k`` to stay in the current one (the example is already counted in it). Charging the
        current cluster ``N_k + 1`` too would push members out of every large cluster at once
        and make consecutive passes oscillate."""
        w = (sizes + 1).expand(len(chunk), -1).clone()
        if self.assignments is not None:
            current = self.assignments[chunk].to(w.device)
            w.scatter_(1, current[:, None], sizes[current][:, None].clamp_min(1))
        return w

    def _new_sums(self, capture: PerExampleGradients, dtype: torch.dtype, device: torch.device) -> ClusterSums:
        return ClusterSums(self.num_clusters, capture.factored_shapes, capture.dense_size, dtype, device)

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + salt)

    def _initial_centers(self, capture: PerExampleGradients, inputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> GradientCenters:
        """Forgy initialization: the gradients of ``K`` random distinct examples (same on every rank)."""
        picks = torch.randperm(inputs.shape[0], generator=self._generator(0))[: self.num_clusters]
        acc = self._new_sums(capture, dtype, inputs.device)
        acc.add(capture(inputs[picks], targets[picks]), torch.arange(self.num_clusters, device=inputs.device))
        return acc.centers(self.rank)

    def _split_collapsed(
        self,
        acc: ClusterSums,
        assign: torch.Tensor,
        capture: PerExampleGradients,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        own: torch.Tensor,
        distributed: bool,
        group: dist.ProcessGroup | None,
        dtype: torch.dtype,
    ) -> int:
        """Move half of the highest-distortion clusters into collapsed ones; returns the count."""
        counts = acc.counts.cpu().clone()
        collapsed = torch.nonzero(counts < self.min_cluster_size).flatten().tolist()
        if not collapsed:
            return 0
        gen = self._generator(1 + self.passes)
        donors_used: set[int] = set()
        moves: list[tuple[int, int]] = []  # (receiver, donor)
        moved_sets: list[torch.Tensor] = []
        distortion = acc.distortion.cpu().clone()
        for j in collapsed:
            eligible = (counts >= 2 * self.min_cluster_size) & (counts >= 2)
            for k in donors_used | set(collapsed):
                eligible[k] = False
            if not bool(eligible.any()):
                break
            donor = int(torch.where(eligible, distortion, torch.full_like(distortion, -float("inf"))).argmax())
            members = torch.nonzero(assign == donor).flatten()
            moved = members[torch.randperm(len(members), generator=gen)[: len(members) // 2]]
            assign[moved] = j
            moved_sets.append(moved)
            donors_used.add(donor)
            moves.append((j, donor))
        if not moves:
            return 0
        # Exact sums of the moved examples; each rank sums the moved examples among its own.
        moved_acc = self._new_sums(capture, dtype, inputs.device)
        mine = own[torch.isin(own, torch.cat(moved_sets))]
        for chunk in mine.split(256):
            moved_acc.add(capture(inputs[chunk], targets[chunk]), assign[chunk].to(inputs.device))
        if distributed:
            moved_acc.all_reduce(group)
        donor_distortion = acc.distortion.clone()
        for j, donor in moves:
            for s, m in zip(acc.sums, moved_acc.sums):
                s[j] += m[j]
                s[donor] -= m[j]
            acc.dense[j] += moved_acc.dense[j]
            acc.dense[donor] -= moved_acc.dense[j]
            acc.counts[j] += moved_acc.counts[j]
            acc.counts[donor] -= moved_acc.counts[j]
            # The halves' distortions are unknown until the next pass; split the donor's evenly.
            acc.distortion[j] += donor_distortion[donor] / 2
            acc.distortion[donor] = donor_distortion[donor] / 2
        return len(moves)
