"""DDP communication hook that replaces the gradient allreduce by a robust aggregation.

Every rank all-gathers every rank's bucket (optionally compressed by a codec), decodes and
checks each row, and applies the same robust rule, so all ranks end with the same gradient and
identical parameters, as with allreduce. Byzantine ranks are *simulated* by the state: ranks in
``byzantine_ranks`` replace their bucket by ``attack``'s output before sending. Omniscient
attacks (IPM, ALIE, mimic, adaptive) need the honest gradients of the step; for them the hook
first runs one extra fp32 all-gather (a "spy" round the attackers read; it exists only in this
simulation and costs one more all-gather per bucket).

Untrusted rows: a payload whose announced size exceeds ``max_payload_bytes``, whose decoding
raises, which decodes to the wrong number of elements, or which holds a non-finite value is
turned into an all-NaN row and handled by ``invalid_policy`` (see
:func:`~commcomp.robust.validation.sanitize`): ``"drop"`` removes the row and counts it as one
of the ``tolerance`` Byzantine ranks, ``"zero"`` replaces it by zeros. ``state.rejected[r]``
counts rejected rows from rank r. A rank never crashes or hangs on another rank's payload. When
every row is invalid (e.g. an fp16 overflow on all ranks) the bucket becomes NaN, so AMP's
GradScaler skips the step; a rank whose own gradient is non-finite sends an empty payload.

Aggregation is per DDP bucket: Krum-like rules select per bucket. Pass a ``bucket_cap_mb``
large enough for one bucket when whole-model selection matters. A MixTailor aggregator draws
one rule per iteration (``for_step(iteration)``), shared by all buckets of that iteration.

Example (inside ``torchrun``)::

    >>> import torch, torch.distributed as dist
    >>> from commcomp.robust import MixTailor, build_pool, IPM
    >>> from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook
    >>> model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 10))  # doctest: +SKIP
    >>> state = RobustAggregationState(                                               # doctest: +SKIP
    ...     MixTailor(build_pool(["median", "trimmed_mean", "geomed"])), tolerance=1,
    ...     byzantine_ranks=[3], attack=IPM(0.1))
    >>> model.register_comm_hook(state, robust_aggregation_hook)                      # doctest: +SKIP
"""
# no `from __future__ import annotations`: DDP checks that the hook's `bucket` annotation *is*
# dist.GradBucket, which string annotations fail
from typing import Any, Iterable, Protocol

import numpy as np
import torch
import torch.distributed as dist

from .aggregators import Aggregator
from .attacks import Attack
from .validation import InvalidPolicy, check_f, sanitize

__all__ = ["Codec", "RobustAggregationState", "robust_aggregation_hook"]


class Codec(Protocol):
    """What the hook needs from a compressor (e.g. one of ``commcomp.codecs``)."""

    def encode(self, tensor: torch.Tensor) -> torch.Tensor:
        """fp32 tensor -> 1-D uint8 payload."""

    def decode(self, payload: torch.Tensor, numel: int) -> torch.Tensor:
        """1-D uint8 payload -> fp32 tensor of ``numel`` elements; raises on a bad payload."""


