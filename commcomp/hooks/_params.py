"""Where a bucket's parameters are, and how a hook cuts them into pieces that quantize the same
whatever DDP's bucket layout.

DDP puts a parameter in another bucket, at another offset, after its first iteration and after
every resume. The hooks therefore quantize each parameter on its own: quantization buckets start
at the parameter's first element, and the Philox stream of a parameter is keyed by the parameter
and the iteration (:func:`stream_offset`), its elements indexed from the parameter's start
(``stream_index``). A parameter cut between two ranks (the chunks of
:func:`~commcomp.hooks.reduce_scatter_hook`) is cut on a multiple of ``lcm(bucket_size, 8)``
elements, so each piece draws what the whole parameter would. The decoded gradient of a parameter
thus depends on its values, the iteration and the seed only: never on the layout, so a run
resumed from a checkpoint reproduces an uninterrupted one bit for bit with DDP's default layout.

Keys: a parameter's name and its position among the named parameters if the state was told them
(:meth:`ParameterKeys.bind`), else ``"#k"`` with ``k`` the order in which the state first saw it.
DDP's first iteration has the same layout for the same model and DDP arguments, so a resumed run
assigns the same keys; bound keys do not depend on any layout (DDP's per-parameter calls under
compiled autograd get the same keys as its buckets).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

__all__ = ["ParamSlice", "Piece", "ParameterKeys", "pieces_in", "chunk_bounds", "stream_offset", "MAX_PARAMETERS"]

# Philox offsets are (iteration, parameter, phase) packed into 63 bits: 2^24 parameters and two
# phases leave 2^38 iterations.
MAX_PARAMETERS = 1 << 24
_PHASES = 2


@dataclass(frozen=True)
class ParamSlice:
    """Parameter ``key`` (the ``index``-th the state knows) occupies ``[start, start + numel)`` of its bucket."""

    key: str
    index: int
    start: int
    numel: int


@dataclass(frozen=True)
class Piece:
    """Bucket coordinates ``[start, start + numel)`` of parameter ``param``, whose element
    ``param_index`` is ``start`` (``param_index`` is a multiple of the cut unit)."""

    param: ParamSlice
    start: int
    numel: int

    @property
    def param_index(self) -> int:
        return self.start - self.param.start


class ParameterKeys:
    """Stable keys of the parameters a hook sees (see the module docstring)."""

    __slots__ = ("_of", "_bound", "_params")

    def __init__(self) -> None:
        self._of: dict[int, tuple[str, int]] = {}
        self._bound: dict[int, tuple[str, int]] = {}  # id -> (name, position), from bind()
        self._params: list[torch.Tensor] = []  # keeps the id()s above valid

    def bind(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Key parameters by these names and positions (call before the first backward)."""
        if self._of:
            raise ValueError("bind() must be called before the hook has seen any bucket")
        for name, param in named_parameters:
            if id(param) in self._bound:  # a shared parameter is one parameter
                continue
            self._bound[id(param)] = (name, len(self._bound))
            self._params.append(param)
        if len(self._bound) > MAX_PARAMETERS:
            raise ValueError(f"a hook supports at most {MAX_PARAMETERS} parameters, got {len(self._bound)}")

    def _key(self, param: torch.Tensor) -> tuple[str, int]:
        known = self._of.get(id(param))
        if known is None:
            if self._bound:  # the name, and the position among the bound parameters
                known = self._bound.get(id(param))
                if known is None:
                    raise ValueError(
                        f"the hook saw a parameter of shape {tuple(param.shape)} that is not among the parameters the "
                        "state was bound to: bind the state to the model DDP wraps"
                    )
            else:
                index = len(self._of)
                if index >= MAX_PARAMETERS:
                    raise ValueError(f"a hook supports at most {MAX_PARAMETERS} parameters")
                known = (f"#{index}", index)
                self._params.append(param)
            self._of[id(param)] = known
        return known

    def slices(self, bucket: dist.GradBucket) -> list[ParamSlice]:
        """Where each of the bucket's parameters lies in its buffer (keys assigned on first sight).

        Offsets come from ``bucket.gradients()``, which are views into the bucket's buffer.
        """
        buffer = bucket.buffer()
        base, size = buffer.data_ptr(), buffer.element_size()
        out = []
        for p, g in zip(bucket.parameters(), bucket.gradients()):
            key, index = self._key(p)
            out.append(ParamSlice(key, index, (g.data_ptr() - base) // size, g.numel()))
        return out


def pieces_in(slices: list[ParamSlice], lo: int, hi: int) -> list[Piece]:
    """The parts of the parameters inside bucket coordinates ``[lo, hi)``, in bucket order."""
    out = []
    for p in slices:
        a, b = max(lo, p.start), min(hi, p.start + p.numel)
        if a < b:
            out.append(Piece(p, a, b - a))
    return out


def cut_unit(bucket_size: int) -> int:
    """Cuts inside a parameter fall on multiples of this many elements of it: whole
    quantization buckets and whole Philox groups of 8."""
    return bucket_size * 8 // math.gcd(bucket_size, 8)


def chunk_bounds(slices: list[ParamSlice], lo: int, hi: int, bucket_size: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``[lo, hi)``, as even as the cut rule allows.

    Each cut is the allowed position nearest to ``lo + k * (hi - lo) / parts``: a parameter
    boundary or a multiple of :func:`cut_unit` elements into a parameter. Ranges may be empty
    (tiny buckets). Every rank computes the same cuts from the same slices.
    """
    unit = cut_unit(bucket_size)
    ordered = sorted(slices, key=lambda s: s.start)
    cuts = [lo]
    for k in range(1, parts):
        target = lo + k * (hi - lo) // parts
        cut = hi
        for p in ordered:
            end = p.start + p.numel
            if target < end:
                if target <= p.start:
                    cut = p.start
                else:
                    m = (target - p.start + unit // 2) // unit
                    cut = min(p.start + m * unit, end)
                break
        cuts.append(min(max(cut, cuts[-1]), hi))
    cuts.append(hi)
    return list(zip(cuts, cuts[1:]))


def stream_offset(iteration: int, param_index: int, phase: int) -> int:
    """The Philox offset of one parameter's quantization at ``iteration`` in ``phase`` (0: what
    a rank sends; 1: the re-quantization of a reduced chunk)."""
    if not 0 <= phase < _PHASES:
        raise ValueError(f"phase must be 0 or 1, got {phase}")
    return ((iteration * MAX_PARAMETERS + param_index) * _PHASES + phase) & ((1 << 63) - 1)
