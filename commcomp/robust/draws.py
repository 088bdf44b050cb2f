"""Commit-reveal draws: MixTailor's rule for a step of a DDP job, which no rank can predict or
steer before it has sent its gradients.

Threat model. Byzantine ranks are ranks of the job: they run their own code, see everything
every rank receives, and collude. A seed shared by all ranks is known to them, so a draw that
is a function of ``(seed, step)`` is no defence. Instead, at every step, every rank ``r``:

1. draws a fresh 32-byte nonce ``s_r`` (:func:`secrets.token_bytes`) and sends the
   commitment ``C_r = sha256(tag, step, r, s_r)`` appended to its first bucket's payload, in
   the same all-gather (:data:`COMMIT_BYTES` per rank and step);
2. after *every* bucket of the step has been gathered, reveals ``s_r`` together with the
   fingerprint of its pool (:meth:`~commcomp.robust.mixtailor.MixTailor.fingerprint`) in one
   small all-gather (:data:`REVEAL_BYTES` per rank);
3. checks every reveal against its commitment; the step's rule is drawn from
   ``sha256(tag, step, (r, s_r) for every rank whose reveal matched)``
   (:func:`draw_digest`). A rank whose reveal does not match (or whose commitment never arrived)
   is invalid for the whole step: each of its rows is dropped as a Byzantine row.

What this gives: the digest is uniform as long as one honest rank's nonce is (sha256 modelled as
a random oracle), and nobody knows any honest nonce before all gradients are in, so no rank can
tailor a gradient to the step's rule. All ranks compute the same digest from the same bytes.

What it does not cover:

* **Aborting re-rolls.** A Byzantine rank that sees the honest reveals first (a modified
  collective can wait for them) can send a wrong reveal and so switch the draw to the one
  without its nonce. It pays with all its rows of that step; ``k`` colluders choose among at
  most ``2^k`` draws, each with the aborting ranks' rows dropped. ``state.bad_reveals`` counts
  such ranks per step.
* **Denial of service.** A rank can always stop a job by leaving its collectives; nothing in a
  DDP hook prevents that.
* **Pool agreement** is checked, not enforced: ranks whose pool fingerprint differs from the
  pool at least ``world - f`` ranks hold are invalid for the step (such a rank itself raises a
  clear error); if no pool is held by ``world - f`` ranks every rank raises
  (:class:`PoolMismatchError`). The fingerprint covers the members' configurations and weights,
  not their state.
* Everything else about the data a rank sends (its gradients) is the robust rule's job.

Example::

    >>> nonce = fresh_nonce()
    >>> c = commitment(nonce, step=3, rank=1)
    >>> verify(c, nonce, step=3, rank=1), verify(c, nonce, step=4, rank=1)
    (True, False)
"""
from __future__ import annotations

import hashlib
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

__all__ = [
    "NONCE_BYTES",
    "COMMIT_BYTES",
    "FINGERPRINT_BYTES",
    "REVEAL_BYTES",
    "PoolMismatchError",
    "StepDraw",
    "fresh_nonce",
    "commitment",
    "verify",
    "draw_digest",
    "settle",
]

NONCE_BYTES = 32
COMMIT_BYTES = 32
FINGERPRINT_BYTES = 32
REVEAL_BYTES = NONCE_BYTES + FINGERPRINT_BYTES

_COMMIT_TAG = b"commcomp/robust/commit/v1"
_DRAW_TAG = b"commcomp/robust/draw/v1"


class PoolMismatchError(ValueError):
    """Ranks do not agree on the MixTailor pool (a configuration error, raised on every rank that
    cannot continue)."""


def fresh_nonce() -> bytes:
    """32 bytes from the operating system's CSPRNG."""
    return secrets.token_bytes(NONCE_BYTES)


def _header(tag: bytes, step: int, rank: int) -> bytes:
    return tag + step.to_bytes(8, "little") + rank.to_bytes(4, "little")


