"""The CUDA emulation tests under a sanitizer, with a positive control: the sanitizer must also
report a bug planted in a probe kernel, or its silence means nothing.

    python tests/cuda_emulation/sanitize.py address   # make cuda-emulation-asan: ASan + UBSan
    python tests/cuda_emulation/sanitize.py thread    # make cuda-emulation-tsan: ThreadSanitizer

address: the whole suite on the ASan + UBSan build (out-of-bounds accesses to device memory and to
a block's shared memory, undefined behaviour in the kernels and csrc/core); control: a kernel writing
one element past its dynamic shared memory.
thread: the whole suite on the TSan build, in which only barriers order the threads of a block;
control: the probe that forgets the barrier between shared-memory writes and reads (excluded from
the suite run, where it is a deliberate race).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import harness_build

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

CONTROLS = {
    "address": (
        "probe_past_dynamic_shared",
        "torch.empty(32, dtype=torch.int64)",
        "AddressSanitizer: heap-buffer-overflow",
    ),
    "thread": ("probe_missing_barrier", "torch.empty(64, dtype=torch.int32)", "missing_barrier_kernel"),
}
_CONTROL = """
import ctypes, sys, torch
lib = ctypes.CDLL(sys.argv[1])
out = {out}
assert lib.{probe}(ctypes.c_void_p(out.data_ptr())) == 0
assert lib.emu_device_synchronize() == 0
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sanitizer", choices=harness_build.SANITIZERS)
    args = parser.parse_args()
    start = time.monotonic()
    lib = harness_build.build(sanitize=args.sanitizer)
    env = dict(os.environ, **harness_build.sanitizer_env(args.sanitizer))
    deselect = ["-k", "not forgotten_barrier"] if args.sanitizer == "thread" else []
    # -s: a sanitizer report printed during a passing test would otherwise stay in pytest's capture.
    suite = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *deselect, str(HERE)],
        env=env,
        cwd=ROOT,
    )
    probe, out, expected = CONTROLS[args.sanitizer]
    control = subprocess.run(
        [sys.executable, "-c", _CONTROL.format(probe=probe, out=out), str(lib)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    caught = control.returncode != 0 and expected in control.stderr
    print(
        f"{args.sanitizer}: suite {'passed' if suite.returncode == 0 else 'FAILED'}; planted bug ({probe}) "
        f"{'reported' if caught else 'NOT REPORTED'}; {time.monotonic() - start:.0f} s"
    )
    if not caught:
        print(control.stderr[-3000:], file=sys.stderr)
    sys.exit(0 if suite.returncode == 0 and caught else 1)


if __name__ == "__main__":
    main()
