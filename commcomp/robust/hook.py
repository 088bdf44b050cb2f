"""DDP communication hook that replaces the gradient allreduce by a robust aggregation.

Every rank all-gathers every rank's bucket (optionally compressed by a codec), decodes and
checks each row, and applies the same robust rule, so all ranks end with the same gradient and
identical parameters, as with allreduce. The collectives go through the wire layer every
commcomp hook shares (:mod:`commcomp.hooks._wire`): nothing in the hook body waits for a peer.
Byzantine ranks are *simulated* by the state: ranks in ``byzantine_ranks`` replace their bucket
by ``attack``'s output before sending. Omniscient attacks (IPM, ALIE, mimic, adaptive, optimal)
need the honest gradients of the step; for them the hook first runs one extra fp32 all-gather
(a "spy" round the attackers read; it exists only in this simulation and costs one more
all-gather per bucket). Attacks see ``aggregator.attacker_view()`` (for MixTailor: the pool,
no seed, no draw).

Untrusted rows: a payload whose announced size exceeds ``max_payload_bytes``, whose decoding
raises, which decodes to the wrong number of elements, or which holds a non-finite value is
turned into an all-NaN row (the wire layer's ``"mark"`` policy) and handled by
:func:`~commcomp.robust.aggregators.aggregate_untrusted` with ``invalid_policy``: ``"drop"``
removes the row and counts it as one of the ``tolerance`` Byzantine ranks, ``"zero"`` replaces
it by zeros. ``state.rejected[r]`` counts rejected rows from rank r. A rank never crashes or
hangs on another rank's payload. When more rows are invalid than ``tolerance`` (e.g. an fp16
overflow on honest ranks) the bucket becomes NaN, so AMP's GradScaler skips the step, and
``state.skipped_buckets`` counts it; a rank whose own gradient is non-finite sends the wire
layer's non-finite marker (raw fp32 rows simply carry their NaN).

Aggregation is per DDP bucket: Krum-like rules select per bucket. Pass a ``bucket_cap_mb``
large enough for one bucket when whole-model selection matters.

A randomized aggregator (:class:`~commcomp.robust.mixtailor.MixTailor`) draws one rule per
iteration, shared by all its buckets, by commit-reveal (:mod:`commcomp.robust.draws`): each
rank appends a 32-byte commitment to a fresh nonce to its first bucket's frame; after the last
bucket's frames are in, one extra 64-byte-per-rank all-gather (on a lane of its own) reveals the
nonces and the pool fingerprints; the rule comes from a hash of the valid nonces. Every bucket's
aggregation therefore waits for the end of the backward pass (the gathers still overlap it). A
rank whose reveal does not match its commitment is invalid for that iteration
(``state.bad_reveals[r]``); ranks that disagree on the pool get a
:class:`~commcomp.robust.draws.PoolMismatchError`.

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

from ..hooks._bucket import ddp_comm_hook
from ..hooks._hook_state import HookState
from ..hooks._wire import BucketWire, decode_frames, finish, join, make_frame
from . import draws
from .aggregators import Aggregator, aggregate_untrusted
from .attacks import Attack
from .validation import InvalidPolicy, check_f

__all__ = ["Codec", "RobustAggregationState", "robust_aggregation_hook"]

_HOOK = "robust_aggregation_hook"


class Codec(Protocol):
    """What the hook needs from a compressor (e.g. one of ``commcomp.codecs``)."""

    def encode(self, tensor: torch.Tensor) -> torch.Tensor:
        """fp32 tensor -> 1-D uint8 payload."""

    def decode(self, payload: torch.Tensor, numel: int) -> torch.Tensor:
        """1-D uint8 payload -> fp32 tensor of ``numel`` elements; raises on a bad payload."""


class _Round:
    """One iteration's commit-reveal (randomized aggregators), opened in the first bucket's body.

    ``rows``: every bucket's gather future (the reveal starts once all are in); ``draw``: set to
    ``(StepDraw, member index)`` when the reveal is settled.
    """

    __slots__ = ("nonce", "commitment", "rows", "draw")

    def __init__(self, step: int, rank: int) -> None:
        self.nonce = draws.fresh_nonce()
        self.commitment = draws.commitment(self.nonce, step, rank)
        self.rows: list[torch.futures.Future] = []
        self.draw: torch.futures.Future = torch.futures.Future()


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
        seed: seeds the simulated attack's randomness (per iteration and bucket, so it is
            reproducible). MixTailor's draws do not use it (see the module docstring).
        max_payload_bytes: largest accepted payload; larger announced sizes mark the row invalid
            and are never allocated. Default: ``8 * numel + 4096`` per bucket.

    Counters: ``rejected[r]`` (rows of rank r dropped or zeroed), ``skipped_buckets`` (buckets
    with more invalid rows than ``tolerance``, returned as NaN), ``bad_reveals[r]`` (iterations
    in which rank r's reveal did not open its commitment, or its pool differed).

    ``iteration`` advances on the last bucket of every backward pass; :meth:`state_dict`
    holds it with the counters and the aggregator's state.
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
        "skipped_buckets",
        "bad_reveals",
        "_round",
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
        if aggregator.randomized and not (hasattr(aggregator, "fingerprint") and hasattr(aggregator, "draw")):
            raise ValueError(f"randomized aggregator {aggregator.name} must provide fingerprint() and draw(digest)")
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
        self.byzantine_ranks, self.attack, self.codec = byz, attack, codec
        self.invalid_policy, self.seed = invalid_policy, int(seed)
        self.max_payload_bytes = max_payload_bytes
        self.rejected: list[int] = []
        self.bad_reveals: list[int] = []
        self.skipped_buckets = 0
        self._round: _Round | None = None
        super().__init__(process_group)  # last: creates the group the hook sends on

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "seed": self.seed,
            "rejected": list(self.rejected),
            "skipped_buckets": self.skipped_buckets,
            "bad_reveals": list(self.bad_reveals),
            "aggregator": self.aggregator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"iteration", "seed", "rejected", "skipped_buckets", "bad_reveals", "aggregator"}
        if set(state) != expected:
            raise ValueError(f"state must have keys {sorted(expected)}, got {sorted(state)}")
        self.iteration, self.seed = int(state["iteration"]), int(state["seed"])
        self.rejected = [int(c) for c in state["rejected"]]
        self.skipped_buckets = int(state["skipped_buckets"])
        self.bad_reveals = [int(c) for c in state["bad_reveals"]]
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
    common = dict(aggregator=state.aggregator.attacker_view(), tolerance=state.tolerance)
    if attack.omniscient:
        # all attackers craft the same (f, d) block from a shared generator and send their row
        block = attack(honest, len(byz), generator=_generator(state.seed, *key), **common)
        return block[byz.index(rank)].to(local.dtype)
    own = attack(None, 1, own=local[None], generator=_generator(state.seed, *key, rank), **common)
    return own[0].to(local.dtype)


def _as_bytes(t: torch.Tensor) -> bytes:
    return t.cpu().numpy().tobytes()


def _byte_tensor(data: bytes, device: torch.device) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)


def _send_rows(
    state: RobustAggregationState, wire: BucketWire, stage: int, row: torch.Tensor, trailer: bytes | None
) -> torch.futures.Future:
    """Gather every rank's row (fp32, or through ``state.codec``) with an optional fixed-size
    ``trailer`` (the commitment) appended to the frame. The future's value is ``(rows,
    trailers)``: fp32 rows (NaN for undecodable ones) and each rank's trailer (``None`` if
    missing)."""
    numel, world = row.numel(), wire.group.world
    size = draws.COMMIT_BYTES if trailer is not None else 0
    if state.codec is None:  # a non-finite row carries its own NaN
        if trailer is None:
            return wire.chain(wire.gather_fixed(stage, row), lambda rows: (rows, [None] * world))
        frame = torch.cat([row.view(torch.uint8), _byte_tensor(trailer, row.device)])
        width = 4 * numel
        return wire.chain(
            wire.gather_fixed(stage, frame),
            lambda frames: ([f[:width].view(torch.float32) for f in frames], [_as_bytes(f[width:]) for f in frames]),
        )
    codec = state.codec
    frame = make_frame(None, row.device)  # the non-finite marker, unless the row encodes
    if bool(torch.isfinite(row).all()):
        try:
            payload = codec.encode(row)
        except ValueError:
            payload = None  # finite, but the codec refuses it (e.g. its norm overflows fp32)
        if payload is not None:
            if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or payload.dim() != 1:
                raise ValueError("codec.encode must return a 1-D uint8 tensor")
            frame = make_frame(payload.to(row.device), row.device)
    if trailer is not None:
        frame = torch.cat([frame, _byte_tensor(trailer, frame.device)])
    cap = (state.max_payload_bytes or 8 * numel + 4096) + size

    def decode(rank: int, body: torch.Tensor) -> torch.Tensor:
        try:  # a user codec may raise anything on an untrusted payload
            g = codec.decode(body, numel)
        except Exception as err:
            raise ValueError(f"codec.decode failed: {err}") from err
        if not isinstance(g, torch.Tensor) or g.numel() != numel:
            raise ValueError("decoded size mismatch")
        return g.reshape(-1).to(torch.float32)

    def rows_of(frames: list[torch.Tensor | None]) -> tuple[list[torch.Tensor], list[bytes | None]]:
        bodies: list[torch.Tensor | None] = list(frames)
        trailers: list[bytes | None] = [None] * world
        if size:
            for r, f in enumerate(frames):
                ok = f is not None and f.numel() > size
                bodies[r] = f[:-size] if ok else None
                trailers[r] = _as_bytes(f[-size:]) if ok else None
        rows, _ = decode_frames(bodies, decode, "mark", _HOOK)
        nan_row = torch.full((numel,), float("nan"), dtype=torch.float32, device=row.device)
        return [nan_row if r is None else r for r in rows], trailers

    return wire.chain(wire.gather_variable(stage, frame, cap, "mark", _HOOK), rows_of)


def _revealed_nonce(nonce: bytes) -> bytes:
    # What this rank reveals; a separate function so tests can play a cheating peer.
    return nonce


def _start_reveal(
    state: RobustAggregationState, wire: BucketWire, stage: int, rnd: _Round, step: int, rank: int
) -> None:
    """From the last bucket's body: once every bucket of the iteration is gathered, reveal the
    nonce and the pool fingerprint on ``stage``, settle the draw and hand it to ``rnd.draw``."""
    world, device = wire.group.world, wire.device
    aggregator = state.aggregator
    mine = _byte_tensor(_revealed_nonce(rnd.nonce) + aggregator.fingerprint(), device)
    reveals = torch.empty(world * draws.REVEAL_BYTES, dtype=torch.uint8, device=device)

    def launch(group: dist.ProcessGroup) -> dist.Work:
        return dist.all_gather_single(reveals, mine, group=group, async_op=True)

    def settle(gathered: list[Any]) -> tuple[draws.StepDraw, int]:
        commitments = gathered[0][1]
        revealed = [_as_bytes(r) for r in reveals.view(world, -1)]
        outcome = draws.settle(step, commitments, revealed, state.tolerance, rank)
        for r, bad in enumerate(outcome.invalid):
            state.bad_reveals[r] += int(bad)
        index = aggregator.draw(outcome.digest)
        aggregator.record(index)
        return outcome, index

    def hand_over(f: torch.futures.Future) -> None:
        try:
            rnd.draw.set_result(f.wait())
        except BaseException as err:  # noqa: BLE001 (every bucket of the iteration raises it)
            rnd.draw.set_exception(err)

    # Every bucket's rows first (a failed gather reveals nothing), then the reveal.
    gathered = join(list(rnd.rows), device)
    revealed = wire.chain(gathered, lambda rows: wire.chain(wire.start(stage, launch), lambda _: rows))
    wire.chain(revealed, settle).add_done_callback(hand_over)


@ddp_comm_hook()
def robust_aggregation_hook(state: RobustAggregationState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """Aggregate ``bucket`` across ranks with ``state.aggregator`` (see the module docstring).

    Register with ``ddp_model.register_comm_hook(state, robust_aggregation_hook)``.
    """
    group = state.send_groups()[-1]
    world, rank = group.world, group.rank
    if state.byzantine_ranks and (state.byzantine_ranks[-1] >= world or len(state.byzantine_ranks) >= world):
        raise ValueError(f"byzantine_ranks {state.byzantine_ranks} must be ranks < {world} leaving an honest rank")
    state.aggregator.check_workers(world, state.tolerance)
    if len(state.rejected) != world:
        state.rejected = [0] * world
    if len(state.bad_reveals) != world:
        state.bad_reveals = [0] * world

    buffer = bucket.buffer()
    local = buffer.detach().reshape(-1).to(torch.float32).clone()
    step = state.iteration
    key = (step, bucket.index())
    randomized = state.aggregator.randomized
    if randomized and (bucket.index() == 0 or state._round is None):
        state._round = _Round(step, rank)
    rnd = state._round if randomized else None
    trailer = rnd.commitment if rnd is not None and bucket.index() == 0 else None
    attacking = state.attack is not None and bool(state.byzantine_ranks)
    # The spy round exists only in this simulation: omniscient attackers read the honest rows.
    spy = attacking and state.attack.omniscient
    send_stage = 1 if spy else 0
    reveal_stage = send_stage + (1 if state.codec is None else 2)
    wire = BucketWire(group, reveal_stage + (1 if randomized else 0), buffer.device)
    if spy:
        honest_ranks = [r for r in range(world) if r not in state.byzantine_ranks]
        everyone = wire.gather_fixed(0, local)
        rows = wire.chain(
            everyone,
            lambda all_rows: _send_rows(
                state, wire, send_stage,
                _byzantine_row(state, local, torch.stack([all_rows[r] for r in honest_ranks]), rank, key), trailer,
            ),
        )
    else:
        # checking and encoding the row reads it on the host: on the communication thread
        rows = wire.defer(lambda: _send_rows(
            state, wire, send_stage, _byzantine_row(state, local, None, rank, key) if attacking else local, trailer))

    def aggregate(gathered: list[torch.Tensor], draw: tuple[draws.StepDraw, int] | None) -> torch.Tensor:
        stacked = torch.stack(list(gathered))
        rule = state.aggregator
        if draw is not None:
            outcome, index = draw
            if any(outcome.invalid):
                stacked[torch.tensor(outcome.invalid, device=stacked.device)] = float("nan")
            rule = state.aggregator.member(index)
        result = aggregate_untrusted(rule, stacked, state.tolerance, state.invalid_policy)
        for r in result.bad.nonzero().flatten().tolist():
            state.rejected[r] += 1
        if result.value is None:
            state.skipped_buckets += 1
            value = torch.full_like(local, float("nan"))
        else:
            value = result.value
        return buffer.copy_(value.view(buffer.shape).to(buffer.dtype))

    if rnd is None:
        return finish(state, bucket, wire.chain(rows, lambda got: aggregate(got[0], None)))
    rnd.rows.append(rows)
    if bucket.is_last():
        _start_reveal(state, wire, reveal_stage, rnd, step, rank)
    else:
        wire.skip(reveal_stage)
    both = join([rows, rnd.draw], buffer.device)
    return finish(state, bucket, wire.chain(both, lambda got: aggregate(got[0][0], got[1])))
