"""commcomp: communication compression and robust aggregation for PyTorch distributed training.

Quantize gradients with QSGD, QSGDInf, NUQSGD or adaptive (ALQ/AMQ) level tables, put them on the
wire with fixed-width or Elias codecs, and aggregate them in DDP communication hooks.

Example::

    >>> import torch, commcomp
    >>> q = commcomp.NUQSGD(bits=4, bucket_size=512)
    >>> x = torch.randn(10_000)
    >>> x_hat = q.dequantize(q.quantize(x, seed=0))
    >>> bool(((x_hat - x).norm() / x.norm()) < 1.0)
    True
"""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C  # noqa: F401  (registers torch.ops.commcomp)
from . import codecs, ops
from .adaptive import ALQ, AMQ, UpdateSchedule
from .quantizers import NUQSGD, QSGD, FixedLevels, Levels, QSGDInf, QuantizedTensor, Quantizer, make_quantizer

__all__ = [
    "ops",
    "codecs",
    "Levels",
    "Quantizer",
    "QuantizedTensor",
    "QSGD",
    "QSGDInf",
    "NUQSGD",
    "FixedLevels",
    "ALQ",
    "AMQ",
    "UpdateSchedule",
    "make_quantizer",
]
__version__ = "0.1.0"