class RobustAggregationState:
    """State of :func:`robust_aggregation_hook`.

    Hyperparameters:
        aggregator: the robust rule (any :class:`~commcomp.robust.aggregators.Aggregator`,
            including :class:`~commcomp.robust.mixtailor.MixTailor`).
        tolerance: f, the number of Byzantine ranks the rule must tolerate; the rule's
            requirement (e.g. Bulyan's n >= 4f + 3) is checked against the world size.
        process_group: group to aggregate over (default: the world group).
        byzantine_ranks: ranks (in ``process_group``) that send ``attack``'s output instead of
            their gradient. Must leave at least one honest rank.
        attack: the simulated attack (required when ``byzantine_ranks`` is non-empty).
        codec: optional compressor with ``encode``/``decode`` (see :class:`Codec`); ``None``
            sends fp32.
        invalid_policy: ``"drop"`` or ``"zero"`` for rows that fail validation.
        seed: seeds the attack's randomness (per iteration and bucket, so it is reproducible).
        max_payload_bytes: largest accepted payload; larger announced sizes mark the row invalid
            and are never allocated. Default: ``8 * numel + 4096`` per bucket.

    ``iteration`` advances on the last bucket of every backward pass; :meth:`state_dict`
    holds it with the aggregator's state (MixTailor's seed and step) so a restored run draws
    the same rules.
    """

    __slots__ = (
        "aggregator",
        "tolerance",
        "process_group",
        "byzantine_ranks",
        "attack",
        "codec",
        "invalid_policy",
        "seed",
        "max_payload_bytes",
        "iteration",
        "rejected",
    )

    def __init__(
        self,
        aggregator: Aggregator,
        tolerance: int,
        *,
        process_group: dist.ProcessGroup | None = None,
        byzantine_ranks: Iterable[int] = (),
        attack: Attack | None = None,
        codec: Codec | None = None,
        invalid_policy: InvalidPolicy = "drop",
        seed: int = 0,
        max_payload_bytes: int | None = None,
    ) -> None:
        if not isinstance(aggregator, Aggregator):
            raise ValueError(f"aggregator must be an Aggregator, got {type(aggregator).__name__}")
        check_f(tolerance)
        byz = sorted(set(int(r) for r in byzantine_ranks))
        if any(r < 0 for r in byz):
            raise ValueError(f"byzantine_ranks must be ranks >= 0, got {byz}")
        if byz and attack is None:
            raise ValueError("attack must be given when byzantine_ranks is non-empty")
        if attack is not None and not isinstance(attack, Attack):
            raise ValueError(f"attack must be an Attack, got {type(attack).__name__}")
        if codec is not None and not (hasattr(codec, "encode") and hasattr(codec, "decode")):
            raise ValueError("codec must provide encode(tensor) and decode(payload, numel)")
        if invalid_policy not in ("drop", "zero"):
            raise ValueError(f"invalid_policy must be 'drop' or 'zero', got {invalid_policy!r}")
        if max_payload_bytes is not None and max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be >= 1, got {max_payload_bytes}")
        self.aggregator, self.tolerance = aggregator, tolerance
        self.process_group = process_group
        self.byzantine_ranks, self.attack, self.codec = byz, attack, codec
        self.invalid_policy, self.seed = invalid_policy, int(seed)
        self.max_payload_bytes = max_payload_bytes
        self.iteration = 0
        self.rejected: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "seed": self.seed,
            "rejected": list(self.rejected),
            "aggregator": self.aggregator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"iteration", "seed", "rejected", "aggregator"}
        if set(state) != expected:
            raise ValueError(f"state must have keys {sorted(expected)}, got {sorted(state)}")
        self.iteration, self.seed = int(state["iteration"]), int(state["seed"])
        self.rejected = [int(c) for c in state["rejected"]]
        self.aggregator.load_state_dict(state["aggregator"])


def _generator(*key: int) -> torch.Generator:
    seed = int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


def _byzantine_row(state: RobustAggregationState, local: torch.Tensor, rank: int, world: int, key: tuple[int, ...], group: Any) -> torch.Tensor:
    """What this rank sends: its gradient, or (on a Byzantine rank) the attack's output."""
    attack, byz = state.attack, state.byzantine_ranks
    assert attack is not None
    honest_ranks = [r for r in range(world) if r not in byz]
    honest = None
    if attack.omniscient:
        # the spy round: a collective, so honest ranks take part too
        everyone = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(everyone, local, group=group)
        honest = torch.stack([everyone[r] for r in honest_ranks])
    if rank not in byz:
        return local
    common = dict(aggregator=state.aggregator, tolerance=state.tolerance)
    if attack.omniscient:
        # all attackers craft the same (f, d) block from a shared generator and send their row
        block = attack(honest, len(byz), generator=_generator(state.seed, *key), **common)
        return block[byz.index(rank)].to(local.dtype)
    own = attack(None, 1, own=local[None], generator=_generator(state.seed, *key, rank), **common)
    return own[0].to(local.dtype)


