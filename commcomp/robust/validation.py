"""Input checks shared by every robust rule, and the policy for untrusted rows.

Aggregators reject malformed input with a :class:`ValueError` that names the argument. Rows
that are non-finite (a Byzantine worker sending NaN, an fp16 overflow) are never aggregated
silently: callers that accept untrusted rows (the simulation, the DDP hook) go through
:func:`~commcomp.robust.aggregators.aggregate_untrusted`, which finds them in one pass, drops or
zeroes them by a named policy and counts them against the Byzantine budget ``f``;
:func:`sanitize` is the same row policy on its own.

Example::

    >>> import torch
    >>> from commcomp.robust.validation import sanitize
    >>> g = torch.tensor([[1.0, 2.0], [float("nan"), 0.0], [3.0, 4.0]])
    >>> clean, f, bad = sanitize(g, f=1, policy="drop")
    >>> clean.tolist(), f, bad.tolist()
    ([[1.0, 2.0], [3.0, 4.0]], 0, [False, True, False])
"""
from __future__ import annotations

from typing import Literal

import torch

__all__ = ["InvalidPolicy", "check_shape", "check_grads", "finite_rows", "check_f", "require_workers", "sanitize"]

InvalidPolicy = Literal["drop", "zero"]


def check_shape(grads: torch.Tensor, name: str = "grads") -> None:
    """Raise ``ValueError`` unless ``grads`` is a floating ``(n, d)`` tensor with n, d >= 1."""
    if not isinstance(grads, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (n, d), got {type(grads).__name__}")
    if grads.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n workers, d coordinates), got shape {tuple(grads.shape)}")
    if grads.shape[0] < 1 or grads.shape[1] < 1:
        raise ValueError(f"{name} must have n >= 1 rows and d >= 1 columns, got shape {tuple(grads.shape)}")
    if not grads.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got dtype {grads.dtype}")


def finite_rows(grads: torch.Tensor) -> torch.Tensor:
    """``(n,)`` bool mask of the rows without inf/NaN: the one pass over the data every
    aggregation makes (members and pre-aggregators of a composite rule do not repeat it)."""
    return torch.isfinite(grads).all(dim=1)


def check_grads(grads: torch.Tensor, name: str = "grads") -> None:
    """Raise ``ValueError`` unless ``grads`` is a finite floating ``(n, d)`` tensor, n, d >= 1."""
    check_shape(grads, name)
    finite = finite_rows(grads)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(
            f"{name} has non-finite values in rows {bad}; drop or zero them first with "
            "commcomp.robust.aggregate_untrusted(rule, grads, f, policy) (or sanitize)"
        )


def check_f(f: int, n: int | None = None) -> None:
    """Raise ``ValueError`` unless ``f`` is an int in ``[0, n)``."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ValueError(f"f (number of Byzantine workers tolerated) must be an int >= 0, got {f!r}")
    if n is not None and f >= n:
        raise ValueError(f"f must be < n (number of rows), got f={f}, n={n}")


def require_workers(rule: str, n: int, f: int, needed: int, formula: str) -> None:
    """Raise the uniform 'needs n >= ...' error when ``n < needed``."""
    if n < needed:
        raise ValueError(f"{rule} needs n >= {formula} = {needed} workers for f={f}, got n={n}")


def sanitize(
    grads: torch.Tensor, f: int, policy: InvalidPolicy = "drop", bad: torch.Tensor | None = None
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Handle non-finite rows by ``policy``; return ``(rows, f_effective, bad_mask)``.

    * ``"drop"``: remove bad rows. Each bad row is counted as one of the ``f`` Byzantine
      workers, so ``f_effective = max(f - #bad, 0)``; every rule's ``n >= g(f)`` requirement
      that held before still holds after dropping (g grows at least as fast as n shrinks).
      May return zero rows when every row is bad; the caller decides what to do then.
    * ``"zero"``: replace bad rows by zeros and keep ``f`` (a robust rule then sees a zero
      gradient as one more outlier).

    ``bad``: the mask of invalid rows if the caller has it already (skips the finite pass).
    """
    if grads.dim() != 2:
        raise ValueError(f"grads must be 2-D (n, d), got shape {tuple(grads.shape)}")
    check_f(f)
    if policy not in ("drop", "zero"):
        raise ValueError(f"policy must be 'drop' or 'zero', got {policy!r}")
    bad = ~finite_rows(grads) if bad is None else bad
    num_bad = int(bad.sum())
    if num_bad == 0:
        return grads, f, bad
    if policy == "drop":
        return grads[~bad], max(f - num_bad, 0), bad
    return torch.where(bad[:, None], torch.zeros_like(grads), grads), f, bad