def commitment(nonce: bytes, step: int, rank: int) -> bytes:
    """``sha256(tag, step, rank, nonce)``: binds the nonce to its step and sender (a copied
    commitment or a replayed nonce does not verify for another rank or step)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must have {NONCE_BYTES} bytes, got {len(nonce)}")
    return hashlib.sha256(_header(_COMMIT_TAG, step, rank) + nonce).digest()


def verify(commit: bytes | None, nonce: bytes, step: int, rank: int) -> bool:
    """Whether ``nonce`` opens ``commit`` for ``(step, rank)``."""
    return commit is not None and len(nonce) == NONCE_BYTES and secrets.compare_digest(commit, commitment(nonce, step, rank))


def draw_digest(step: int, nonces: Sequence[bytes | None]) -> bytes:
    """The step's random digest from every rank's revealed nonce (``None``: not valid)."""
    h = hashlib.sha256(_DRAW_TAG + step.to_bytes(8, "little") + len(nonces).to_bytes(4, "little"))
    for rank, nonce in enumerate(nonces):
        h.update(rank.to_bytes(4, "little") + (b"\x01" + nonce if nonce is not None else b"\x00" * (1 + NONCE_BYTES)))
    return h.digest()


@dataclass(frozen=True)
class StepDraw:
    """Outcome of a step's commit-reveal.

    Attributes:
        digest: the step's random digest (:func:`draw_digest`).
        bad_reveal: per rank, the reveal did not open the commitment.
        other_pool: per rank, its pool fingerprint differs from the agreed pool.
    """

    digest: bytes
    bad_reveal: tuple[bool, ...]
    other_pool: tuple[bool, ...]

    @property
    def invalid(self) -> tuple[bool, ...]:
        """Ranks whose rows are dropped for the whole step."""
        return tuple(a or b for a, b in zip(self.bad_reveal, self.other_pool))


def settle(
    step: int, commitments: Sequence[bytes | None], reveals: Sequence[bytes], tolerance: int, own_rank: int
) -> StepDraw:
    """Check every reveal (``nonce || pool fingerprint``) and derive the step's draw.

    Raises :class:`PoolMismatchError` if no pool fingerprint is held by ``world - tolerance``
    ranks (on every rank), or if this rank's pool is not the agreed one (on this rank only).
    """
    world = len(reveals)
    if len(commitments) != world or any(len(r) != REVEAL_BYTES for r in reveals):
        raise ValueError(f"need {world} commitments and {world} reveals of {REVEAL_BYTES} bytes")
    nonces = [r[:NONCE_BYTES] for r in reveals]
    pools = [r[NONCE_BYTES:] for r in reveals]
    held = Counter(pools).most_common()
    agreed = held[0][0] if held[0][1] >= world - tolerance and (len(held) == 1 or held[1][1] < held[0][1]) else None
    if agreed is None:
        holders = {fp: [r for r in range(world) if pools[r] == fp] for fp, _ in held}
        summary = ", ".join(f"ranks {ranks} hold pool {fp.hex()[:12]}" for fp, ranks in holders.items())
        raise PoolMismatchError(
            f"MixTailor: ranks disagree on the pool ({summary}); no pool is held by world - f = {world - tolerance} "
            "ranks. Build the same pool (members, parameters and weights) on every rank."
        )
    if pools[own_rank] != agreed:
        others = [r for r in range(world) if pools[r] == agreed]
        raise PoolMismatchError(
            f"MixTailor: this rank's pool ({pools[own_rank].hex()[:12]}) differs from the pool of ranks {others} "
            f"({agreed.hex()[:12]}). Build the same pool (members, parameters and weights) on every rank."
        )
    bad_reveal = tuple(not verify(commitments[r], nonces[r], step, r) for r in range(world))
    other_pool = tuple(pools[r] != agreed for r in range(world))
    valid = [nonces[r] if not (bad_reveal[r] or other_pool[r]) else None for r in range(world)]
    return StepDraw(draw_digest(step, valid), bad_reveal, other_pool)
