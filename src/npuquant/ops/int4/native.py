"""Native CPU kernels for int4 packing (csrc/int4.c) as torch operators (csrc/torch_ops.cpp).

Inputs may be strided: the kernels walk rows numbered by the leading dims (any strides) with an
element stride inside the row, so no contiguous copy is made. Outputs are contiguous. The pack
kernel finds the smallest and largest value in the same pass and raises for values outside [-8, 7].
"""

from __future__ import annotations

import torch

__all__ = ["pack_int4", "unpack_int4"]

unpack_int4 = torch.ops.npuquant.unpack_int4.default
pack_int4 = torch.ops.npuquant.pack_int4.default  # (values, name="values")
