"""Error-feedback residuals kept per parameter, whatever DDP's bucket layout.

DDP may put a parameter in another bucket, at another offset, from one iteration to the next (it
rebuilds its buckets after the first iteration) and after every resume. A residual keyed by
bucket would then be added to other coordinates. Here each residual belongs to a parameter: a
bucket's parameters and their offsets in the bucket (from ``bucket.gradients()``, views into the
bucket's buffer) say where each residual goes.

Keys: the parameter's name if the state was told the names (:meth:`ParameterResiduals.bind`,
e.g. ``state.bind(ddp.module)``), else ``"#k"`` with ``k`` the order in which this state first saw
the parameter. DDP's first iteration always uses the same layout for the same model and DDP
arguments, so a resumed run assigns the same ``"#k"`` to the same parameter; binding names also
survives a change of DDP arguments. A checkpointed residual whose size differs from its
parameter's raises ``ValueError`` instead of landing on the wrong coordinates.

Two kinds: ``local`` (what this rank quantized and sent: every hook) and ``reduced`` (what this
rank re-quantized after the reduce-scatter of :func:`~commcomp.hooks.reduce_scatter_hook`: only
the coordinates of the chunk it owns are nonzero).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

import torch
import torch.distributed as dist

__all__ = ["ParameterResiduals", "ParamSlice", "ResidualKind"]

ResidualKind = Literal["local", "reduced"]


@dataclass(frozen=True)
class ParamSlice:
    """Parameter ``key`` occupies ``[start, start + numel)`` of its bucket."""

    key: str
    start: int
    numel: int


class ParameterResiduals:
    __slots__ = ("_keys", "_names", "_params", "local", "reduced")

    def __init__(self) -> None:
        self._keys: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._params: list[torch.Tensor] = []  # keeps id()s valid: parameters outlive no entry
        self.local: dict[str, torch.Tensor] = {}
        self.reduced: dict[str, torch.Tensor] = {}

    def bind(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Key residuals by these parameter names (call before the first backward)."""
        if self._keys:
            raise ValueError("bind() must be called before the hook has seen any bucket")
        for name, param in named_parameters:
            self._names[id(param)] = name
            self._params.append(param)

    def _key(self, param: torch.Tensor) -> str:
        key = self._keys.get(id(param))
        if key is None:
            key = self._names.get(id(param), f"#{len(self._keys)}")
            self._keys[id(param)] = key
            self._params.append(param)
        return key

    def slices(self, bucket: dist.GradBucket) -> list[ParamSlice]:
        """Where each of the bucket's parameters lies in its buffer (assigns keys on first sight)."""
        buffer = bucket.buffer()
        base, size = buffer.data_ptr(), buffer.element_size()
        return [
            ParamSlice(self._key(p), (g.data_ptr() - base) // size, g.numel())
            for p, g in zip(bucket.parameters(), bucket.gradients())
        ]

    def add_to(self, x: torch.Tensor, slices: list[ParamSlice], kind: ResidualKind, lo: int = 0) -> None:
        """``x`` (bucket coordinates ``[lo, lo + x.numel())``) += the residuals stored for them."""
        store = self.local if kind == "local" else self.reduced
        for part, (a, b) in _overlaps(slices, lo, lo + x.numel()):
            residual = store.get(part.key)
            if residual is None:
                continue
            if residual.numel() != part.numel:
                raise ValueError(
                    f"error-feedback residual {part.key!r} holds {residual.numel()} values but its parameter has "
                    f"{part.numel}: the checkpoint was made with another model (or other DDP arguments: bind names)"
                )
            x[a - lo : b - lo] += residual[a - part.start : b - part.start].to(x.device)

    def store(self, error: torch.Tensor, slices: list[ParamSlice], kind: ResidualKind, lo: int = 0) -> None:
        """Keep ``error`` (bucket coordinates ``[lo, lo + error.numel())``) as the residuals of
        those coordinates; ``local`` residuals cover whole parameters, ``reduced`` ones the owned part."""
        store = self.local if kind == "local" else self.reduced
        error = error.detach()
        for part, (a, b) in _overlaps(slices, lo, lo + error.numel()):
            piece = error[a - lo : b - lo]
            if kind == "local" or (a, b) == (part.start, part.start + part.numel):
                store[part.key] = piece.clone()
                continue
            kept = store.get(part.key)
            if kept is None or kept.numel() != part.numel:
                kept = torch.zeros(part.numel, dtype=error.dtype, device=error.device)
                store[part.key] = kept
            kept[a - part.start : b - part.start] = piece

    def drop_reduced_outside(self, slices: list[ParamSlice], lo: int, hi: int) -> None:
        """Forget ``reduced`` residuals of this bucket's coordinates outside ``[lo, hi)``: another
        rank re-quantizes them now (the chunk layout changed), and holds no residual for them."""
        for part in slices:
            kept = self.reduced.get(part.key)
            if kept is None:
                continue
            a, b = max(lo, part.start), min(hi, part.start + part.numel)
            if b <= a:
                del self.reduced[part.key]
                continue
            kept[: a - part.start] = 0
            kept[b - part.start :] = 0

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


def _overlaps(slices: list[ParamSlice], lo: int, hi: int):
    for part in slices:
        a, b = max(lo, part.start), min(hi, part.start + part.numel)
        if a < b:
            yield part, (a, b)
