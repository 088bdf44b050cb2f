"""commcomp's hooks under PyTorch Lightning and accelerate, on 2 CPU (Gloo) ranks: the hook is
registered (both frameworks ignore a commcomp hook passed their own way on CPU), and training gives
bit for bit the parameters of a hand-written DDP loop with the same hook."""
import os
import subprocess
import sys

import pytest
import torch
from _dist import run_ranks
from _hook_fixtures import flat_params
from torch.nn.parallel import DistributedDataParallel as DDP

from commcomp.hooks import hook_from_spec, register_comm_hook

# Multi-rank hook tests: each runs on native Gloo and in NCCL's strict mode (tests/_strict_nccl.py).
pytestmark = pytest.mark.comm_modes

EPOCHS, BATCHES, BATCH = 2, 4, 16
SPEC_KWARGS = dict(bucket_size=64, min_compression_numel=0, seed=1)


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def _shard(rank):
    g = torch.Generator().manual_seed(rank)
    data = torch.utils.data.TensorDataset(torch.randn(BATCHES * BATCH, 64, generator=g),
                                          torch.randint(0, 10, (BATCHES * BATCH,), generator=g))
    return torch.utils.data.DataLoader(data, batch_size=BATCH)


def _launched_by_torchrun(rank, world):
    # what torchrun sets: both frameworks then join the process group _dist made
    os.environ.update(LOCAL_RANK=str(rank), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      NODE_RANK="0")


def _by_hand(rank, spec):
    """The reference: a plain DDP loop, hook registered by hand."""
    ddp = DDP(_net())
    state = register_comm_hook(ddp, spec, **SPEC_KWARGS)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(EPOCHS):
        for x, y in _shard(rank):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
    return flat_params(ddp.module), state.iteration, state.total_bytes_sent


def _lightning_module():
    import pytorch_lightning as pl

    class Net(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def training_step(self, batch, index):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return Net()


def _trainer(devices, callback, **kwargs):
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="cpu", devices=devices, callbacks=[callback], logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def _lightning(rank, world, runs):
    _launched_by_torchrun(rank, world)
    from commcomp.integrations import CommHookCallback

    out = []
    for spec, as_state in runs:  # a spec string, or a (state, hook) built beforehand
        callback = CommHookCallback(*hook_from_spec(spec, **SPEC_KWARGS)) if as_state else CommHookCallback(spec, **SPEC_KWARGS)
        trainer = _trainer(world, callback, strategy="ddp", max_epochs=EPOCHS, use_distributed_sampler=False)
        model = _lightning_module()
        trainer.fit(model, _shard(rank))
        state = callback.state
        out.append(((flat_params(model), state.iteration, state.total_bytes_sent), _by_hand(rank, spec)))
    return out


def _same_training(results):
    for per_run in zip(*results):
        for (params, iterations, sent), (want_params, want_iterations, want_sent) in per_run:
            assert iterations == EPOCHS * BATCHES == want_iterations  # every step went through the hook
            assert 0 < sent == want_sent < iterations * 4 * params.numel()  # compressed, not fp32
            assert torch.equal(params, want_params)
        assert torch.equal(per_run[0][0][0], per_run[1][0][0])  # and the ranks agree


def test_lightning_ddp_on_cpu_trains_with_the_hook():
    _same_training(run_ranks(_lightning, 2, [("rs-nuqsgd:4", False), ("qsgd:4:elias", True)], timeout=300))


def test_lightning_single_process_needs_no_hook():
    from commcomp.integrations import CommHookCallback

    callback = CommHookCallback("nuqsgd:4")
    _trainer(1, callback, max_steps=1).fit(_lightning_module(), _shard(0))
    assert callback.state is None  # no DDP, nothing on the wire
    with pytest.raises(ValueError, match="scheme must be one of"):
        CommHookCallback("zip:4")  # a bad spec fails before any rank starts
    with pytest.raises(ValueError, match="not both"):
        CommHookCallback("nuqsgd:4", hook=print)


def _accelerate(rank, world, specs):
    _launched_by_torchrun(rank, world)
    from accelerate import Accelerator

    from commcomp.integrations import accelerate_comm_hook

    out = []
    for spec in specs:
        accelerator = Accelerator(cpu=True)
        model = _net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        model, opt = accelerator.prepare(model, opt)
        state = accelerate_comm_hook(accelerator, model, spec, **SPEC_KWARGS)
        for _ in range(EPOCHS):
            for x, y in _shard(rank):
                opt.zero_grad()
                accelerator.backward(torch.nn.functional.cross_entropy(model(x), y))
                opt.step()
        out.append(((flat_params(model.module), state.iteration, state.total_bytes_sent), _by_hand(rank, spec)))
    return out


def test_accelerate_multi_cpu_trains_with_the_hook():
    _same_training(run_ranks(_accelerate, 2, ["rs-qsgd:3:elias", "allreduce-qsgd:4"], timeout=300))


def test_accelerate_single_process_and_bad_arguments():
    from accelerate import Accelerator

    from commcomp.integrations import accelerate_comm_hook

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(_net())
    assert accelerate_comm_hook(accelerator, model, "nuqsgd:4") is None  # one process: no DDP, no wire
    with pytest.raises(ValueError, match="must be an accelerate.Accelerator"):
        accelerate_comm_hook(object(), model, "nuqsgd:4")


def test_register_comm_hook_refuses_what_is_not_ddp():
    with pytest.raises(ValueError, match="needs a torch.nn.parallel.DistributedDataParallel model"):
        register_comm_hook(torch.nn.Linear(2, 2), "nuqsgd:4")


def test_integrations_import_without_the_frameworks():
    # a fresh interpreter where neither framework can be imported
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('pytorch_lightning', 'lightning', 'accelerate'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import commcomp.integrations as integrations\n"
        "assert callable(integrations.accelerate_comm_hook)\n"
        "try:\n"
        "    integrations.CommHookCallback\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install pytorch-lightning" in out.stdout
