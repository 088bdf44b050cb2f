"""Error-feedback residuals kept per parameter, whatever DDP's bucket layout.

DDP may put a parameter in another bucket, at another offset, from one iteration to the next (it
rebuilds its buckets after the first iteration) and after every resume. A residual keyed by
bucket would then be added to other coordinates. Here each residual belongs to a parameter
(:class:`~commcomp.hooks._params.ParamSlice` says where the parameter is in the current bucket).
A checkpointed residual whose size differs from its parameter's raises ``ValueError`` instead of
landing on the wrong coordinates. Checkpointed residuals are loaded on the CPU and move to the
gradients' device the first time they are used there.

Two kinds: ``local`` (what this rank quantized and sent: every hook) and ``reduced`` (what this
rank re-quantized after the reduce-scatter of :func:`~commcomp.hooks.reduce_scatter_hook`: only
the coordinates of the chunk it owns are nonzero).
"""
from __future__ import annotations

from typing import Any, Literal

import torch

from ._params import ParamSlice

__all__ = ["ParameterResiduals", "ResidualKind"]

ResidualKind = Literal["local", "reduced"]


class ParameterResiduals:
    __slots__ = ("local", "reduced")

    def __init__(self) -> None:
        self.local: dict[str, torch.Tensor] = {}
        self.reduced: dict[str, torch.Tensor] = {}

    def add_to(self, x: torch.Tensor, slices: list[ParamSlice], kind: ResidualKind, lo: int = 0) -> None:
        """``x`` (bucket coordinates ``[lo, lo + x.numel())``) += the residuals stored for them."""
        store = self.local if kind == "local" else self.reduced
        for part, (a, b) in _overlaps(slices, lo, lo + x.numel()):
            residual = _on(store, part.key, x.device)
            if residual is None:
                continue
            if residual.numel() != part.numel:
                raise ValueError(
                    f"error-feedback residual {part.key!r} holds {residual.numel()} values but its parameter has "
                    f"{part.numel}: the checkpoint was made with another model (or other DDP arguments: bind names)"
                )
            x[a - lo : b - lo] += residual[a - part.start : b - part.start]

    def store(self, error: torch.Tensor, slices: list[ParamSlice], kind: ResidualKind, lo: int = 0) -> None:
        """Keep ``error`` (bucket coordinates ``[lo, lo + error.numel())``) as the residuals of
        those coordinates; a parameter only partly inside keeps its other residuals."""
        store = self.local if kind == "local" else self.reduced
        error = error.detach()
        for part, (a, b) in _overlaps(slices, lo, lo + error.numel()):
            piece = error[a - lo : b - lo]
            if (a, b) == (part.start, part.start + part.numel):
                store[part.key] = piece.clone()
                continue
            kept = _on(store, part.key, error.device)
            if kept is None or kept.numel() != part.numel:
                kept = torch.zeros(part.numel, dtype=error.dtype, device=error.device)
                store[part.key] = kept
            kept[a - part.start : b - part.start] = piece

    def keep_only(self, slices: list[ParamSlice], kind: ResidualKind, lo: int, hi: int) -> None:
        """Forget the ``kind`` residuals of this bucket's coordinates outside ``[lo, hi)``: when the
        range a rank quantizes moves (the bucket layout changed), another rank quantizes them now."""
        store = self.local if kind == "local" else self.reduced
        for part in slices:
            kept = store.get(part.key)
            if kept is None:
                continue
            a, b = max(lo, part.start), min(hi, part.start + part.numel)
            if b <= a:
                del store[part.key]
                continue
            kept[: a - part.start] = 0
            kept[b - part.start :] = 0

    def hand_over_reduced(self, slices: list[ParamSlice], lo: int, hi: int, weight: float, device: torch.device) -> None:
        """Move ``reduced`` residuals of this bucket's coordinates outside ``[lo, hi)`` into the
        ``local`` ones, times ``weight``.

        When the chunk a rank owns moves (DDP rebuilt its buckets), another rank re-quantizes
        those coordinates and holds no residual for them. A local residual enters the average
        with weight ``1 / world``, so ``weight = world`` carries the error into the next average
        unchanged: no error-feedback mass is lost.
        """
        for part in slices:
            kept = _on(self.reduced, part.key, device)
            if kept is None:
                continue
            inside = torch.zeros(part.numel, dtype=torch.bool, device=device)
            a, b = max(lo, part.start), min(hi, part.start + part.numel)
            if a < b:
                inside[a - part.start : b - part.start] = True
            moved = torch.where(inside, torch.zeros_like(kept), kept)
            local = _on(self.local, part.key, device)
            self.local[part.key] = (local if local is not None else torch.zeros_like(kept)) + weight * moved
            if a < b:
                self.reduced[part.key] = torch.where(inside, kept, torch.zeros_like(kept))
            else:
                del self.reduced[part.key]

    def state_dict(self) -> dict[str, Any]:
        return {
            "local": {k: v.detach().cpu().clone() for k, v in self.local.items()},
            "reduced": {k: v.detach().cpu().clone() for k, v in self.reduced.items()},
        }

    def load_state_dict(self, state: Any) -> None:
        if not isinstance(state, dict) or set(state) != {"local", "reduced"}:
            raise ValueError(
                "residuals must be {'local': {...}, 'reduced': {...}} keyed by parameter; per-bucket residuals "
                "of older commcomp versions cannot be mapped to parameters"
            )
        for kind in ("local", "reduced"):
            if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state[kind].items()):
                raise ValueError(f"residuals[{kind!r}] must map parameter keys (str) to tensors")
        self.local = {k: v.clone() for k, v in state["local"].items()}
        self.reduced = {k: v.clone() for k, v in state["reduced"].items()}

    def __len__(self) -> int:
        return len(self.local) + len(self.reduced)


def _on(store: dict[str, torch.Tensor], key: str, device: torch.device) -> torch.Tensor | None:
    """``store[key]`` on ``device``, moved there (once) if it is elsewhere (a loaded checkpoint's)."""
    kept = store.get(key)
    if kept is not None and kept.device != device:
        kept = store[key] = kept.to(device)
    return kept


def _overlaps(slices: list[ParamSlice], lo: int, hi: int):
    for part in slices:
        a, b = max(lo, part.start), min(hi, part.start + part.numel)
        if a < b:
            yield part, (a, b)
