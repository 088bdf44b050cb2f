"""A user's training script, as torchrun runs it: DDP with small buckets, a commcomp hook, one rank
starting its backward late, then destroy_process_group() and exit (issue 22, i).

Environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (as torchrun sets them) and SPEC, the hook.
"""
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from _hook_fixtures import batch, small_model  # noqa: E402

from commcomp.hooks import hook_from_spec  # noqa: E402

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
ddp = DDP(small_model(), bucket_cap_mb=0.004)
state, hook = hook_from_spec(os.environ.get("SPEC", "rs-nuqsgd:4"), bucket_size=128, min_compression_numel=0)
ddp.register_comm_hook(state, hook)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
for step in range(4):
    x, y = batch(rank, step)
    if rank == 1:
        time.sleep(0.3)  # this rank's backward starts late: its peer's callbacks are still running
    opt.zero_grad()
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    opt.step()
dist.destroy_process_group()