def _gather_raw(local: torch.Tensor, world: int, group: Any):
    out = [torch.empty_like(local) for _ in range(world)]
    fut = dist.all_gather(out, local, group=group, async_op=True).get_future()
    return fut, lambda: out


def _gather_encoded(state: RobustAggregationState, local: torch.Tensor, world: int, group: Any):
    codec, numel = state.codec, local.numel()
    if bool(torch.isfinite(local).all()):
        payload = codec.encode(local)
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
            raise ValueError("codec.encode must return a 1-D uint8 tensor")
    else:
        payload = torch.empty(0, dtype=torch.uint8, device=local.device)  # 'no valid gradient'
    # all-gather the sizes first, then payloads padded to the largest *accepted* size
    sizes_t = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(world)]
    dist.all_gather(sizes_t, torch.tensor([payload.numel()], dtype=torch.int64, device=local.device), group=group)
    sizes = [int(s) for s in sizes_t]
    cap = state.max_payload_bytes or 8 * numel + 4096
    width = max(1, min(max(sizes), cap))
    padded = torch.zeros(width, dtype=torch.uint8, device=local.device)
    padded[: min(payload.numel(), width)] = payload[:width]
    out = [torch.empty_like(padded) for _ in range(world)]
    fut = dist.all_gather(out, padded, group=group, async_op=True).get_future()

    def decode() -> list[torch.Tensor]:
        rows = []
        nan_row = torch.full((numel,), float("nan"), dtype=torch.float32, device=local.device)
        for r in range(world):
            if not 0 < sizes[r] <= width:
                rows.append(nan_row)
                continue
            try:
                g = codec.decode(out[r][: sizes[r]], numel)
                if not isinstance(g, torch.Tensor) or g.numel() != numel:
                    raise ValueError("decoded size mismatch")
                rows.append(g.reshape(-1).to(torch.float32))
            except Exception:  # an untrusted payload must not crash an honest rank
                rows.append(nan_row)
        return rows

    return fut, decode


def robust_aggregation_hook(state: RobustAggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Aggregate ``bucket`` across ranks with ``state.aggregator`` (see the module docstring).

    Register with ``ddp_model.register_comm_hook(state, robust_aggregation_hook)``.
    """
    group = state.process_group if state.process_group is not None else dist.group.WORLD
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if state.byzantine_ranks and (state.byzantine_ranks[-1] >= world or len(state.byzantine_ranks) >= world):
        raise ValueError(f"byzantine_ranks {state.byzantine_ranks} must be ranks < {world} leaving an honest rank")
    state.aggregator.check_workers(world, state.tolerance)
    if len(state.rejected) != world:
        state.rejected = [0] * world

    buffer = bucket.buffer()
    local = buffer.detach().reshape(-1).to(torch.float32).clone()
    step = state.iteration
    if state.attack is not None and state.byzantine_ranks:
        local = _byzantine_row(state, local, rank, world, (step, bucket.index()), group)
    if state.codec is None:
        fut, rows_of = _gather_raw(local, world, group)
    else:
        fut, rows_of = _gather_encoded(state, local, world, group)
    if bucket.is_last():
        state.iteration += 1

    def finish(_: torch.futures.Future) -> torch.Tensor:
        stacked = torch.stack(rows_of())
        rows, f_eff, bad = sanitize(stacked, state.tolerance, state.invalid_policy)
        for r in bad.nonzero().flatten().tolist():
            state.rejected[r] += 1
        if rows.shape[0] == 0:
            result = torch.full_like(local, float("nan"))
        else:
            result = state.aggregator.for_step(step)(rows, f_eff)
        buffer.copy_(result.view(buffer.shape).to(buffer.dtype))
        return buffer

    return fut.then(finish)
