"""Datasets that ship inside Python packages, so nothing is downloaded at run time.

* :func:`load_digits_tensors`: scikit-learn's bundled 8x8 handwritten digits (1,797 images).
* :func:`load_mnist1d_tensors`: the ``mnist1d`` package's local generator (1-D signals, harder).

Both return a :class:`Split` of float32 inputs scaled to roughly unit range and int64 labels,
split deterministically by ``seed`` so every rank of a distributed run sees the same split.

Example::

    >>> from common.data import load_digits_tensors
    >>> train, test = load_digits_tensors(seed=0)
    >>> train.x.shape[1:], int(train.y.max())
    (torch.Size([1, 8, 8]), 9)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Split", "load_digits_tensors", "load_mnist1d_tensors", "load_dataset"]


@dataclass(frozen=True)
class Split:
    """Inputs ``x`` (float32) and labels ``y`` (int64) of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.y.max().item()) + 1


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[Split, Split]:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test_idx, train_idx = order[:n_test], order[n_test:]
    as_split = lambda idx: Split(  # noqa: E731
        torch.as_tensor(x[idx], dtype=torch.float32), torch.as_tensor(y[idx], dtype=torch.int64)
    )
    return as_split(train_idx), as_split(test_idx)


def load_digits_tensors(test_fraction: float = 0.25, seed: int = 0, flat: bool = False) -> tuple[Split, Split]:
    """scikit-learn's handwritten digits as ``(N, 1, 8, 8)`` images in [0, 1] (``(N, 64)`` if ``flat``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    x = x.reshape(len(x), 64) if flat else x[:, None, :, :]
    return _split(x, digits.target, test_fraction, seed)


def load_mnist1d_tensors(num_samples: int = 5000, seed: int = 0, test_fraction: float = 0.2) -> tuple[Split, Split]:
    """``mnist1d`` signals ``(N, 40)``, generated locally by the package (no download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
    x = np.concatenate([data["x"], data["x_test"]]).astype(np.float32)
    y = np.concatenate([data["y"], data["y_test"]])
    x = (x - x.mean()) / (x.std() + 1e-8)
    return _split(x, y, test_fraction, seed)


def load_dataset(name: str, seed: int = 0, flat: bool = False) -> tuple[Split, Split]:
    """Load ``"digits"`` or ``"mnist1d"`` by name."""
    if name == "digits":
        return load_digits_tensors(seed=seed, flat=flat)
    if name == "mnist1d":
        return load_mnist1d_tensors(seed=seed)
    raise ValueError(f"dataset must be 'digits' or 'mnist1d', got {name!r}")
