"""DDP communication hook that replaces the gradient allreduce by a robust aggregation.

Every rank all-gathers every rank's bucket (optionally compressed by a codec), decodes and
checks each row, and applies the same robust rule, so all ranks end with the same gradient and
identical parameters, as with allreduce. The collectives go through the wire layer every
commcomp hook shares (:mod:`commcomp.hooks._wire`): nothing in the hook body waits for a peer. Byzantine ranks are *simulated* by the state: ranks in
``byzantine_ranks`` replace their bucket by ``attack``'s output before sending. Omniscient
attacks (IPM, ALIE, mimic, adaptive) need the honest gradients of the step; for them the hook
first runs one extra fp32 all-gather (a "spy" round the attackers read; it exists only in this
simulation and costs one more all-gather per bucket).

Untrusted rows: a payload whose announced size exceeds ``max_payload_bytes``, whose decoding
raises, which decodes to the wrong number of elements, or which holds a non-finite value is
turned into an all-NaN row (the wire layer's ``"mark"`` policy) and handled by ``invalid_policy`` (see
:func:`~commcomp.robust.validation.sanitize`): ``"drop"`` removes the row and counts it as one
of the ``tolerance`` Byzantine ranks, ``"zero"`` replaces it by zeros. ``state.rejected[r]``
counts rejected rows from rank r. A rank never crashes or hangs on another rank's payload. When
every row is invalid (e.g. an fp16 overflow on all ranks) the bucket becomes NaN, so AMP's
GradScaler skips the step; a rank whose own gradient is non-finite sends the wire layer's
non-finite marker (raw fp32 rows simply carry their NaN).

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

from ..hooks._wire import BucketWire, HookState, decode_frames, finish, make_frame, resolve_group
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


class RobustAggregationState(HookState):
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
        "byzantine_ranks",
        "attack",
        "codec",
        "invalid_policy",
        "seed",
        "max_payload_bytes",
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
        super().__init__(process_group)
        self.aggregator, self.tolerance = aggregator, tolerance
        self.byzantine_ranks, self.attack, self.codec = byz, attack, codec
        self.invalid_policy, self.seed = invalid_policy, int(seed)
        self.max_payload_bytes = max_payload_bytes
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


def _byzantine_row(state: RobustAggregationState, local: torch.Tensor, honest: torch.Tensor | None, rank: int, key: tuple[int, ...]) -> torch.Tensor:
    """What this rank sends: its gradient, or (on a Byzantine rank) the attack's output.

    ``honest``: the honest ranks' rows, for omniscient attacks (from the spy round).
    """
    attack, byz = state.attack, state.byzantine_ranks
    assert attack is not None
    if rank not in byz:
        return local
    common = dict(aggregator=state.aggregator, tolerance=state.tolerance)
    if attack.omniscient:
        # all attackers craft the same (f, d) block from a shared generator and send their row
        block = attack(honest, len(byz), generator=_generator(state.seed, *key), **common)
        return block[byz.index(rank)].to(local.dtype)
    own = attack(None, 1, own=local[None], generator=_generator(state.seed, *key, rank), **common)
    return own[0].to(local.dtype)


def _send_rows(state: RobustAggregationState, wire: BucketWire, stage: int, row: torch.Tensor) -> torch.futures.Future:
    """Gather every rank's row (fp32, or through ``state.codec``); undecodable rows come back NaN."""
    numel = row.numel()
    if state.codec is None:
        return wire.gather_fixed(stage, row)  # a non-finite row carries its own NaN
    codec = state.codec
    if bool(torch.isfinite(row).all()):
        payload = codec.encode(row)
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
            raise ValueError("codec.encode must return a 1-D uint8 tensor")
        frame = make_frame(payload)
    else:
        frame = make_frame(None)
    cap = state.max_payload_bytes or 8 * numel + 4096

    def decode(rank: int, body: torch.Tensor) -> torch.Tensor:
        try:  # a user codec may raise anything on an untrusted payload
            g = codec.decode(body, numel)
        except Exception as err:
            raise ValueError(f"codec.decode failed: {err}") from err
        if not isinstance(g, torch.Tensor) or g.numel() != numel:
            raise ValueError("decoded size mismatch")
        return g.reshape(-1).to(torch.float32)

    def rows_of(frames: list[torch.Tensor | None]) -> list[torch.Tensor]:
        rows, _ = decode_frames(frames, decode, "mark", "robust_aggregation_hook")
        nan_row = torch.full((numel,), float("nan"), dtype=torch.float32, device=row.device)
        return [nan_row if r is None else r for r in rows]

    return wire.chain(wire.gather_variable(stage, frame, cap, "mark", "robust_aggregation_hook"), rows_of)


def robust_aggregation_hook(state: RobustAggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Aggregate ``bucket`` across ranks with ``state.aggregator`` (see the module docstring).

    Register with ``ddp_model.register_comm_hook(state, robust_aggregation_hook)``.
    """
    group = resolve_group(state.process_group)
    world, rank = group.world, group.rank
    if state.byzantine_ranks and (state.byzantine_ranks[-1] >= world or len(state.byzantine_ranks) >= world):
        raise ValueError(f"byzantine_ranks {state.byzantine_ranks} must be ranks < {world} leaving an honest rank")
    state.aggregator.check_workers(world, state.tolerance)
    if len(state.rejected) != world:
        state.rejected = [0] * world

    buffer = bucket.buffer()
    local = buffer.detach().reshape(-1).to(torch.float32).clone()
    step = state.iteration
    key = (step, bucket.index())
    attacking = state.attack is not None and bool(state.byzantine_ranks)
    # The spy round exists only in this simulation: omniscient attackers read the honest rows.
    spy = attacking and state.attack.omniscient
    stages = (1 if spy else 0) + (1 if state.codec is None else 2)
    wire = BucketWire(state, group, stages, buffer.device)
    if spy:
        honest_ranks = [r for r in range(world) if r not in state.byzantine_ranks]
        everyone = wire.gather_fixed(0, local)
        rows = wire.chain(
            everyone,
            lambda all_rows: _send_rows(
                state, wire, 1, _byzantine_row(state, local, torch.stack([all_rows[r] for r in honest_ranks]), rank, key)
            ),
        )
    else:
        row = _byzantine_row(state, local, None, rank, key) if attacking else local
        rows = _send_rows(state, wire, 0, row)

    def aggregate(gathered: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(list(gathered))
        kept, f_eff, bad = sanitize(stacked, state.tolerance, state.invalid_policy)
        for r in bad.nonzero().flatten().tolist():
            state.rejected[r] += 1
        if kept.shape[0] == 0:
            result = torch.full_like(local, float("nan"))
        else:
            result = state.aggregator.for_step(step)(kept, f_eff)
        return buffer.copy_(result.view(buffer.shape).to(buffer.dtype))

    return finish(state, bucket, wire.chain(rows, aggregate))
