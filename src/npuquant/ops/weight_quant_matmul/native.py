"""CPU implementation of ``torch.ops.npuquant.weight_quant_batchmatmul``, composed of npuquant's native operators.

There is no dedicated C kernel for this op (the C sources are not touched by it). The CPU path
replaces the golden's anti-quantization step with the native dequantization operators where their
arithmetic is exactly the golden's, and shares the golden's float32 matmul and epilogue
(:func:`.reference.finish`), so the two agree bit for bit:

* bfloat16 / float32 activations, per-tensor or per-channel, int8 weight in either orientation
  or int32 words packed along n: ``torch.ops.npuquant.anti_quant`` — float32
  ``(w + offset) * scale`` and one round-half-to-even cast, the golden's rule.
* bfloat16 / float32 activations, int32 words packed along k (the transposed view of a
  ``(n, k/8)`` tensor), per-tensor, per-channel or per-group with ``G`` dividing k:
  ``torch.ops.npuquant.dequant_int4_grouped`` on the ``(n, k/8)`` words (the w4a16 layers' kernel).
* Everything else — float16 activations (two float16 roundings, which no native kernel does),
  int8 per-group weights, per-group int32 packed along n, batched int4 packed along k, the int64
  (fixpipe) scale mode — uses the golden's own anti-quantization.
"""

from __future__ import annotations

import torch

from ..anti_quant import native as anti_quant_native
from . import reference

__all__ = ["weight_quant_batchmatmul"]


def _native_antiquant(
    weight: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    x_dtype: torch.dtype,
    group_size: int,
    packed_along_k: bool,
) -> torch.Tensor | None:
    """The anti-quantized ``(*b, k, n)`` weight from a native kernel, or None where none fits."""
    if x_dtype not in (torch.bfloat16, torch.float32) or not weight.is_cpu:
        return None
    s = scale.to(torch.float32)
    o = None if offset is None else offset.to(torch.float32)
    if packed_along_k:
        if weight.dim() != 2:
            return None
        words = weight.transpose(-1, -2)  # (n, k/8), contiguous
        n, k = words.shape[0], words.shape[1] * 8
        if group_size:
            if k % group_size:
                return None
            groups = k // group_size
            s = s.reshape(groups, n).t()
            o = None if o is None else o.reshape(groups, n).t()
        else:
            s = s.reshape(1, -1).expand(n, 1) if s.numel() == 1 else s.reshape(n, 1)
            o = None if o is None else (o.reshape(1, -1).expand(n, 1) if o.numel() == 1 else o.reshape(n, 1))
        out = anti_quant_native.dequant_int4_grouped(
            words.contiguous(), s.contiguous(), None if o is None else o.contiguous(), x_dtype
        )
        return out.t()
    if group_size:
        return None
    s = s.reshape(-1)
    o = None if o is None else o.reshape(-1)
    return anti_quant_native.anti_quant(weight, s, o, x_dtype)


def weight_quant_batchmatmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    antiquant_scale: torch.Tensor,
    antiquant_offset: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    quant_offset: torch.Tensor | None,
    bias: torch.Tensor | None,
    group_size: int,
    packed_along_k: bool,
) -> torch.Tensor:
    """Same contract and result as :func:`.reference.weight_quant_batchmatmul`."""
    w16 = None
    if antiquant_scale.dtype != torch.int64:
        w16 = _native_antiquant(weight, antiquant_scale, antiquant_offset, x.dtype, group_size, packed_along_k)
    if w16 is None:
        return reference.weight_quant_batchmatmul(
            x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, group_size, packed_along_k
        )
    return reference.finish(x, w16, bias, quant_scale, quant_offset)
