"""Small models for the packaged datasets (8x8 digits, mnist1d) and for linear-network studies.

* :class:`MLP`: flattens its input; hidden widths and activation are arguments
  (``activation=None`` gives a deep *linear* network).
* :class:`DigitsCNN`: two 3x3 convolutions + two linear layers for ``(N, C, 8, 8)`` images.
* :class:`Conv1dNet`: the same shape of network for 1-D signals ``(N, L)`` or ``(N, C, L)`` (mnist1d).
* :class:`LinearCircularConvNet`: a two-layer *linear* network whose first layer is a full-size
  circular convolution (Gunasekar et al., 2018), one output logit.

Every model returns logits; a ``num_classes=1`` model returns shape ``(N,)`` for binary labels.

Example::

    >>> import torch
    >>> from common.models import DigitsCNN, MLP
    >>> DigitsCNN()(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> MLP(40, hidden=(64,), num_classes=10)(torch.rand(2, 40)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["MLP", "DigitsCNN", "Conv1dNet", "LinearCircularConvNet"]

Activation = Callable[[], nn.Module]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _squeeze_binary(logits: Tensor, num_classes: int) -> Tensor:
    return logits.squeeze(-1) if num_classes == 1 else logits


class MLP(nn.Module):
    """Fully connected network on flattened inputs.

    Args:
        in_features: size of one flattened input (64 for digits, 40 for mnist1d).
        hidden: widths of the hidden layers (empty: a linear classifier).
        num_classes: outputs; ``1`` gives one logit per sample, shape ``(N,)``.
        activation: factory for the nonlinearity, or ``None`` for a deep linear network.
        bias: whether linear layers have biases.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (128,),
        num_classes: int = 10,
        activation: Activation | None = nn.ReLU,
        bias: bool = True,
    ) -> None:
        super().__init__()
        _check_positive(in_features=in_features, num_classes=num_classes)
        for i, width in enumerate(hidden):
            _check_positive(**{f"hidden[{i}]": width})
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = in_features
        for width in hidden:
            layers.append(nn.Linear(width_in, width, bias=bias))
            if activation is not None:
                layers.append(activation())
            width_in = width
        layers.append(nn.Linear(width_in, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return _squeeze_binary(self.net(x), self.num_classes)


class DigitsCNN(nn.Module):
    """``conv3x3(width) - ReLU - conv3x3(2 width, stride 2) - ReLU - linear(hidden) - ReLU - linear``.

    Sized for 8x8 digits (about 45k parameters at the defaults); ``image_size`` must be even.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 64, image_size: int = 8
    ) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, num_classes=num_classes, width=width, hidden=hidden)
        if image_size < 2 or image_size % 2:
            raise ValueError(f"image_size must be an even integer >= 2, got {image_size}")
        side = image_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(2 * width * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return _squeeze_binary(self.classifier(self.features(x)), self.num_classes)


class Conv1dNet(nn.Module):
    """1-D analogue of :class:`DigitsCNN` for signals ``(N, L)`` or ``(N, C, L)`` (mnist1d: L=40)."""

    def __init__(
        self, length: int = 40, in_channels: int = 1, num_classes: int = 10, width: int = 16, hidden: int = 64
    ) -> None:
        super().__init__()
        _check_positive(length=length, in_channels=in_channels, num_classes=num_classes, width=width, hidden=hidden)
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
        )
        out_len = (length - 1) // 2 + 1
        self.classifier = nn.Sequential(nn.Linear(2 * width * out_len, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return _squeeze_binary(self.classifier(self.features(x)), self.num_classes)


class LinearCircularConvNet(nn.Module):
    """Two-layer linear network ``f(x) = <w2, w1 (*) x>`` with ``(*)`` full-size circular convolution.

    Input ``(N, H, W)`` or ``(N, 1, H, W)`` (or ``(N, L)`` with ``shape=(L,)``); one logit per sample.
    The end-to-end predictor is linear, ``f(x) = <beta, x>`` with ``F beta ∝ conj(F w1) * F w2``
    in the DFT domain; gradient descent on separable data drives it towards a minimum
    Fourier-L1 norm (maximum Fourier-L-inf margin) solution (Gunasekar et al., 2018).

    Args:
        shape: spatial shape of one input, ``(H, W)`` or ``(L,)``.
        init_scale: standard deviation of the initial weights.
    """

    def __init__(self, shape: Sequence[int], init_scale: float = 0.01) -> None:
        super().__init__()
        if len(shape) not in (1, 2):
            raise ValueError(f"shape must be (L,) or (H, W), got {tuple(shape)}")
        _check_positive(**{f"shape[{i}]": s for i, s in enumerate(shape)})
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.shape = tuple(int(s) for s in shape)
        self.kernel = nn.Parameter(init_scale * torch.randn(self.shape))
        self.readout = nn.Parameter(init_scale * torch.randn(self.shape))

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(-len(self.shape), 0))
        x = x.reshape((x.shape[0],) + self.shape)
        # Circular convolution is a product in the DFT domain (unnormalised transform).
        hidden = torch.fft.ifftn(torch.fft.fftn(x, dim=dims) * torch.fft.fftn(self.kernel), dim=dims).real
        return (hidden * self.readout).flatten(1).sum(dim=1)
