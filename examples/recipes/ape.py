"""APE (Rosenfeld et al., arXiv 2210.03927): align *frozen* pretrained image and text encoders.

The encoders never train: their features are computed once. Two small residual-MLP heads map
them into a shared space, trained with the symmetric InfoNCE loss
(:func:`recipes.contrastive.info_nce_loss`) and a learnable temperature. Zero-shot
classification then compares an image embedding with the embeddings of class prompts.

The paper's second point is data: a small alignment set *curated* for the downstream task beats
the same amount of generic data. :func:`curate_by_relevance` implements a simple curation: keep
the pairs whose caption (in the frozen text encoder's space) is closest to some class prompt.

* :class:`ResidualMLPHead`, :class:`APEHeads`
* :func:`extract_features` (frozen, batched, no grad), :func:`count_parameters`
* :func:`class_embeddings`, :func:`zero_shot_accuracy`
* :func:`curate_by_relevance`, :func:`synthetic_shapes` (off-task pairs for a mixed data pool)

Example::

    >>> import torch
    >>> from recipes.ape import APEHeads, class_embeddings, zero_shot_accuracy
    >>> from recipes.contrastive import info_nce_loss
    >>> heads = APEHeads(image_dim=64, text_dim=384, embed_dim=32)
    >>> img_f, txt_f = torch.randn(8, 64), torch.randn(8, 384)
    >>> zi, zt, scale = heads(img_f, txt_f)
    >>> loss = info_nce_loss(zi, zt, scale)
    >>> loss.backward()
    >>> classes = class_embeddings(heads, torch.randn(3 * 2, 384), templates_per_class=2)
    >>> 0.0 <= zero_shot_accuracy(zi, classes, torch.zeros(8, dtype=torch.long)) <= 1.0
    True
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ResidualMLPHead",
    "APEHeads",
    "extract_features",
    "count_parameters",
    "class_embeddings",
    "zero_shot_accuracy",
    "curate_by_relevance",
    "synthetic_shapes",
]


class ResidualMLPHead(nn.Module):
    """``Linear(in, out)`` then ``depth`` pre-norm residual blocks ``x + W2 GELU(W1 LN(x))``.

    Starting from a projection and adding residual corrections keeps the head close to linear at
    initialization (the second layer of each block starts at zero), which trains quickly and
    stably on frozen features.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, depth: int = 2) -> None:
        super().__init__()
        for name, v in (("in_dim", in_dim), ("out_dim", out_dim)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        hidden = hidden or 2 * out_dim
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Sequential(nn.LayerNorm(out_dim), nn.Linear(out_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)
            self.blocks.append(block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for block in self.blocks:
            x = x + block(x)
        return x


class APEHeads(nn.Module):
    """The trainable part of APE: an image head, a text head and the log inverse temperature.

    ``forward(image_features, text_features)`` returns the two unit-norm embeddings and the logit
    scale, so a DDP wrapper sees every parameter used in its forward.
    """

    def __init__(
        self, image_dim: int, text_dim: int, embed_dim: int = 64, depth: int = 2, init_temperature: float = 0.07
    ) -> None:
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.image_head = ResidualMLPHead(image_dim, embed_dim, depth=depth)
        self.text_head = ResidualMLPHead(text_dim, embed_dim, depth=depth)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def logit_scale(self, max_scale: float = 100.0) -> torch.Tensor:
        """``exp(log_scale)``, capped (as CLIP does) so the logits cannot blow up."""
        return self.log_scale.exp().clamp(max=max_scale)

    def encode_image(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_head(features), dim=-1)

    def encode_text(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_head(features), dim=-1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_image(image_features), self.encode_text(text_features), self.logit_scale()


@torch.no_grad()
def extract_features(
    encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Run a frozen ``encoder`` over ``x`` in batches (eval mode for modules), on ``x``'s device."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = getattr(encoder, "training", None)
    if isinstance(encoder, nn.Module):
        encoder.eval()
    try:
        return torch.cat([encoder(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).detach()
    finally:
        if isinstance(encoder, nn.Module) and was_training:
            encoder.train()


def count_parameters(module: nn.Module | None, trainable: bool | None = None) -> int:
    """Number of parameters (``trainable=True``/``False`` filters on ``requires_grad``)."""
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


@torch.no_grad()
def class_embeddings(heads: APEHeads, prompt_features: torch.Tensor, templates_per_class: int = 1) -> torch.Tensor:
    """``(C, d)`` zero-shot classifier: the normalized mean embedding of each class's prompts.

    ``prompt_features`` holds text-encoder features of the prompts, class-major
    (``templates_per_class`` consecutive rows per class).
    """
    if templates_per_class < 1 or prompt_features.shape[0] % templates_per_class:
        raise ValueError(
            f"prompt_features rows ({prompt_features.shape[0]}) must be a multiple of templates_per_class "
            f"({templates_per_class})"
        )
    z = heads.encode_text(prompt_features)
    z = z.view(-1, templates_per_class, z.shape[-1]).mean(dim=1)
    return F.normalize(z, dim=-1)


@torch.no_grad()
def zero_shot_accuracy(image_embeddings: torch.Tensor, class_embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of ``argmax_c <image, class_c>`` against ``labels`` (indices into the classes)."""
    if labels.shape != (image_embeddings.shape[0],):
        raise ValueError(f"labels must have shape ({image_embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= class_embeddings.shape[0]):
        raise ValueError(f"labels must index the {class_embeddings.shape[0]} classes")
    pred = (image_embeddings @ class_embeddings.t()).argmax(dim=1)
    return float((pred == labels).float().mean()) if labels.numel() else float("nan")


def curate_by_relevance(
    candidate_text: torch.Tensor, prompt_text: torch.Tensor, budget: int, prompts_per_class: int | None = None
) -> torch.Tensor:
    """Indices of ``budget`` candidates whose caption features are most similar (cosine) to the
    task prompts -- curation with the frozen text encoder only, no labels needed.

    With ``prompts_per_class`` (prompts class-major, that many per class) the selection is
    balanced: each candidate is assigned to its closest class and every class gets an equal share
    of the budget (its most similar candidates), so one easy class cannot crowd out the others.
    """
    if not 1 <= budget <= candidate_text.shape[0]:
        raise ValueError(f"budget must be in [1, {candidate_text.shape[0]}], got {budget}")
    sim = F.normalize(candidate_text, dim=-1) @ F.normalize(prompt_text, dim=-1).t()
    if prompts_per_class is None:
        return sim.max(dim=1).values.topk(budget).indices.sort().values
    if prompts_per_class < 1 or prompt_text.shape[0] % prompts_per_class:
        raise ValueError(f"prompt rows ({prompt_text.shape[0]}) must be a multiple of prompts_per_class ({prompts_per_class})")
    per_class = sim.view(sim.shape[0], -1, prompts_per_class).mean(dim=2)  # (N, C)
    best, cls = per_class.max(dim=1)
    n_classes = per_class.shape[1]
    # Rank each candidate within its class, then take rank 0 of every class, rank 1 of every
    # class, ...: an even split that still fills the budget when a class runs out.
    rank_in_class = torch.empty_like(cls)
    for c in range(n_classes):
        members = torch.nonzero(cls == c).flatten()
        rank_in_class[members[best[members].argsort(descending=True)]] = torch.arange(len(members))
    chosen = (rank_in_class * n_classes + cls).argsort()[:budget]
    return chosen.sort().values


_SHAPES = ("horizontal bar", "vertical bar", "square outline", "filled square", "diagonal line", "cross", "dot")
_PLACES = ("at the top", "at the bottom", "on the left", "on the right", "in the middle")


def synthetic_shapes(n: int, size: int = 8, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """``n`` off-task image-caption pairs: simple shapes ("a vertical bar on the left") drawn on a
    ``size x size`` canvas in [0, 1], with intensity jitter. A stand-in for the generic web pairs
    that make up most of an uncurated alignment pool."""
    if n < 1 or size < 6:
        raise ValueError(f"need n >= 1 and size >= 6, got n={n}, size={size}")
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, size, size), dtype=np.float32)
    captions = []
    c = size // 2
    for i in range(n):
        shape = int(rng.integers(len(_SHAPES)))
        place = int(rng.integers(len(_PLACES)))
        r0, c0 = {0: (1, c - 1), 1: (size - 3, c - 1), 2: (c - 1, 1), 3: (c - 1, size - 3), 4: (c - 1, c - 1)}[place]
        img = images[i, 0]
        name = _SHAPES[shape]
        if name == "horizontal bar":
            img[r0, max(0, c0 - 2) : c0 + 4] = 1
        elif name == "vertical bar":
            img[max(0, r0 - 2) : r0 + 4, c0] = 1
        elif name == "square outline":
            img[r0 : r0 + 3, c0 : c0 + 3] = 1
            img[r0 + 1, c0 + 1] = 0
        elif name == "filled square":
            img[r0 : r0 + 3, c0 : c0 + 3] = 1
        elif name == "diagonal line":
            for k in range(3):
                img[min(size - 1, r0 + k), min(size - 1, c0 + k)] = 1
        elif name == "cross":
            img[r0 + 1, c0 : c0 + 3] = 1
            img[r0 : r0 + 3, c0 + 1] = 1
        else:
            img[r0 + 1, c0 + 1] = 1
        img *= rng.uniform(0.5, 1.0)
        captions.append(f"a {name} {_PLACES[place]}")
    return torch.from_numpy(images), captions
