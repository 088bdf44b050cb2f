"""What the DDP hook tests share: a small model and deterministic per-rank batches."""
import torch


def small_model(seed: int = 0) -> torch.nn.Module:
    """64 -> 48 -> 10 with a tanh: 3130 parameters in 4 tensors, a few DDP buckets at small caps."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Tanh(), torch.nn.Linear(48, 10))


def batch(rank: int, step: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``rank``'s inputs and labels at ``step``: different on every rank and step."""
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(size, 64, generator=g), torch.randint(0, 10, (size,), generator=g)


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def train_steps(ddp: torch.nn.Module, opt: torch.optim.Optimizer, rank: int, first: int, last: int) -> None:
    """Steps ``first..last-1`` of cross-entropy training on rank ``rank``'s batches."""
    for step in range(first, last):
        x, y = batch(rank, step)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
