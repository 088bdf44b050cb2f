"""Builds the CUDA emulation library: csrc/cuda/*.cu compiled by the host C++ compiler.

    python tests/cuda_emulation/harness_build.py                      # -> build/cuda_emulation/default/
    python tests/cuda_emulation/harness_build.py --sanitize address   # ASan + UBSan build
    python tests/cuda_emulation/harness_build.py --sanitize thread    # TSan build
    python tests/cuda_emulation/harness_build.py --cuda-dir /tmp/mutant --out /tmp/mutant-build

Each ``.cu`` file is compiled as it is, as nvcc would see it, with ``include/`` (the CPU stand-ins
for ``cuda_runtime.h``, ``cuda_fp16.h``, ``cuda_bf16.h``) ahead of any CUDA include path,
``__CUDACC__`` and ``__CUDA_ARCH__`` defined (the device code paths of ``csrc/core`` are the ones
compiled) and ``cuda_runtime.h`` force-included, as nvcc does. One step sits between the
preprocessor and the compiler: :func:`rewrite_shared` turns each ``__shared__`` declaration into a
reference to memory of the running block (C++ has no storage class for "one per block").

The library is rebuilt only when a source, header or flag changed (a content hash in ``stamp``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
INCLUDE = HERE / "include"
PROBES = HERE / "kernels"
LIBRARY = "libcommcomp_cuda_emu.so"
SANITIZERS = ("address", "thread")
_RUNTIMES = {"address": "libasan.so", "thread": "libtsan.so"}

SHARED_MARKER = "__commcomp_emu_shared__"  # what include/commcomp_emu/device.h makes of __shared__
_SHARED_DECL = re.compile(r"(\bextern\s+)?" + SHARED_MARKER + r"\s+([^;{}]*);")
_ALIGN_ATTR = re.compile(r"__attribute__\s*\(\(\s*aligned\s*\(\s*(\d+)\s*\)\s*\)\)|alignas\s*\(\s*(\d+)\s*\)")
_DECLARATOR = re.compile(
    r"(?P<type>.*?[\w>*])\s*\b(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\[\]]*\])*)", re.S
)


class BuildError(RuntimeError):
    pass


def rewrite_shared(text: str, origin: str) -> str:
    """Rewrites the ``__shared__`` declarations of preprocessed source ``text``.

    ``__shared__ T name[N];`` becomes ``T (&name)[N] = static_shared_variable<T[N]>(site)``: every
    thread of a block gets the same (poisoned) memory of that block, another block its own.
    ``extern __shared__ T name[];`` becomes a pointer to the launch's dynamic shared memory,
    allocated per block with exactly the bytes the launch asked for. Line breaks are kept, so
    diagnostics and debuggers still point at the original lines.
    """

    def one(match: re.Match) -> str:
        is_extern, decl = match.group(1) is not None, match.group(2)
        if "=" in decl or "," in re.sub(r"\[[^\]]*\]|<[^<>]*>", "", decl):
            raise BuildError(
                f"{origin}: unsupported __shared__ declaration (one name, no initializer): {match.group(0)!r}"
            )
        align = max((int(a or b) for a, b in _ALIGN_ATTR.findall(decl)), default=0)
        decl = _ALIGN_ATTR.sub(" ", decl).strip()
        d = _DECLARATOR.fullmatch(decl)
        if d is None:
            raise BuildError(f"{origin}: cannot parse __shared__ declaration {match.group(0)!r}")
        type_, name, dims = d.group("type").strip(), d.group("name"), d.group("dims").replace(" ", "")
        keep_lines = "\n" * match.group(0).count("\n")
        if is_extern:
            if dims != "[]":
                raise BuildError(f"{origin}: extern __shared__ must be an unsized array: {match.group(0)!r}")
            return f"{type_}* const {name} = ::commcomp_emu::dynamic_shared_array<{type_}>();{keep_lines}"
        if "[]" in dims:
            raise BuildError(f"{origin}: a static __shared__ array needs a size: {match.group(0)!r}")
        align_arg = f", {align}" if align else ""
        reference = f"(&{name}){dims}" if dims else f"&{name}"
        return (
            f"{type_} {reference} = ::commcomp_emu::static_shared_variable<{type_}{dims}{align_arg}>([] {{}});"
            f"{keep_lines}"
        )

    out = _SHARED_DECL.sub(one, text)
    if SHARED_MARKER in out:
        line = out[: out.index(SHARED_MARKER)].count("\n") + 1
        raise BuildError(
            f"{origin}: __shared__ used outside a declaration the harness understands (preprocessed line {line})"
        )
    return out


def _flags(sanitize: str | None) -> list[str]:
    """Compiler flags of every object."""
    common = [
        "-std=c++17",
        "-fPIC",
        "-g",
        "-O1",
        "-pthread",
        # The same arithmetic as nvcc --fmad=false: no contraction to FMA, IEEE division and sqrt.
        "-ffp-contract=off",
        "-fno-math-errno",
        "-Wall",
        "-Wextra",
        "-Werror=return-type",
        # nvcc ignores unknown pragmas too (COMMCOMP_UNROLL is "#pragma unroll"); csrc/core has a
        # variable only its host code path uses (scan_symbols' `readable`).
        "-Wno-unknown-pragmas",
        "-Wno-unused-variable",
        f"-I{INCLUDE}",
        f"-I{CSRC}",
    ]
    if sanitize == "address":
        common += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"]
    elif sanitize == "thread":
        # Everything instrumented (so every lock and reference count is seen); runtime.cpp tells
        # TSan about fibers and barriers and hides its own bookkeeping.
        common += ["-fsanitize=thread"]
    return common


def _device_flags() -> list[str]:
    return ["-D__CUDACC__", "-D__CUDA_ARCH__=800", "-DCOMMCOMP_CUDA_EMULATION", "-include", "cuda_runtime.h"]


def _inputs(cuda_dir: Path) -> list[Path]:
    files = sorted(cuda_dir.glob("*.cu")) + sorted(PROBES.glob("*.cu"))
    files += sorted(p for p in CSRC.rglob("*.h")) + sorted(INCLUDE.rglob("*.h"))
    files += sorted(HERE.glob("*.cpp")) + [Path(__file__).resolve()]
    return files


def _fingerprint(cuda_dir: Path, sanitize: str | None, cxx: str) -> str:
    h = hashlib.sha256()
    for path in _inputs(cuda_dir):
        h.update(str(path).encode())
        h.update(path.read_bytes())
    h.update(repr((_flags(sanitize), _device_flags(), sanitize, cxx)).encode())
    h.update(subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(
            f"command failed ({result.returncode}): {' '.join(cmd)}\n{result.stdout}{result.stderr}"
        )
    if result.stderr.strip():
        sys.stderr.write(result.stderr)


def build(
    sanitize: str | None = None,
    cuda_dir: Path | None = None,
    out_dir: Path | None = None,
    jobs: int | None = None,
) -> Path:
    """Builds (if stale) and returns the path of the emulation library."""
    if sanitize not in (None, *SANITIZERS):
        raise ValueError(f"sanitize must be None or one of {SANITIZERS}, got {sanitize!r}")
    cuda_dir = Path(cuda_dir or CSRC / "cuda").resolve()
    out_dir = Path(out_dir or ROOT / "build" / "cuda_emulation" / (sanitize or "default")).resolve()
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise BuildError(f"C++ compiler {cxx!r} not found (set CXX)")
    lib = out_dir / LIBRARY
    stamp = out_dir / "stamp"
    fingerprint = _fingerprint(cuda_dir, sanitize, cxx)
    if lib.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    common = _flags(sanitize)
    kernels = sorted(cuda_dir.glob("*.cu")) + sorted(PROBES.glob("*.cu"))
    if not any(k.parent == cuda_dir for k in kernels):
        raise BuildError(f"no .cu sources in {cuda_dir}")

    def compile_kernel(cu: Path) -> Path:
        stem = f"{cu.parent.name}_{cu.stem}"
        ii, obj = out_dir / f"{stem}.ii", out_dir / f"{stem}.o"
        _run([cxx, *common, *_device_flags(), "-E", "-x", "c++", str(cu), "-o", str(ii)])
        ii.write_text(rewrite_shared(ii.read_text(), str(cu)))
        _run([cxx, *common, "-c", str(ii), "-o", str(obj)])
        return obj

    def compile_host(cpp: Path) -> Path:
        obj = out_dir / f"{cpp.stem}.o"
        _run(
            [
                cxx,
                *common,
                "-DCOMMCOMP_CUDA_EMULATION",
                f"-I{cuda_dir.parent}",
                "-c",
                str(cpp),
                "-o",
                str(obj),
            ]
        )
        return obj

    jobs = jobs or int(os.environ.get("MAX_JOBS", "2"))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(compile_kernel, cu) for cu in kernels]
        futures += [pool.submit(compile_host, HERE / name) for name in ("runtime.cpp", "shim.cpp")]
        objects = [f.result() for f in futures]
    tmp = out_dir / f"{LIBRARY}.tmp"
    _run([cxx, *common, "-shared", *map(str, objects), "-o", str(tmp)])
    tmp.replace(lib)
    stamp.write_text(fingerprint)
    return lib


def sanitizer_env(sanitize: str) -> dict[str, str]:
    """Environment for a Python process that loads the ``sanitize`` build: Python is not built with
    the sanitizer, so its runtime (and libstdc++, whose exception functions ASan intercepts) must be
    preloaded. torch's OpenMP threads are kept to one: TSan cannot see libgomp's synchronization."""
    cc = os.environ.get("CC", "gcc")

    def runtime(name: str) -> str:
        return subprocess.run(
            [cc, f"-print-file-name={name}"], capture_output=True, text=True, check=True
        ).stdout.strip()

    env = {
        "COMMCOMP_EMU_SANITIZE": sanitize,
        "LD_PRELOAD": f"{runtime(_RUNTIMES[sanitize])} {runtime('libstdc++.so')}",
    }
    if sanitize == "address":
        env.update(ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    else:
        env.update(OMP_NUM_THREADS="1")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sanitize", choices=SANITIZERS)
    parser.add_argument("--cuda-dir", type=Path, help="directory of the .cu sources (default csrc/cuda)")
    parser.add_argument("--out", type=Path, help="build directory")
    parser.add_argument("--jobs", type=int)
    args = parser.parse_args()
    try:
        print(build(args.sanitize, args.cuda_dir, args.out, args.jobs))
    except BuildError as e:
        sys.exit(f"harness_build.py: {e}")


if __name__ == "__main__":
    main()
