"""Native CPU kernel for per-token dynamic quantization (csrc/dynamic_quant.c) as a torch operator.

``dynamic_quant(x, smooth_scales, group_index, asymmetric, int4) -> (y, scale, offset)`` (offset
empty when symmetric), registered by csrc/torch_ops.cpp. x is read in place through its strides
(leading dims coalesced; a last-dim stride other than 1 is gathered row by row inside the kernel),
so non-contiguous inputs cost no full copy.
"""

from __future__ import annotations

import torch

__all__ = ["dynamic_quant"]

dynamic_quant = torch.ops.npuquant.dynamic_quant.default
