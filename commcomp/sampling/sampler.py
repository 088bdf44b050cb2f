"""Stratified mini-batch sampling over gradient clusters, with unbiasing loss weights.

Each *round* draws one example from each non-empty cluster (uniformly within it). Weighting
example ``i`` of cluster ``k`` by ``w_i = K' N_k / N`` (``K'`` non-empty clusters) makes the
weighted mean of per-example gradients over a whole number of rounds an unbiased estimate of the
full-batch mean gradient::

    E[(1/K') sum_k w_k g_{i_k}] = sum_k (N_k / N) mean_{i in k} g_i = (1/N) sum_i g_i

Train with ``loss = (weights * per_example_losses).mean()`` on batches of whole rounds
(``batch_size`` a multiple of :attr:`GradientClusterSampler.round_size`).

Distributed: the non-empty clusters are dealt round-robin to the ranks, so rank ``r`` owns the
examples of its clusters (a disjoint share; all shares cover the dataset) and its rounds draw one
example from each of its clusters. The union of one round on every rank is exactly one
single-process round, and weights ``w_i = W |K_r| N_k / N`` keep DDP's rank average unbiased
even when ranks own different numbers of clusters.

Example::

    >>> import torch
    >>> from commcomp.sampling import GradientClusterSampler
    >>> sampler = GradientClusterSampler(torch.tensor([0, 0, 0, 1]), num_rounds=2, seed=0)
    >>> batch = list(sampler)
    >>> len(batch), sampler.round_size, sampler.weights(torch.tensor([0, 3])).tolist()
    (4, 2, [1.5, 0.5])
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = ["GradientClusterSampler", "DistributedGradientClusterSampler"]


class GradientClusterSampler(Sampler[int]):
    """Yield dataset indices round by round, one per owned cluster per round.

    Args:
        assignments: ``(N,)`` cluster id of every example (e.g. ``GradientClustering.assignments``).
        num_rounds: rounds per epoch (``len(sampler) = num_rounds * round_size``); default
            ``ceil(N / K')``, about one pass worth of examples over all ranks together.
        seed: shared by all ranks; combined with the epoch (:meth:`set_epoch`) and the rank.
        num_replicas, rank: the distributed share (see the module docstring); 1 and 0 by default.
    """

    def __init__(self, assignments: torch.Tensor, num_rounds: int | None = None, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if num_rounds is not None and num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self._fixed_rounds = num_rounds
        self.update(assignments)

    def update(self, assignments: torch.Tensor) -> None:
        """Adopt new cluster assignments (call on every rank after a clustering pass); the next
        ``iter(sampler)`` uses them."""
        a = torch.as_tensor(assignments).reshape(-1)
        if a.numel() == 0 or a.dtype.is_floating_point or bool((a < 0).any()):
            raise ValueError("assignments must be a non-empty integer tensor of cluster ids >= 0")
        a = a.long().cpu()
        N = a.numel()
        sizes = torch.bincount(a)
        nonempty = torch.nonzero(sizes).flatten()
        if len(nonempty) < self.num_replicas:
            raise ValueError(
                f"assignments has {len(nonempty)} non-empty clusters, fewer than num_replicas={self.num_replicas}"
            )
        owner = torch.full_like(sizes, -1)
        owner[nonempty] = torch.arange(len(nonempty)) % self.num_replicas
        owned_per_rank = torch.bincount(owner[nonempty], minlength=self.num_replicas)
        self.assignments = a
        self.cluster_sizes = sizes
        self.clusters = nonempty[owner[nonempty] == self.rank]  # this rank's clusters
        self.members = [torch.nonzero(a == k).flatten() for k in self.clusters.tolist()]
        # w_i = W |K_owner(i)| N_k / N for every example, whichever rank owns it.
        self._weights = (self.num_replicas * owned_per_rank[owner[a]] * sizes[a]).double() / N
        self.num_rounds = self._fixed_rounds or math.ceil(N / len(nonempty))

    @property
    def round_size(self) -> int:
        """Examples per round on this rank (the number of clusters it owns)."""
        return len(self.clusters)

    @property
    def share(self) -> torch.Tensor:
        """Sorted dataset indices this rank can ever draw."""
        return torch.cat(self.members).sort().values

    def set_epoch(self, epoch: int) -> None:
        """Reseed the next iteration (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def weights(self, indices: torch.Tensor) -> torch.Tensor:
        """Per-example loss weights ``(len(indices),)`` that make the weighted mean unbiased."""
        return self._weights[torch.as_tensor(indices, dtype=torch.long)].float()

    def __len__(self) -> int:
        return self.num_rounds * self.round_size

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_009 + self.rank)
        perms = [m[torch.randperm(len(m), generator=gen)] for m in self.members]
        cursor = [0] * len(perms)
        for _ in range(self.num_rounds):
            for c, m in enumerate(self.members):
                if cursor[c] == len(m):
                    # Each draw stays uniform within the cluster: a fresh permutation per cycle.
                    perms[c] = m[torch.randperm(len(m), generator=gen)]
                    cursor[c] = 0
                yield int(perms[c][cursor[c]])
                cursor[c] += 1

    def sample_rounds(self, num_rounds: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """An independent batch of ``num_rounds`` rounds (``num_rounds * round_size`` indices),
        drawn without replacement within a cluster where it is large enough; for estimating the
        sampler's gradient variance."""
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        picks = []
        for m in self.members:
            if len(m) >= num_rounds:
                picks.append(m[torch.randperm(len(m), generator=generator)[:num_rounds]])
            else:
                picks.append(m[torch.randint(len(m), (num_rounds,), generator=generator)])
        return torch.stack(picks, 1).reshape(-1)  # round-major, like iteration


class DistributedGradientClusterSampler(GradientClusterSampler):
    """:class:`GradientClusterSampler` whose ``num_replicas``/``rank`` default to the process
    group's, so each rank draws from its own disjoint stratified share."""

    def __init__(
        self,
        assignments: torch.Tensor,
        num_rounds: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("no process group: pass num_replicas and rank, or call init_process_group first")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        super().__init__(assignments, num_rounds=num_rounds, seed=seed, num_replicas=num_replicas, rank=rank)
