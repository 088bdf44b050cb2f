"""Contrastive image-text losses whose negatives come from the *global* batch, and retrieval metrics.

* :func:`all_gather_with_grad`: concatenate a tensor from every rank, differentiably.
* :func:`hinge_triplet_loss`: VSE0 (sum of hinges) and VSE++ (max of hinges, i.e. the hardest
  negative in the batch) from Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with
  Hard Negatives".
* :func:`info_nce_loss`: symmetric InfoNCE (CLIP-style cross-entropy in both directions).
* :func:`recall_at_k` / :func:`retrieval_metrics`: R@K in both directions and rsum.

Every loss takes this rank's ``(n, d)`` image and text embeddings, gathers all ranks' embeddings
and scores the local rows against the global batch, so each rank pays ``n x N`` similarities and
the sum of the ranks' losses equals the single-process loss on the concatenated batch. Under DDP
(which averages gradients) the effective objective is therefore that global loss divided by the
world size.

Example (single process; under ``torchrun`` the same call uses all ranks' negatives)::

    >>> import torch
    >>> from recipes.contrastive import vse_loss, retrieval_metrics
    >>> img = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    >>> txt = torch.nn.functional.normalize(img + 0.1 * torch.randn(8, 16), dim=1)
    >>> float(vse_loss(img, txt, margin=0.2, hardest=True)) >= 0.0
    True
    >>> retrieval_metrics(img, txt)["rsum"] > 0
    True
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "all_gather_with_grad",
    "global_batch_offset",
    "hinge_triplet_loss",
    "vse_loss",
    "info_nce_loss",
    "recall_at_k",
    "retrieval_metrics",
    "DualEncoder",
]


def _world(group: Any = None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _gather_sizes(n: int, device: torch.device, group: Any) -> list[int]:
    """Every rank's batch size, in rank order."""
    world = dist.get_world_size(group)
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine, group=group)
    return [int(s.item()) for s in sizes]


class _AllGather(torch.autograd.Function):
    """Forward: concatenate every rank's rows. Backward: each rank's rows receive the sum, over
    ranks, of the gradient that rank's loss put on them (an all-reduce, then this rank's slice)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size(group)
        # Ranks may hold different batch sizes (a last partial batch); gather the sizes first and
        # pad, because all_gather needs equal shapes.
        counts = _gather_sizes(x.shape[0], x.device, group)
        padded = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        rank = dist.get_rank(group)
        ctx.group = group
        ctx.start = sum(counts[:rank])
        ctx.count = counts[rank]
        return torch.cat([p[:c] for p, c in zip(parts, counts)], dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.count], None


def all_gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` (``(n_r, ...)`` on rank ``r``) over ranks in rank order, keeping autograd.

    Gradients flow back to every rank's ``x``: rank ``r`` receives the sum over all ranks of the
    gradient their losses put on its rows. Without a process group this returns ``x`` itself.
    """
    if x.dim() < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    _, world = _world(group)
    if world == 1:
        return x
    return _AllGather.apply(x, group)


def global_batch_offset(n_local: int, device: torch.device | str = "cpu", group: Any = None) -> int:
    """Index of this rank's first row in the gathered batch (ranks' sizes may differ).

    ``device`` holds the small size tensor: it must suit the backend (CUDA for NCCL).
    """
    rank, world = _world(group)
    if world == 1:
        return 0
    return sum(_gather_sizes(n_local, torch.device(device), group)[:rank])


