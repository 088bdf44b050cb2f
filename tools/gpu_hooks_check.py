"""The commcomp DDP hooks on CUDA tensors: two Gloo ranks sharing one GPU (NCCL refuses two ranks on
one device), each hook spec for a few iterations on CUDA and then on the CPU with the same data.

Checks, per spec and iteration: both ranks hold the same averaged gradient, it is finite, it is
within ``--max-rel-error`` of the exact fp32 average, and the CUDA run's gradient equals the CPU
run's bit for bit (the kernels are bit-identical and the hooks deterministic). Writes
OUT_DIR/hooks_cuda.json; exits nonzero on any failed check. Run by tools/gpu_check.sh:

    python tools/gpu_hooks_check.py OUT_DIR [--specs nuqsgd:4 qsgd:8:elias] [--steps 3]
    python tools/gpu_hooks_check.py OUT_DIR --device cpu   # dry run of the checks without a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
# Low-variance schemes, so the distance to the exact average is a meaningful check in a few steps.
DEFAULT_SPECS = ["nuqsgd:4", "nuqsgd:4:elias", "qsgd:8:elias-omega", "allreduce-qsgd:8", "allreduce-nuqsgd:4"]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights on every rank and device
    return torch.nn.Sequential(torch.nn.Linear(2048, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))


def _batch(rank: int, step: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(64, 2048, generator=g).to(device)


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1).cpu() for p in model.parameters()])


def _run_hooked(spec: str, device: torch.device, rank: int, steps: int) -> tuple[list[torch.Tensor], float]:
    from commcomp.hooks import hook_from_spec

    model = _model().to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=0.25
    )
    # allreduce-qsgd:8 / -nuqsgd:4 sum int32 at 2 ranks (no saving): checked here for correctness
    wide = {"allow_wide_sums": True} if spec.startswith("allreduce-") else {}
    state, hook = hook_from_spec(spec, bucket_size=512, start_iter=0, **wide)
    ddp.register_comm_hook(state, hook)
    grads, start = [], time.perf_counter()
    for step in range(steps):
        ddp.zero_grad(set_to_none=True)
        ddp(_batch(rank, step, device)).pow(2).mean().backward()
        grads.append(_flat_grad(model))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return grads, (time.perf_counter() - start) / steps


def _exact_average(rank: int, world: int, steps: int) -> list[torch.Tensor]:
    model, out = _model(), []
    for step in range(steps):
        model.zero_grad(set_to_none=True)
        model(_batch(rank, step, torch.device("cpu"))).pow(2).mean().backward()
        g = _flat_grad(model)
        dist.all_reduce(g)
        out.append(g / world)
    return out


def _rank(
    rank: int, world: int, port: int, specs: list[str], steps: int, out_dir: str, device_type: str
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(2)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if device_type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    report = {}
    try:
        exact = _exact_average(rank, world, steps)
        for spec in specs:
            try:
                cuda, cuda_s = _run_hooked(spec, device, rank, steps)
                cpu, cpu_s = _run_hooked(spec, torch.device("cpu"), rank, steps)
                gathered = [torch.empty_like(cuda[-1]) for _ in range(world)]
                dist.all_gather(gathered, cuda[-1])
                report[spec] = {
                    "ranks_agree": all(torch.equal(g, gathered[0]) for g in gathered),
                    "finite": all(bool(torch.isfinite(g).all()) for g in cuda),
                    "cuda_equals_cpu": all(torch.equal(a, b) for a, b in zip(cuda, cpu)),
                    "rel_error_vs_exact": max(float((g - e).norm() / e.norm()) for g, e in zip(cuda, exact)),
                    "seconds_per_step_cuda": cuda_s,
                    "seconds_per_step_cpu": cpu_s,
                }
            except Exception:  # one spec's failure is reported; the others still run
                report[spec] = {"error": traceback.format_exc()}
    finally:
        Path(out_dir, f"hooks_rank{rank}.json").write_text(json.dumps(report, indent=2))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--specs", nargs="+", default=DEFAULT_SPECS)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--max-rel-error", type=float, default=0.75)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_hooks_check: no CUDA device visible (torch.cuda.is_available() is False)")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    mp.spawn(
        _rank,
        args=(args.world, _free_port(), args.specs, args.steps, str(args.out_dir), args.device),
        nprocs=args.world,
    )
    reports = [json.loads((args.out_dir / f"hooks_rank{r}.json").read_text()) for r in range(args.world)]
    failures = []
    for spec in args.specs:
        for rank, report in enumerate(reports):
            row = report.get(spec, {"error": "no result"})
            if "error" in row:
                failures.append(f"{spec} rank {rank}: {row['error'].strip().splitlines()[-1]}")
                continue
            for check in ("ranks_agree", "finite", "cuda_equals_cpu"):
                if not row[check]:
                    failures.append(f"{spec} rank {rank}: {check} is false")
            if not row["rel_error_vs_exact"] <= args.max_rel_error:
                failures.append(
                    f"{spec} rank {rank}: relative error {row['rel_error_vs_exact']:.3f} > {args.max_rel_error}"
                )
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    summary = {
        "device": args.device,
        "gpu": gpu,
        "torch": torch.__version__,
        "world": args.world,
        "backend": "gloo",
        "ranks": reports,
        "failures": failures,
    }
    (args.out_dir / "hooks_cuda.json").write_text(json.dumps(summary, indent=2))
    for spec in args.specs:
        row = reports[0].get(spec, {})
        if "rel_error_vs_exact" in row:
            print(
                f"{spec:24s} rel.err {row['rel_error_vs_exact']:.3f}  cuda==cpu {row['cuda_equals_cpu']}  "
                f"{1e3 * row['seconds_per_step_cuda']:.1f} ms/step (cuda)  {1e3 * row['seconds_per_step_cpu']:.1f} ms/step (cpu)"
            )
    if failures:
        sys.exit("gpu_hooks_check FAILED:\n  " + "\n  ".join(failures))
    print(f"gpu_hooks_check: all hooks passed on {args.device}")


if __name__ == "__main__":
    main()
