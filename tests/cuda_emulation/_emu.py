"""ctypes front end of the CUDA emulation library (see harness_build.py and docs/cuda_emulation.md).

:class:`Emulator` calls the launch API of ``csrc/cuda/launch.h`` on CPU tensors (host memory plays
device memory) and returns what the CUDA bindings would: its outputs are compared bit for bit with
the CPU ops. Outputs start filled with a poison byte, so anything a kernel fails to write shows.
Launches are asynchronous, as on a GPU; every wrapper synchronizes its stream and raises
:class:`LaunchError` with the harness's diagnosis if a kernel broke a CUDA rule.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Sequence

import torch

import harness_build

POISON = 0xA5
DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
NORM_KINDS = {"l2": 0, "linf": 1}
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
NO_ERROR = -1  # an error flag's initial value (~0ull): the identity of the kernels' atomicMin

_c = ctypes
_ptr, _i64, _int, _u64 = _c.c_void_p, _c.c_int64, _c.c_int, _c.c_uint64
_SIGNATURES = {
    "emu_configure": (_int, [_c.c_uint, _c.c_uint, _int, _int, _c.c_ulonglong]),
    "emu_reset": (None, []),
    "emu_error_message": (None, [_c.c_char_p, _c.c_size_t]),
    "emu_launched_kernels": (None, [_c.c_char_p, _c.c_size_t]),
    "emu_error_string": (_c.c_char_p, [_int]),
    "emu_elias_status_message": (_c.c_char_p, [_int]),
    "emu_stream_create": (_ptr, []),
    "emu_stream_destroy": (_int, [_ptr]),
    "emu_stream_synchronize": (_int, [_ptr]),
    "emu_device_synchronize": (_int, []),
    "emu_get_last_error": (_int, []),
    "emu_bucket_norms": (_int, [_ptr, _int, _i64, _i64, _int, _ptr, _ptr]),
    "emu_quantize": (_int, [_ptr, _int, _i64, _i64, _ptr, _ptr, _int, _u64, _u64, _i64, _ptr, _ptr]),
    "emu_dequantize_accumulate": (
        _int,
        [_ptr, _i64, _i64, _int, _ptr, _ptr, _ptr, _int, _c.c_float, _int, _ptr, _ptr],
    ),
    "emu_pack": (_int, [_ptr, _i64, _int, _ptr, _ptr]),
    "emu_unpack": (_int, [_ptr, _i64, _int, _ptr, _ptr]),
    "emu_elias_bucket_bytes": (_int, [_ptr, _i64, _i64, _int, _int, _ptr, _ptr, _ptr]),
    "emu_elias_write": (_int, [_ptr, _i64, _i64, _int, _int, _ptr, _ptr, _ptr]),
    "emu_elias_decode": (_int, [_ptr, _ptr, _ptr, _i64, _i64, _int, _int, _ptr, _ptr, _ptr]),
    "emu_level_stats": (_int, [_ptr, _int, _i64, _ptr, _i64, _ptr, _int, _ptr, _ptr, _ptr]),
}


class LaunchError(RuntimeError):
    """A launch was rejected, or a kernel broke a rule of the CUDA execution model."""


def library_path() -> Path:
    """$COMMCOMP_EMU_LIB if set, else the (re)built library of $COMMCOMP_EMU_SANITIZE's variant."""
    given = os.environ.get("COMMCOMP_EMU_LIB")
    if given:
        return Path(given)
    return harness_build.build(sanitize=os.environ.get("COMMCOMP_EMU_SANITIZE") or None)


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None or t.numel() == 0 else t.data_ptr()


def poisoned(n: int, dtype: torch.dtype) -> torch.Tensor:
    t = torch.empty(n, dtype=dtype)
    t.view(torch.uint8).fill_(POISON)
    return t


