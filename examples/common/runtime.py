"""What every ``torchrun`` recipe in ``examples/`` shares: process group set-up, the
``--comm-hook`` flag, rank-0 progress bars and result files.

Example (inside a script launched with ``torchrun --nproc_per_node=2``)::

    import argparse, torch
    from common import runtime

    parser = argparse.ArgumentParser()
    runtime.add_common_arguments(parser)
    args = parser.parse_args()
    ctx = runtime.init_distributed()
    model = runtime.wrap_ddp(torch.nn.Linear(4, 2), ctx, args.comm_hook)
    for step in runtime.progress(range(10), ctx, desc="train"):
        ...
    runtime.write_json(args.out_dir, "result.json", {"loss": 0.1}, ctx)
    runtime.shutdown()
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "add_common_arguments",
    "init_distributed",
    "wrap_ddp",
    "progress",
    "write_json",
    "save_figure",
    "pyplot",
    "shutdown",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def add_common_arguments(parser: argparse.ArgumentParser, default_out_dir: str = "results") -> None:
    """Add ``--comm-hook``, ``--seed``, ``--out-dir`` and ``--device`` to a recipe's parser."""
    parser.add_argument(
        "--comm-hook",
        default="none",
        help="gradient compression hook spec, e.g. none (fp32), fp16, qsgd:4, nuqsgd:4:elias, "
        "rs-nuqsgd:4, allreduce-qsgd:4 (see commcomp.hooks.hook_from_spec)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed shared by all ranks")
    parser.add_argument("--out-dir", default=default_out_dir, help="where JSON and PNG results go")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (Gloo on CPU, NCCL on GPU).

    Without torchrun's environment the script runs as a single process, so every recipe also
    works with plain ``python examples/x.py``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:i]', got {device!r}")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but torch.cuda.is_available() is False")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    else:
        rank, world = 0, 1
        dev = torch.device("cuda") if use_cuda else torch.device("cpu")
    # Examples run on 2 CPU cores with several ranks; oversubscribing threads only slows them.
    if dev.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, world)))
    return DistContext(rank=rank, world_size=world, device=dev)


def wrap_ddp(model: torch.nn.Module, ctx: DistContext, comm_hook: str = "none", **hook_kwargs: Any) -> torch.nn.Module:
    """Move ``model`` to ``ctx.device``; under a process group wrap it in DDP and register the
    hook that ``comm_hook`` names (``"none"`` keeps PyTorch's fp32 allreduce)."""
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    # PyTorch's powerSGD_hook issues collectives from callbacks that can race between buckets on
    # Gloo (torch 2.13); one bucket avoids it.
    bucket_cap = {"bucket_cap_mb": 1e6} if comm_hook.startswith("powersgd") else {}
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None, **bucket_cap
    )
    if comm_hook != "none":
        from commcomp.hooks import hook_from_spec

        state, hook = hook_from_spec(comm_hook, process_group=None, **hook_kwargs)
        ddp.register_comm_hook(state, hook)
        ddp.commcomp_state = state  # exposed so recipes can report bytes on the wire
    return ddp


def progress(iterable: Iterable[T], ctx: DistContext, **tqdm_kwargs: Any) -> Iterator[T]:
    """A tqdm bar on rank 0 only; other ranks iterate silently."""
    if not ctx.is_main:
        return iter(iterable)
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, **tqdm_kwargs))


def write_json(out_dir: str | os.PathLike, name: str, payload: dict, ctx: DistContext | None = None) -> Path | None:
    """Write ``payload`` as indented JSON under ``out_dir`` (rank 0 only); return the path."""
    if ctx is not None and not ctx.is_main:
        return None
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))
    return path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend: recipes and benchmarks run without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, out_dir: str | os.PathLike, name: str, ctx: DistContext | None = None) -> Path | None:
    """Save a matplotlib figure as PNG under ``out_dir`` (rank 0 only) and close it."""
    plt = pyplot()
    if ctx is not None and not ctx.is_main:
        plt.close(fig)
        return None
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
