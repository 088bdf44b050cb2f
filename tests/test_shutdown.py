"""A training script that ends with destroy_process_group() exits cleanly (issue 22, i).

Before the communication thread (hooks/_comm_thread.py), Gloo's worker threads ran the hooks'
Python callbacks; one still releasing a callback's closure when the main thread exited took the GIL
during interpreter shutdown and aborted the process ("terminate called without an active
exception", or "Resource deadlock avoided" when it dropped the last reference to a group): about
1 run in 4 to 1 in 16 of this scenario. Failures are counted over repeated runs.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _dist import free_port

SCENARIO = Path(__file__).parent / "scenarios" / "shutdown.py"


def run_scenario(spec: str, world: int = 2, timeout: float = 120.0) -> tuple[list[int], str]:
    """One run of the scenario as torchrun would start it: each rank's exit code, and what they printed."""
    port = str(free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, SPEC=spec, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(SCENARIO)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs, codes = [], []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        outputs.append(out)
        codes.append(p.returncode)
    return codes, "\n".join(outputs)


def _failures(runs: int, spec: str) -> list[str]:
    failed = []
    for _ in range(runs):
        codes, output = run_scenario(spec)
        if any(codes) or "terminate called" in output:
            failed.append(f"exit codes {codes}: {output[-800:]}")
    return failed


@pytest.mark.parametrize("spec", ["rs-nuqsgd:4", "nuqsgd:4:elias"])
def test_a_script_ending_with_destroy_process_group_exits_cleanly(spec):
    failed = _failures(3, spec)
    assert not failed, failed[0]


@pytest.mark.slow
def test_the_shutdown_scenario_passes_50_runs_of_50():
    failed = _failures(50, "rs-nuqsgd:4")
    print(f"\nshutdown scenario: {50 - len(failed)} of 50 runs exited cleanly")
    assert not failed, f"{len(failed)} of 50 runs failed; first: {failed[0]}"
