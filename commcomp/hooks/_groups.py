"""The process groups a hook sends on: commcomp's own copies, created when the state is made.

A hook never launches on a group someone else launches on (DDP's own process group, a user's
group): another launcher on the same group (DDP's unused-parameter all-reduce, the user's own
collectives) issues its collectives from another thread, and the two orders could then differ from
rank to rank. So a hook state creates a copy of each group it sends on — the hook's group and, in
hierarchical mode, its node groups — and every commcomp collective goes to a copy, in the one
global order of the communication thread (:mod:`._comm_thread`).

Group creation is collective: ``new_group`` must be called by every rank of the default group, in
the same order (NCCL builds the communicator eagerly by splitting the default one when the process
group was initialized with ``device_id``). It therefore happens when a state is constructed after
``init_process_group`` (or when it is bound: :meth:`~commcomp.hooks.HookState.bind`,
:func:`~commcomp.hooks.register_comm_hook`), on every rank, never inside a hook body, where a rank
that does not reach the same bucket at the same moment (a pipeline stage, a rank outside the
hook's group) would hang it. The cost: one more communicator per group a state sends on.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["GroupInfo", "resolve_group", "private_copy", "node_groups"]


@dataclass(frozen=True)
class GroupInfo:
    group: dist.ProcessGroup
    rank: int
    world: int


def resolve_group(process_group: dist.ProcessGroup | None) -> GroupInfo:
    """``process_group`` (default: the world group) with this rank's rank and its size."""
    group = process_group if process_group is not None else dist.group.WORLD
    return GroupInfo(group, dist.get_rank(group), dist.get_world_size(group))


def private_copy(process_group: dist.ProcessGroup | None) -> GroupInfo:
    """A new group of the same ranks and backend as ``process_group`` (default: the world group).

    Collective over the default group: every rank must call it, in the same order.
    """
    source = process_group if process_group is not None else dist.group.WORLD
    ranks = dist.get_process_group_ranks(source)
    copy = dist.new_group(ranks=ranks, backend=dist.get_backend(source))
    return resolve_group(copy)


def node_groups(local_world_size: int | None) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """``(intra, inter)`` groups of this rank: its node's ranks, and the ranks of every node with
    its local rank. Collective over the default group."""
    world = dist.get_world_size()
    local = local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    if local < 1 or world % local:
        raise ValueError(
            f"hierarchical=True needs local_world_size (or LOCAL_WORLD_SIZE) dividing the world size {world}, got {local or None}"
        )
    nodes = world // local
    intra, _ = dist.new_subgroups_by_enumeration([list(range(n * local, (n + 1) * local)) for n in range(nodes)])
    inter, _ = dist.new_subgroups_by_enumeration([list(range(k, world, local)) for k in range(local)])
    return intra, inter