class Emulator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        self.stream: int | None = None  # None: the default stream

    # ---- harness controls ----

    def configure(
        self,
        max_blocks: int = 0,
        max_threads: int = 0,
        workers: int = 2,
        schedule: str = "forward",
        seed: int = 0,
    ) -> None:
        if self.lib.emu_configure(max_blocks, max_threads, workers, SCHEDULES[schedule], seed) != 0:
            raise ValueError(f"invalid harness configuration: {max_blocks=} {max_threads=} {workers=}")

    def reset(self) -> None:
        self.lib.emu_reset()

    def error_message(self) -> str:
        buf = ctypes.create_string_buffer(4096)
        self.lib.emu_error_message(buf, len(buf))
        return buf.value.decode()

    def launched(self) -> list[str]:
        buf = ctypes.create_string_buffer(1 << 16)
        self.lib.emu_launched_kernels(buf, len(buf))
        return buf.value.decode().split()

    def elias_status_message(self, status: int) -> str:
        return self.lib.emu_elias_status_message(status).decode()

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise LaunchError(
                f"{what}: {self.lib.emu_error_string(rc).decode()} (error {rc}) {self.error_message()}"
            )

    def sync(self, what: str = "synchronize") -> None:
        self.check(self.lib.emu_stream_synchronize(self.stream), what)

    def _run(self, rc: int, what: str) -> None:
        self.check(rc, f"{what} launch")
        self.sync(what)

    # ---- csrc/cuda/launch.h, with the bindings' glue ----

    def bucket_norms(self, x: torch.Tensor, bucket_size: int, norm: str) -> torch.Tensor:
        norms = poisoned(-(-x.numel() // bucket_size), torch.float32)
        self._run(
            self.lib.emu_bucket_norms(
                ptr(x), DTYPES[x.dtype], x.numel(), bucket_size, NORM_KINDS[norm], ptr(norms), self.stream
            ),
            "bucket_norms",
        )
        return norms

    def quantize(
        self,
        x: torch.Tensor,
        norms: torch.Tensor,
        levels: torch.Tensor,
        bucket_size: int,
        seed: int,
        offset: int,
        stream_index: int = 0,
    ) -> torch.Tensor:
        width = max(1, (levels.numel() - 1).bit_length()) + 1
        symbols = poisoned(-(-x.numel() * width // 8), torch.uint8)
        self._run(
            self.lib.emu_quantize(
                ptr(x),
                DTYPES[x.dtype],
                x.numel(),
                bucket_size,
                ptr(norms),
                ptr(levels),
                levels.numel(),
                seed,
                offset,
                stream_index // 8,
                ptr(symbols),
                self.stream,
            ),
            "quantize",
        )
        return symbols

    def dequantize_accumulate(
        self,
        out: torch.Tensor,
        norms: Sequence[torch.Tensor],
        symbols: Sequence[torch.Tensor],
        levels: torch.Tensor,
        bucket_size: int,
        scale: float,
        assign_first: bool,
    ) -> bool:
        """Runs one launch over ``out`` in place; returns the kernel's invalid-symbol flag."""
        invalid = torch.zeros(1, dtype=torch.int32)
        k = len(norms)
        norm_ptrs = (ctypes.c_void_p * max(k, 1))(*[ptr(t) for t in norms])
        symbol_ptrs = (ctypes.c_void_p * max(k, 1))(*[ptr(t) for t in symbols])
        self._run(
            self.lib.emu_dequantize_accumulate(
                ptr(out),
                out.numel(),
                bucket_size,
                k,
                ctypes.addressof(norm_ptrs),
                ctypes.addressof(symbol_ptrs),
                ptr(levels),
                levels.numel(),
                scale,
                int(assign_first),
                ptr(invalid),
                self.stream,
            ),
            "dequantize_accumulate",
        )
        return bool(invalid.item())

    def dequantize(
        self, norms: torch.Tensor, symbols: torch.Tensor, levels: torch.Tensor, bucket_size: int, numel: int
    ) -> tuple[torch.Tensor, bool]:
        out = poisoned(numel, torch.float32)
        invalid = self.dequantize_accumulate(out, [norms], [symbols], levels, bucket_size, 1.0, True)
        return out, invalid

    def pack(self, symbols: torch.Tensor, width: int) -> torch.Tensor:
        packed = poisoned(-(-symbols.numel() * width // 8), torch.uint8)
        self._run(self.lib.emu_pack(ptr(symbols), symbols.numel(), width, ptr(packed), self.stream), "pack")
        return packed

    def unpack(self, packed: torch.Tensor, width: int, numel: int) -> torch.Tensor:
        symbols = poisoned(numel, torch.uint8)
        self._run(self.lib.emu_unpack(ptr(packed), numel, width, ptr(symbols), self.stream), "unpack")
        return symbols

    def elias_bucket_bytes(
        self, packed: torch.Tensor, num_levels: int, bucket_size: int, numel: int, code: int
    ) -> tuple[torch.Tensor, int | None]:
        """(bytes per bucket, lowest bucket holding an uncodable symbol or None)."""
        buckets = -(-numel // bucket_size)
        lengths = poisoned(buckets, torch.int64)
        first_bad = torch.full((1,), NO_ERROR, dtype=torch.int64)
        self._run(
            self.lib.emu_elias_bucket_bytes(
                ptr(packed), numel, bucket_size, num_levels, code, ptr(lengths), ptr(first_bad), self.stream
            ),
            "elias_bucket_bytes",
        )
        bad = int(first_bad.item())
        return lengths, (None if bad == NO_ERROR else bad)

    def elias_write(
        self,
        packed: torch.Tensor,
        num_levels: int,
        bucket_size: int,
        numel: int,
        code: int,
        lengths: torch.Tensor,
    ) -> torch.Tensor:
        offsets = torch.cumsum(lengths, 0) - lengths  # as the binding: an exclusive prefix sum
        out = poisoned(int(lengths.sum()), torch.uint8)
        self._run(
            self.lib.emu_elias_write(
                ptr(packed), numel, bucket_size, num_levels, code, ptr(offsets), ptr(out), self.stream
            ),
            "elias_write",
        )
        return out

    def elias_decode(
        self,
        lengths: torch.Tensor,
        coded: torch.Tensor,
        num_levels: int,
        bucket_size: int,
        numel: int,
        code: int,
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """(packed symbols, None) or (unspecified, (lowest failing bucket, its EliasStatus))."""
        width = max(1, (num_levels - 1).bit_length()) + 1
        offsets = torch.cumsum(lengths, 0) - lengths
        packed = poisoned(-(-numel * width // 8), torch.uint8)
        first_error = torch.full((1,), NO_ERROR, dtype=torch.int64)
        self._run(
            self.lib.emu_elias_decode(
                ptr(coded),
                ptr(offsets),
                ptr(lengths),
                numel,
                bucket_size,
                num_levels,
                code,
                ptr(packed),
                ptr(first_error),
                self.stream,
            ),
            "elias_decode",
        )
        err = int(first_error.item())
        if err == NO_ERROR:
            return packed, None
        err &= (1 << 64) - 1
        return packed, (err >> 8, err & 0xFF)

    def level_stats(self, x: torch.Tensor, norms: torch.Tensor, bucket_size: int, bins: int) -> torch.Tensor:
        # The binding's max_finite_norm (csrc/checks/stats.h), a one-element device tensor.
        max_norm = torch.where(torch.isfinite(norms), norms, torch.zeros_like(norms)).amax().reshape(1)
        scratch = torch.zeros(bins, dtype=torch.int64)
        out = poisoned(bins, torch.float64)
        self._run(
            self.lib.emu_level_stats(
                ptr(x),
                DTYPES[x.dtype],
                x.numel(),
                ptr(norms),
                bucket_size,
                ptr(max_norm),
                bins,
                ptr(scratch),
                ptr(out),
                self.stream,
            ),
            "level_stats",
        )
        return out
