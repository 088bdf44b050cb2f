"""NCCL's rules on a real GPU: every commcomp hook, one rank, NCCL, CUDA tensors (a lent machine has
one GPU and NCCL refuses two ranks on one device, so this is as much NCCL as it can check).

Two checks per hook spec (``--specs``), after a few warm-up steps:

* **host reads (R5)**: ``torch.cuda.set_sync_debug_mode("warn")`` around steady-state steps; every
  synchronizing CUDA call is recorded with the thread that made it. A sync on any thread but
  commcomp's communication thread (``commcomp-comm``, which may read) fails the spec: on that
  thread (backward's) it would stall the backward pass until the peers' data arrived.
* **stream races**: the same steps in a child process under ``TORCH_CUDA_SANITIZER=1``
  (CSAN: every kernel's tensor accesses checked for unsynchronized use across streams); any
  report fails the spec.

Writes OUT_DIR/nccl_check.json; exits nonzero on any failure. Run by tools/gpu_check.sh:

    python tools/gpu_nccl_check.py OUT_DIR [--specs rs-nuqsgd:4 ...] [--steps 4]
    python tools/gpu_nccl_check.py OUT_DIR --device cpu   # dry run of the script on Gloo, no checks
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_SPECS = ["qsgd:4", "nuqsgd:4:elias", "allreduce-qsgd:4", "rs-nuqsgd:4", "rs-qsgd:4:elias",
                 "rs-nuqsgd:4:hierarchical", "alq:4:refits", "robust-mixtailor"]
COMM_THREAD = "commcomp-comm"


def _model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1024, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(),
              torch.nn.Linear(256, 10)]
    return torch.nn.Sequential(*layers).to(device)


def _state_and_hook(spec: str):
    from commcomp import NUQSGD, UpdateSchedule
    from commcomp.hooks import hook_from_spec

    if spec == "robust-mixtailor":
        from commcomp.codecs import TensorCodec
        from commcomp.robust import MixTailor, build_pool
        from commcomp.robust.hook import RobustAggregationState, robust_aggregation_hook

        state = RobustAggregationState(MixTailor(build_pool(["median", "trimmed_mean"])), tolerance=0,
                                       codec=TensorCodec(NUQSGD(4, 512), seed=0))
        return state, robust_aggregation_hook
    kwargs = {"bucket_size": 512, "min_compression_numel": 0}
    if spec.endswith(":hierarchical"):
        spec = spec.rsplit(":", 1)[0]
        kwargs.update(hierarchical=True, local_world_size=1)
    if spec.endswith(":refits"):
        spec = spec.rsplit(":", 1)[0]
        kwargs["update_schedule"] = UpdateSchedule(at=(), every=1)
    return hook_from_spec(spec, **kwargs)


def _steps(ddp: torch.nn.Module, device: torch.device, first: int, count: int) -> None:
    for step in range(first, first + count):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(64, 1024, generator=g).to(device)
        ddp.zero_grad(set_to_none=True)
        ddp(x).pow(2).mean().backward()


def check_spec(spec: str, device: torch.device, steps: int) -> dict:
    ddp = torch.nn.parallel.DistributedDataParallel(
        _model(device), device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=1
    )
    state, hook = _state_and_hook(spec)
    ddp.register_comm_hook(state, hook)
    _steps(ddp, device, 0, 2)  # warm-up: lazily built tables and the first DDP layout
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    syncs: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        shown = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchronizing" in str(message):
                syncs.append((threading.current_thread().name, str(message).splitlines()[0][:160]))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            _steps(ddp, device, 2, steps)
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
                torch.cuda.synchronize(device)
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
            warnings.showwarning = shown
    backward = [s for s in syncs if s[0] != COMM_THREAD]
    return {
        "syncs_on_backward_threads": len(backward),
        "syncs_on_comm_thread_per_step": sum(1 for s in syncs if s[0] == COMM_THREAD) / steps,
        "first_backward_syncs": backward[:5],
        "finite": all(bool(torch.isfinite(p.grad).all()) for p in ddp.parameters()),
    }


def _init(device_type: str) -> torch.device:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    if device_type == "cuda":
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", rank=0, world_size=1)
    return device


def _child(specs: list[str], steps: int, device_type: str, out: Path) -> None:
    """One process: every spec's check (``--sanitizer`` runs this under TORCH_CUDA_SANITIZER=1)."""
    device = _init(device_type)
    report = {}
    for spec in specs:
        try:
            report[spec] = check_spec(spec, device, steps)
        except Exception:  # one spec's failure is reported; the others still run
            report[spec] = {"error": traceback.format_exc()}
    out.write_text(json.dumps(report, indent=2))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--specs", nargs="+", default=DEFAULT_SPECS)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.specs, args.steps, args.device, args.child)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_nccl_check: no CUDA device visible (torch.cuda.is_available() is False)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs = {"plain": {}, "sanitizer": {"TORCH_CUDA_SANITIZER": "1"}} if args.device == "cuda" else {"plain": {}}
    results, failures = {}, []
    for name, extra_env in runs.items():
        out = args.out_dir / f"nccl_{name}.json"
        command = [sys.executable, __file__, str(args.out_dir), "--child", str(out), "--device", args.device,
                   "--steps", str(args.steps), "--specs", *args.specs]
        proc = subprocess.run(command, env=dict(os.environ, **extra_env), capture_output=True, text=True, timeout=400)
        (args.out_dir / f"nccl_{name}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or not out.exists():
            failures.append(f"{name} run exited with {proc.returncode}: {(proc.stdout + proc.stderr)[-600:]}")
            continue
        results[name] = json.loads(out.read_text())
        for spec, row in results[name].items():
            if "error" in row:
                failures.append(f"{name} {spec}: {row['error'].strip().splitlines()[-1]}")
            elif row["syncs_on_backward_threads"] and args.device == "cuda":
                failures.append(f"{name} {spec}: {row['syncs_on_backward_threads']} syncs on backward's threads, "
                                f"e.g. {row['first_backward_syncs'][:2]}")
            elif not row["finite"]:
                failures.append(f"{name} {spec}: non-finite gradients")
    summary = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
               "torch": torch.__version__, "runs": results, "failures": failures}
    (args.out_dir / "nccl_check.json").write_text(json.dumps(summary, indent=2))
    for spec in args.specs:
        row = results.get("plain", {}).get(spec, {})
        if "syncs_on_backward_threads" in row:
            print(f"{spec:26s} syncs on backward's threads {row['syncs_on_backward_threads']}, on {COMM_THREAD} "
                  f"{row['syncs_on_comm_thread_per_step']:.1f} per step")
    if failures:
        sys.exit("gpu_nccl_check FAILED:\n  " + "\n  ".join(failures))
    print(f"gpu_nccl_check: every hook passed on {args.device}" + (" (sync debug mode and CSAN)" if args.device == "cuda" else " (dry run)"))


if __name__ == "__main__":
    main()
