"""CPU implementation of ``torch.ops.npuquant.weight_quant_batchmatmul``, composed of npuquant's native operators.

There is no dedicated C kernel for this op (the C sources are not touched by it). The CPU path
replaces the golden's anti-quantization step with the native dequantization operators where their
arithmetic is exactly the golden's, and shares the golden's float32 matmul and epilogue
(:func:`.reference.finish`), so the two agree bit for bit:

* ``torch.ops.npuquant.dequant_affine`` for int8 weights in either orientation, int32 words packed
  along n or along k (the transposed view of ``(n, k/8)``), per tensor, per channel, or per group of
  ``G`` rows of k (2-D weights): bfloat16 / float32 activations with float32 ``(w + offset) * scale``
  and one round-half-to-even cast, float16 activations with its ``half_steps`` (float16 arithmetic:
  the sum rounded to float16 before the multiply), the golden's rules.
* Everything else — batched per-group weights, the int64 (fixpipe) scale mode — uses the golden's
  own anti-quantization.
"""

from __future__ import annotations

import torch

from ..dequant_affine import dequant_affine
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
    """The anti-quantized ``(*b, k, n)`` weight from the native affine dequantization, or None where
    it does not fit. The scale's shape is the granularity: ``(1,)`` per tensor, ``(n,)`` / ``(1, n)``
    per channel, ``(k / G, n)`` per group of G rows of k; words packed along k are dequantized in
    their own ``(n, k/8)`` layout with the scale transposed to ``(n, groups)``, then transposed back
    (a view)."""
    if not weight.is_cpu or scale.dim() > 2:
        return None
    half = x_dtype == torch.float16  # the golden's float16 arithmetic on float16 parameters
    if half:
        scale = scale.to(torch.float16)
        offset = None if offset is None else offset.to(torch.float16)
    k = weight.shape[-2] * (8 if packed_along_k else 1)
    if group_size and k % group_size:  # a partial last group: the kernel's blocks are equal
        return None
    if packed_along_k:
        if weight.dim() != 2:
            return None
        words = weight.transpose(-1, -2)  # (n, k/8)
        n = words.shape[0]
        if scale.numel() > 1:  # (groups, n) or (n,): one block per row of words and group
            scale = scale.reshape(-1, n).t()
            offset = None if offset is None else offset.reshape(-1, n).t()
        return dequant_affine(words, scale, offset, x_dtype, half).t()
    if group_size and weight.dim() != 2:
        return None
    w = dequant_affine(weight, scale, offset, x_dtype, half)  # (1,), (n,), (1, n) or (k / G, n)
    if weight.dtype == torch.int8 and not weight.is_contiguous():
        # the golden's weight keeps the int8 weight's strides, and the float32 matmul rounds by layout
        w = torch.empty_like(weight, dtype=x_dtype).copy_(w)
    return w


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
