"""What a hook sends for a range of a bucket: its parameter pieces (:mod:`._params`), each
quantized on its own and serialized by :mod:`commcomp.codecs`, one payload after the other.

Every payload is a complete, validated codec payload, so a receiver checks each piece's header,
level table, norms and code before it decodes anything; with fixed-width coding every rank can
compute the total size (:func:`fixed_size`) without being told.
"""
from __future__ import annotations

import torch

from .. import codecs, ops
from ..quantizers import Levels, QuantizedTensor, Quantizer
from ._params import Piece, stream_offset

__all__ = ["quantize_pieces", "fixed_size", "write_pieces", "EliasChoice", "decode_pieces", "accumulate_pieces", "all_finite"]


def quantize_pieces(
    quantizer: Quantizer, levels: Levels, x: torch.Tensor, lo: int, pieces: list[Piece], seed: int, iteration: int, phase: int
) -> list[QuantizedTensor]:
    """Quantize each piece of ``x`` (bucket coordinates ``[lo, lo + x.numel())``) with ``levels``.

    Non-finite quantization buckets come back with their inf/NaN norm and zero symbols.
    """
    table = levels.tensor()
    out = []
    for piece in pieces:
        segment = x[piece.start - lo : piece.start - lo + piece.numel]
        norms, symbols = ops.quantize(
            segment, table, quantizer.bucket_size, quantizer.norm, seed,
            stream_offset(iteration, piece.param.index, phase), None, True, piece.param_index,
        )
        out.append(QuantizedTensor(norms, symbols, piece.numel, quantizer.bucket_size, levels, segment.dtype, True))
    return out


def all_finite(quantized: list[QuantizedTensor], device: torch.device) -> torch.Tensor:
    """A 0-d bool tensor: whether every quantization bucket was finite (no host synchronization)."""
    if not quantized:
        return torch.ones((), dtype=torch.bool, device=device)
    return torch.isfinite(torch.cat([q.norms for q in quantized])).all()


def fixed_size(pieces: list[Piece], bucket_size: int, levels: Levels) -> int:
    """Bytes of the fixed-width payloads of ``pieces``."""
    return sum(codecs.fixed_payload_bytes(p.numel, bucket_size, levels) for p in pieces)


def write_pieces(quantized: list[QuantizedTensor], out: torch.Tensor) -> int:
    """Fixed-width payloads written straight into ``out``; returns the bytes written."""
    at = 0
    for q in quantized:
        at += codecs.encode_into(q, out[at:], "fixed")
    return at


class EliasChoice:
    """Which parameters are worth Elias coding: every payload is coded the smaller way (the
    header says which), and a parameter whose Elias code saved less than ``min_saving`` of the
    fixed-width bytes is sent fixed-width, without trying Elias, for the next ``retry_every``
    iterations (the encoding costs far more than the saving there). Receivers need nothing of
    this: each payload's header names its coding."""

    __slots__ = ("min_saving", "retry_every", "_skip_until")

    def __init__(self, min_saving: float = 0.05, retry_every: int = 100) -> None:
        if not 0.0 <= min_saving < 1.0:
            raise ValueError(f"elias_min_saving must be in [0, 1), got {min_saving!r}")
        self.min_saving, self.retry_every = float(min_saving), int(retry_every)
        self._skip_until: dict[str, int] = {}

    def encode(self, quantized: list[QuantizedTensor], pieces: list[Piece], coding: str, iteration: int) -> torch.Tensor:
        if not quantized:
            return torch.empty(0, dtype=torch.uint8)
        out = []
        for q, piece in zip(quantized, pieces):
            key = piece.param.key
            if coding == "fixed" or self._skip_until.get(key, -1) > iteration:
                out.append(codecs.encode(q, "fixed"))
                continue
            payload = codecs.encode(q, coding, fallback_to_fixed=True)
            fixed = codecs.fixed_payload_bytes(q.numel, q.bucket_size, q.levels)
            if payload.numel() > (1.0 - self.min_saving) * fixed:
                self._skip_until[key] = iteration + self.retry_every
            out.append(payload)
        return torch.cat(out)


def decode_pieces(body: torch.Tensor, pieces: list[Piece], levels: Levels, bucket_size: int) -> list[QuantizedTensor]:
    """Parse and validate the payloads of ``pieces`` from ``body``; ``ValueError`` on any mismatch.

    Every payload must hold its piece's element count, ``bucket_size`` and ``levels`` (the levels
    this rank quantized the iteration with: honest ranks agree), and ``body`` must end with the
    last one.
    """
    out, at = [], 0
    for piece in pieces:
        if body.numel() - at < codecs.HEADER_BYTES:
            raise ValueError(f"payload ends after {at} bytes, before the piece of {piece.param.key!r} at {piece.start}")
        size = codecs.read_header(body[at : at + codecs.HEADER_BYTES]).payload_bytes
        if size > body.numel() - at:
            raise ValueError(f"the piece of {piece.param.key!r} announces {size} bytes, {body.numel() - at} left")
        q = codecs.decode(body[at : at + size], numel=piece.numel)
        if q.bucket_size != bucket_size:
            raise ValueError(f"payload bucket size {q.bucket_size} differs from {bucket_size}")
        if q.levels != levels:
            raise ValueError(f"payload was quantized with other levels ({len(q.levels)} levels) than this iteration's")
        out.append(q)
        at += size
    if at != body.numel():
        raise ValueError(f"{body.numel() - at} bytes after the last piece")
    return out


def accumulate_pieces(
    out: torch.Tensor,
    lo: int,
    pieces: list[Piece],
    payloads: list[list[QuantizedTensor]],
    levels: Levels,
    bucket_size: int,
    scale: float,
) -> None:
    """``out`` (fp32, bucket coordinates ``[lo, ...)``) += ``scale`` x the sum over senders of each
    piece's decoded payload, senders in list order (deterministic, identical on every rank)."""
    table = levels.tensor(out.device)
    for i, piece in enumerate(pieces):
        segment = out[piece.start - lo : piece.start - lo + piece.numel]
        ops.dequantize_accumulate(
            segment,
            [sender[i].norms.to(out.device) for sender in payloads],
            [sender[i].symbols.to(out.device) for sender in payloads],
            table,
            bucket_size,
            scale,
        )
