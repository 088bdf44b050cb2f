"""Where a hook's time goes inside one DDP step: when each bucket's body runs and its future
completes, measured from the start of backward, next to the same step with no communication.

    python benchmarks/hook_timeline.py rs-qsgd:4 local --steps 12

Runs 2 Gloo ranks on 127.0.0.1 (unshaped), ResNet-18 as in ``bench_ddp.py``, one torch thread per
rank, and prints rank 0's last step for each spec: forward, backward and optimizer times, then per
bucket the body's start..end and the moment its future completed. ``local`` is the compute-only
reference (the hook hands the bucket back untouched).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ddp  # noqa: E402


def _rank(rank: int, world: int, spec: str, steps: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    ddp = torch.nn.parallel.DistributedDataParallel(bench_ddp.resnet18())
    state, hook = bench_ddp.make_hook(spec)
    events: list[tuple] = []

    def timed(st, bucket):  # no annotations: DDP checks them, and they would be strings here
        start = time.perf_counter()
        fut = hook(st, bucket)
        events.append(("body", bucket.index(), bucket.buffer().numel(), start, time.perf_counter()))
        fut.add_done_callback(lambda _: events.append(("done", bucket.index(), 0, time.perf_counter(), 0.0)))
        return fut

    if hook is not None:
        ddp.register_comm_hook(state, timed)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.005, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    for _ in range(steps):
        events.clear()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
    if rank == 0:
        lines = [f"{spec}: forward {1e3 * (t1 - t0):.0f} ms, backward {1e3 * (t2 - t1):.0f} ms, optimizer {1e3 * (t3 - t2):.0f} ms"]
        for kind, index, numel, a, b in events:
            if kind == "body":
                lines.append(f"  bucket {index} ({numel} elements): body {1e3 * (a - t1):.0f}..{1e3 * (b - t1):.0f} ms")
            else:
                lines.append(f"  bucket {index}: future done at {1e3 * (a - t1):.0f} ms")
        queue.put("\n".join(lines))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+", help="bench_ddp contender specs, e.g. rs-qsgd:4 local")
    parser.add_argument("--steps", type=int, default=12, help="steps per spec; the last one is printed")
    parser.add_argument("--port", type=int, default=29579)
    args = parser.parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    ctx = mp.get_context("spawn")
    for k, spec in enumerate(args.specs):
        bench_ddp.contender_for(spec)  # a clear error for a bad spec, before spawning
        queue = ctx.Queue()
        mp.start_processes(_rank, args=(2, spec, args.steps, args.port + k, queue), nprocs=2, start_method="spawn")
        print(queue.get(timeout=60))
    print(f"load average: {' '.join(open('/proc/loadavg').read().split()[:3])}")


if __name__ == "__main__":
    main()
