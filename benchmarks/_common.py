"""Helpers shared by the benchmark scripts: timing, machine description, result files.

Importing this module also puts ``examples/`` on ``sys.path``: the benchmarks reuse the example
harness (``common.data`` datasets, ``common.runtime.pyplot``), which lives in the checkout, not in
the installed library.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


def median_seconds(
    fn: Callable[[], Any],
    repeats: int = 7,
    warmup: int = 2,
    device: torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median time of ``fn()`` by ``clock`` (CUDA-synchronized when ``device`` is a GPU).

    ``clock=time.thread_time`` measures this thread's CPU time: per-thread throughput that other
    processes on a shared machine cannot inflate (only valid for single-threaded CPU work).
    """
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        sync()
        times.append(clock() - start)
    times.sort()
    return times[len(times) // 2]


def machine(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2))
    return path