def _check_pair(a: torch.Tensor, b: torch.Tensor, names: tuple[str, str]) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must be matching (n, d) tensors, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def hinge_triplet_loss(
    scores: torch.Tensor,
    positives: torch.Tensor,
    margin: float = 0.2,
    hardest: bool = False,
    not_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-query hinge loss ``[margin - s(q, p) + s(q, n)]_+`` over the negatives ``n`` of each row.

    Args:
        scores: ``(n, N)`` similarities of ``n`` queries to ``N`` candidates.
        positives: ``(n,)`` column of each query's positive candidate.
        margin: the hinge margin (VSE++ uses 0.2).
        hardest: ``False`` sums the hinges over all negatives (VSE0); ``True`` keeps only the
            hardest negative, the max of the hinges (VSE++).
        not_negative: optional ``(n, N)`` bool of candidates to exclude from the negatives
            besides the positive, e.g. other captions of the same image. The hardest-negative loss
            needs this: a duplicate of the positive would be its "hardest negative" forever.

    Returns:
        ``(n,)`` losses, one per query.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (n, N), got shape {tuple(scores.shape)}")
    if positives.shape != (scores.shape[0],):
        raise ValueError(f"positives must have shape ({scores.shape[0]},), got {tuple(positives.shape)}")
    if not_negative is not None and not_negative.shape != scores.shape:
        raise ValueError(f"not_negative must have shape {tuple(scores.shape)}, got {tuple(not_negative.shape)}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    rows = torch.arange(scores.shape[0], device=scores.device)
    pos = scores[rows, positives].unsqueeze(1)
    hinge = (margin + scores - pos).clamp(min=0.0)
    # The positive itself is not a negative: mask it out (its hinge would be exactly `margin`).
    excluded = torch.zeros_like(scores, dtype=torch.bool) if not_negative is None else not_negative.bool().clone()
    excluded[rows, positives] = True
    hinge = hinge.masked_fill(excluded, 0.0)
    return hinge.max(dim=1).values if hardest else hinge.sum(dim=1)


def _local_scores(a: torch.Tensor, b: torch.Tensor, group: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores of local ``a`` rows vs global ``b`` and local ``b`` rows vs global ``a``, plus the
    column of each local row's positive."""
    a_all = all_gather_with_grad(a, group)
    b_all = all_gather_with_grad(b, group)
    offset = global_batch_offset(a.shape[0], a.device, group)
    positives = torch.arange(a.shape[0], device=a.device) + offset
    return a @ b_all.t(), b @ a_all.t(), positives


def vse_loss(
    img: torch.Tensor,
    txt: torch.Tensor,
    margin: float = 0.2,
    hardest: bool = True,
    reduction: str = "sum",
    pair_ids: torch.Tensor | None = None,
    group: Any = None,
) -> torch.Tensor:
    """VSE0 / VSE++ loss of matched ``(n, d)`` image and caption embeddings (row ``i`` pairs).

    Both directions count: each image against all captions of the global batch and each caption
    against all images. Embeddings are used as given (normalize them for cosine similarity, as
    VSE++ does). ``reduction`` is ``"sum"`` (the paper's) or ``"mean"`` over local pairs.
    ``pair_ids`` (``(n,)`` ints) marks interchangeable pairs: rows with the same id are not
    negatives of each other (see ``not_negative`` in :func:`hinge_triplet_loss`).
    ``group`` is the process group (default: the world).
    """
    _check_pair(img, txt, ("img", "txt"))
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    s_i2t, s_t2i, positives = _local_scores(img, txt, group)
    same = None
    if pair_ids is not None:
        if pair_ids.shape != (img.shape[0],):
            raise ValueError(f"pair_ids must have shape ({img.shape[0]},), got {tuple(pair_ids.shape)}")
        same = pair_ids[:, None] == all_gather_with_grad(pair_ids, group)[None, :]
    per_pair = hinge_triplet_loss(s_i2t, positives, margin, hardest, same) + hinge_triplet_loss(
        s_t2i, positives, margin, hardest, same
    )
    return per_pair.sum() if reduction == "sum" else per_pair.mean()


def info_nce_loss(
    img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor | float, group: Any = None
) -> torch.Tensor:
    """Symmetric InfoNCE: the mean of image->text and text->image cross-entropy over local pairs,
    with logits ``logit_scale * <img_i, txt_j>`` against the global batch.

    ``logit_scale`` is the inverse temperature (pass ``log_scale.exp()`` of a learnable
    parameter to learn it).
    """
    _check_pair(img, txt, ("img", "txt"))
    s_i2t, s_t2i, positives = _local_scores(img, txt, group)
    return 0.5 * (
        F.cross_entropy(logit_scale * s_i2t, positives) + F.cross_entropy(logit_scale * s_t2i, positives)
    )


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Fraction of queries (rows) with a relevant candidate among their top ``k``.

    A query's rank is the number of non-relevant candidates scoring at least as high as its best
    relevant one, so ties count against the query (constant scores cannot look good).

    Args:
        scores: ``(Q, N)`` query-candidate similarities.
        relevant: ``(Q, N)`` bool, which candidates are correct for each query (at least one each).
        ks: cut-offs.
    """
    if scores.dim() != 2 or relevant.shape != scores.shape:
        raise ValueError(
            f"scores and relevant must be matching (Q, N) tensors, got {tuple(scores.shape)} and "
            f"{tuple(relevant.shape)}"
        )
    relevant = relevant.bool()
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("relevant must mark at least one candidate per query")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {list(ks)}")
    best_relevant = scores.masked_fill(~relevant, float("-inf")).max(dim=1, keepdim=True).values
    rank = ((scores >= best_relevant) & ~relevant).sum(dim=1)
    return {int(k): float((rank < k).float().mean()) for k in ks}


@torch.no_grad()
def retrieval_metrics(
    img: torch.Tensor, txt: torch.Tensor, groups: torch.Tensor | None = None, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image->text and text->image R@K (in percent) and their sum ``rsum``.

    Row ``i`` of ``img`` and ``txt`` form a pair. ``groups`` (``(n,)`` ints) marks captions that
    are interchangeable: caption ``j`` counts as correct for image ``i`` when
    ``groups[i] == groups[j]`` (default: only its own caption).
    """
    _check_pair(img, txt, ("img", "txt"))
    n = img.shape[0]
    if groups is None:
        relevant = torch.eye(n, dtype=torch.bool, device=img.device)
    else:
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {tuple(groups.shape)}")
        relevant = groups[:, None] == groups[None, :]
    scores = img @ txt.t()
    i2t = recall_at_k(scores, relevant, ks)
    t2i = recall_at_k(scores.t(), relevant.t(), ks)
    out = {f"i2t_r{k}": 100.0 * v for k, v in i2t.items()}
    out.update({f"t2i_r{k}": 100.0 * v for k, v in t2i.items()})
    out["rsum"] = sum(out.values())
    return out


class DualEncoder(nn.Module):
    """Two encoders into one space: ``forward(images, texts)`` returns their unit-norm embeddings.

    One module, so a single DDP wrapper (and one compression hook) covers both towers.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.image_encoder(images), dim=-1), F.normalize(self.text_encoder(texts), dim=-1)
