"""Native CPU kernel for per-row / per-column dequantization (csrc/dequantize.c) as a torch operator.

Bit-identical to :mod:`.reference`: exact int -> float32, then ``+ zero_points`` (if any), then
``* scale``, in that order. One corner aside: where zero point and scale are both NaN the result
is NaN with either one's payload (torch itself picks one or the other depending on its loop).
x is read in place when its last dim has stride 1 (any row / batch strides: the strided tiles the
pypto front-end passes); other layouts are made contiguous first. The result is contiguous.
"""

from __future__ import annotations

import torch

__all__ = ["IN_DTYPES", "dequantize"]

IN_DTYPES = (torch.int8, torch.int16)  # what the kernel reads
dequantize = torch.ops.npuquant.dequantize.default  # (x, scale, zero_points, axis)
