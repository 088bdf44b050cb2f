"""Checks that NCCL's strict test mode catches the defects it was built against (issue 22, a-h):
each mutant below puts one defect back into a copy of the sources, and the tests named with it must
then fail, for the reason named (the rule in the failure's text). Each selection of tests is first
run on the unmutated copy, which must pass.

    python tests/nccl_mutation_check.py            # every mutant (several minutes)
    python tests/nccl_mutation_check.py -k order   # mutants whose name contains "order"

Exits nonzero if any mutant survives or any control fails. Not part of ``make test`` (one test
run per mutant); tests/cuda_emulation/mutation_check.py does the same for the CUDA kernels.
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

ROOT = Path(__file__).resolve().parents[1]
RULES = "tests/test_nccl_rules.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    edits: tuple[tuple[str, str], ...]  # (old, new), each old found exactly once
    tests: str  # pytest selection that must fail
    reason: tuple[str, ...]  # the failure must contain one of these (the rule broken first)


MUTANTS = [
    Mutant(
        "a: the robust hook's non-finite marker frame on the host",
        "commcomp/robust/hook.py",
        (("frame = make_frame(None, row.device)", 'frame = make_frame(None, torch.device("cpu"))'),),
        f"{RULES}::test_the_robust_hook_sends_its_nonfinite_marker_from_the_device",
        ("R2 devices",),
    ),
    Mutant(
        "b: follow-ups read the value of the future they follow instead of waiting for it",
        "commcomp/hooks/_wire.py",
        (("            return fn(f.wait())\n", "            return fn(f.value())\n"),),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[allgather-fixed]",
        ("R6 futures",),
    ),
    Mutant(
        "b: MixTailor joins its rows and its draw with collect_all",
        "commcomp/robust/hook.py",
        (
            ("both = join([rows, rnd.draw], buffer.device)", "both = torch.futures.collect_all([rows, rnd.draw])"),
            ("lambda got: aggregate(got[0][0], got[1])", "lambda got: aggregate(got[0].value()[0], got[1].value())"),
        ),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[robust-mixtailor]",
        ("R6 futures",),
    ),
    Mutant(
        "c: the groups a hook sends on created by its first body",
        "commcomp/hooks/_hook_state.py",
        (
            ("        if dist.is_available() and dist.is_initialized():\n            self.create_groups()\n",
             "        pass\n"),
            ("        if self._send_groups is None:\n            raise RuntimeError(",
             "        if self._send_groups is None:\n            self.create_groups()\n        if self._send_groups is None:\n            raise RuntimeError("),
        ),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[reduce-scatter]",
        ("R7 groups",),
    ),
    Mutant(
        "d: collectives launched in the order they were submitted, not in the global ticket order",
        "commcomp/hooks/_comm_thread.py",
        (
            ("while not (self._tasks or self._next in self._submitted or inflight or self._stopping):",
             "while not (self._tasks or self._submitted or inflight or self._stopping):"),
            ("if self._stopping and not (self._tasks or self._next in self._submitted or inflight):",
             "if self._stopping and not (self._tasks or self._submitted or inflight):"),
            ("                while self._next in self._submitted:\n                    launches.append(self._submitted.pop(self._next))\n",
             "                for waiting in list(self._submitted):\n                    launches.append(self._submitted.pop(waiting))\n"),
            ("if ticket in self._submitted or not self._next <= ticket < self._reserved:",
             "if ticket in self._submitted or not ticket < self._reserved:"),
        ),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[reduce-scatter-elias]",
        ("R4 launch order",),
    ),
    Mutant(
        "e: follow-ups run off commcomp's stream",
        "commcomp/hooks/_comm_thread.py",
        (("                with on_comm_stream(device):\n                    _run_task(task)", "                if True:\n                    _run_task(task)"),),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[allgather-fixed]",
        ("streams",),
    ),
    Mutant(
        "e: hook bodies run off commcomp's stream",
        "commcomp/hooks/_bucket.py",
        (("with on_comm_stream(bucket.buffer().device, wait_for_caller=True):", "if True:"),),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[allgather-fixed]",
        ("streams",),
    ),
    Mutant(
        "f: quantize launches on the current device's stream without a CUDAGuard",
        "csrc/cuda/quantize_binding.cpp",
        (("  const c10::cuda::CUDAGuard guard(x.device());  // the stream below is x's device's\n", ""),),
        f"{RULES}::test_every_cuda_binding_guards_the_device_of_the_stream_it_launches_on",
        ("quantize_binding.cpp",),
    ),
    Mutant(
        "g: the refit's statistics placed by comparing the backend's name",
        "commcomp/hooks/state.py",
        (("self.quantizer.take_statistics(device)",
          'self.quantizer.take_statistics(device if dist.get_backend(everyone.group) == "nccl" else torch.device("cpu"))'),),
        f"{RULES}::test_every_hook_launches_in_one_global_order_whenever_data_arrives[alq-refits]",
        # statistics moved to the host: a copy to the host in the body (R5), then a host tensor in
        # the all-reduce (R2); whichever comes first
        ("R5 host reads", "R2 devices"),
    ),
    Mutant(
        "h: the node's reduce-scatter as an all-to-all",
        "commcomp/hooks/reduce_scatter.py",
        (("dist.reduce_scatter_single(node_sum, send, group=g, async_op=True)",
          "dist.all_to_all_single(torch.empty_like(send), send, group=g, async_op=True)"),),
        f"{RULES}::test_hierarchical_mode_launches_in_one_global_order_with_a_reduce_scatter_in_the_node",
        ("all_to_all_single",),
    ),
]


def _copy_tree(dest: Path) -> None:
    for name in ("commcomp", "tests", "examples", "csrc"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _run(tree: Path, selection: str) -> tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(tree), COMMCOMP_CSRC=str(tree / "csrc"), PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", selection],
        cwd=tree, env=env, capture_output=True, text=True, timeout=900,
    )
    return proc.returncode, proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="only mutants whose name contains this")
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.k in m.name]
    failures = 0
    with tempfile.TemporaryDirectory(prefix="nccl-mutants-") as tmp:
        clean = Path(tmp) / "clean"
        _copy_tree(clean)
        for selection in sorted({m.tests for m in mutants}):
            code, out = _run(clean, selection)
            ok = code == 0
            failures += not ok
            print(f"{'passes' if ok else 'FAILS '}  control: {selection}", flush=True)
            if not ok:
                print(out[-3000:])
        for m in mutants:
            tree = Path(tmp) / "mutant"
            shutil.rmtree(tree, ignore_errors=True)
            _copy_tree(tree)
            path = tree / m.file
            text = path.read_text()
            for old, new in m.edits:
                if text.count(old) != 1:
                    raise SystemExit(f"mutant {m.name!r}: {old!r} found {text.count(old)} times in {m.file}")
                text = text.replace(old, new)
            path.write_text(text)
            code, out = _run(tree, m.tests)
            caught = code != 0 and any(reason in out for reason in m.reason)
            failures += not caught
            verdict = "caught  " if caught else ("SURVIVED" if code == 0 else "WRONG REASON")
            print(f"{verdict} {m.name}  ({m.tests.split('::')[-1]}: {' or '.join(m.reason)})", flush=True)
            if not caught:
                print(out[-3000:])
    print(f"every one of {len(mutants)} mutants caught, every control passed" if not failures else f"{failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
