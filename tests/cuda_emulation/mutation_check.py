"""Checks that the CUDA emulation tests catch broken kernels: each mutant below (a wrong grid-stride
step, start or shuffle offset, a dropped barrier or atomic) is applied to a copy of csrc/, built into
the harness, and must fail the emulation tests; a mutant whose outputs stay bit-identical (work done
twice by racing threads) must then be reported by ThreadSanitizer.

    python tests/cuda_emulation/mutation_check.py            # every mutant (a few minutes)
    python tests/cuda_emulation/mutation_check.py -k norms   # mutants whose name contains "norms"

Exits nonzero if any mutant survives. Not part of ``make test`` (it rebuilds once per mutant).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import harness_build

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # under csrc/cuda
    old: str
    new: str
    tests: str  # test module that must fail
    # Duplicated work writes the same values twice: only a race detector can tell.
    race_only: bool = False


MUTANTS = [
    Mutant(
        "norms: shuffle offset + 1",
        "quantize.cu",
        "__shfl_down_sync(0xffffffffu, acc, stride)",
        "__shfl_down_sync(0xffffffffu, acc, stride + 1)",
        "test_emu_quantize.py",
    ),
    Mutant(
        "norms: shuffle width 16",
        "quantize.cu",
        "__shfl_down_sync(0xffffffffu, acc, stride)",
        "__shfl_down_sync(0xffffffffu, acc, stride, 16)",
        "test_emu_quantize.py",
    ),
    Mutant(
        "norms: first shuffle offset 8",
        "quantize.cu",
        "int stride = kNormLanes / 2;",
        "int stride = kNormLanes / 4;",
        "test_emu_quantize.py",
    ),
    Mutant(
        "norms: grid-stride step + 1 warp",
        "quantize.cu",
        "b += warps)",
        "b += warps + 1)",
        "test_emu_quantize.py",
    ),
    Mutant(
        "norms: grid-stride step of one block",
        "quantize.cu",
        "const int64_t warps = (int64_t)gridDim.x * (blockDim.x / kNormLanes);",
        "const int64_t warps = blockDim.x / kNormLanes;",
        "test_emu_quantize.py",
        race_only=True,
    ),
    Mutant(
        "quantize: no barrier after staging levels",
        "quantize.cu",
        "    if (shared_inv_width != nullptr) shared_inv_width[j] = table.inv_width[j];\n  }\n  __syncthreads();",
        "    if (shared_inv_width != nullptr) shared_inv_width[j] = table.inv_width[j];\n  }",
        "test_emu_quantize.py",
    ),
    Mutant(
        "quantize: staging starts at thread + 1",
        "quantize.cu",
        "for (int j = threadIdx.x; j < table.count; j += blockDim.x)",
        "for (int j = threadIdx.x + 1; j < table.count; j += blockDim.x)",
        "test_emu_quantize.py",
    ),
    Mutant(
        "quantize: grid-stride step * 2",
        "quantize.cu",
        "  auto load = [x](int64_t i) { return to_float(x[i]); };\n  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;\n       g += (int64_t)gridDim.x * blockDim.x) {",
        "  auto load = [x](int64_t i) { return to_float(x[i]); };\n  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;\n       g += 2 * (int64_t)gridDim.x * blockDim.x) {",
        "test_emu_quantize.py",
    ),
    Mutant(
        "quantize: grid-stride step of one block",
        "quantize.cu",
        "  auto load = [x](int64_t i) { return to_float(x[i]); };\n  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;\n       g += (int64_t)gridDim.x * blockDim.x) {",
        "  auto load = [x](int64_t i) { return to_float(x[i]); };\n  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups;\n       g += blockDim.x) {",
        "test_emu_quantize.py",
        race_only=True,
    ),
    Mutant(
        "dequantize_accumulate: grid-stride step of one block",
        "quantize.cu",
        "       g += (int64_t)gridDim.x * blockDim.x) {\n    const int size = group_size(g, n);\n    bool ok = true;",
        "       g += blockDim.x) {\n    const int size = group_size(g, n);\n    bool ok = true;",
        "test_emu_quantize.py",
    ),
    Mutant(
        "pack: every block starts at group threadIdx.x",
        "quantize.cu",
        "  for (int64_t g = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; g < group_count(n);\n       g += (int64_t)gridDim.x * blockDim.x) {\n    uint32_t",
        "  for (int64_t g = threadIdx.x; g < group_count(n);\n       g += (int64_t)gridDim.x * blockDim.x) {\n    uint32_t",
        "test_emu_quantize.py",
    ),
    Mutant(
        "unpack: grid-stride step of one block",
        "quantize.cu",
        "       g += (int64_t)gridDim.x * blockDim.x) {\n    const int size = group_size(g, n);\n    const uint64_t bits = load_group(in,",
        "       g += blockDim.x) {\n    const int size = group_size(g, n);\n    const uint64_t bits = load_group(in,",
        "test_emu_quantize.py",
        race_only=True,
    ),
    Mutant(
        "elias: grid-stride step + 1",
        "elias.cu",
        "return static_cast<int64_t>(gridDim.x) * blockDim.x;",
        "return static_cast<int64_t>(gridDim.x) * blockDim.x + 1;",
        "test_emu_elias.py",
    ),
    Mutant(
        "elias: grid-stride step of one block",
        "elias.cu",
        "return static_cast<int64_t>(gridDim.x) * blockDim.x;",
        "return static_cast<int64_t>(blockDim.x);",
        "test_emu_elias.py",
        race_only=True,
    ),
    Mutant(
        "elias: first bad bucket by atomicMax",
        "elias.cu",
        "atomicMin(first_bad,",
        "atomicMax(first_bad,",
        "test_emu_elias.py",
    ),
    Mutant(
        "elias decode: first error by atomicMax",
        "elias.cu",
        "atomicMin(first_error,",
        "atomicMax(first_error,",
        "test_emu_elias.py",
    ),
    Mutant(
        "stats: no barrier after zeroing the histogram",
        "stats.cu",
        "for (int k = threadIdx.x; k < bins; k += blockDim.x) hist[k] = 0ull;\n  __syncthreads();",
        "for (int k = threadIdx.x; k < bins; k += blockDim.x) hist[k] = 0ull;",
        "test_emu_stats.py",
    ),
    Mutant(
        "stats: grid-stride step of one block",
        "stats.cu",
        "const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;",
        "const int64_t stride = blockDim.x;",
        "test_emu_stats.py",
    ),
    Mutant(
        "stats: plain add to the global histogram",
        "stats.cu",
        "if (hist[k] != 0ull) atomicAdd(&total[k], hist[k]);",
        "if (hist[k] != 0ull) total[k] += hist[k];",
        "test_emu_stats.py",
        race_only=True,
    ),
    Mutant(
        "bin_mass: grid-stride step of one block",
        "stats.cu",
        "k += gridDim.x * blockDim.x) {",
        "k += blockDim.x) {",
        "test_emu_stats.py",
        race_only=True,
    ),
]


def apply(mutant: Mutant, tree: Path) -> None:
    path = tree / "csrc" / "cuda" / mutant.file
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name!r}: expected exactly one {mutant.old!r} in {mutant.file}")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_tests(lib: Path, module: str, sanitize: str | None) -> tuple[bool, str]:
    """(the tests passed, their output tail); under TSan a report counts as a failure."""
    env = dict(os.environ, COMMCOMP_EMU_LIB=str(lib))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(HERE / module)]
    if sanitize == "thread":
        env.update(harness_build.sanitizer_env("thread"), TSAN_OPTIONS="halt_on_error=1")
        cmd.insert(
            3, "-s"
        )  # uncaptured: TSan halts inside a test, and pytest's capture would hide its report
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    out = (result.stdout + result.stderr).strip().splitlines()
    reports = [line for line in out if "SUMMARY: ThreadSanitizer" in line]
    summary = (
        reports[0].replace("SUMMARY: ThreadSanitizer: ", "TSan: ") if reports else (out[-1] if out else "")
    )
    return result.returncode == 0, summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    args = parser.parse_args()
    selected = [m for m in MUTANTS if args.k in m.name]
    # Control: the unmutated sources pass every test module used, plain and (if needed) under TSan.
    modules = sorted({m.tests for m in selected})
    for sanitize in [None] + (["thread"] if any(m.race_only for m in selected) else []):
        lib = harness_build.build(sanitize=sanitize)
        for module in modules:
            passed, summary = run_tests(lib, module, sanitize)
            if not passed:
                sys.exit(f"control run failed ({module}, sanitize={sanitize}): {summary}")
    print(
        f"control: the unmutated kernels pass {modules}"
        + (" (also under TSan)" if len(modules) and any(m.race_only for m in selected) else "")
    )
    survivors = []
    for mutant in selected:
        with tempfile.TemporaryDirectory(prefix="commcomp-mutant-") as tmp:
            tree = Path(tmp)
            shutil.copytree(ROOT / "csrc", tree / "csrc")
            apply(mutant, tree)
            lib = harness_build.build(cuda_dir=tree / "csrc" / "cuda", out_dir=tree / "build")
            passed, summary = run_tests(lib, mutant.tests, None)
            verdict = "caught by the tests" if not passed else "outputs unchanged"
            if passed and mutant.race_only:
                lib = harness_build.build(
                    sanitize="thread", cuda_dir=tree / "csrc" / "cuda", out_dir=tree / "build-tsan"
                )
                passed, summary = run_tests(lib, mutant.tests, "thread")
                verdict = "caught by ThreadSanitizer" if not passed else "SURVIVED"
            elif passed:
                verdict = "SURVIVED"
        print(f"{mutant.name:55s} {verdict:28s} {summary[:110]}", flush=True)
        if passed:
            survivors.append(mutant.name)
    if survivors:
        sys.exit(f"{len(survivors)} mutant(s) survived: {survivors}")
    print("every mutant was caught")


if __name__ == "__main__":
    main()
