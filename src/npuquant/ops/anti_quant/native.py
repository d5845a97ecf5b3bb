"""Native CPU kernels for anti-quantization (csrc/anti_quant.c) as torch operators.

The operators are registered by csrc/torch_ops.cpp; ``__init__`` wires their fake kernels and
references. Bit-identical to :mod:`.reference`: float32 ``(x + offset) * scale`` in that order,
one round-half-to-even cast. NaN outputs match PyTorch's own CPU casts: float16 keeps sign and
payload (F16C semantics, which torch uses); bfloat16 NaN is :data:`BF16_NAN_BITS`, the pattern
this torch build's cast writes (probed once at load, used by every kernel).
"""

from __future__ import annotations

import torch

from ... import _native

__all__ = ["OUT_DTYPES", "BF16_NAN_BITS", "anti_quant", "dequant_int4_grouped"]

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # what the kernels write
BF16_NAN_BITS = _native.BF16_NAN_BITS

# The C++ operators themselves (CPU tensors only; no fallback, no force_reference).
anti_quant = torch.ops.npuquant.anti_quant.default
dequant_int4_grouped = torch.ops.npuquant.dequant_int4_grouped.default
