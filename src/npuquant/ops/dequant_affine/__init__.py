"""Affine dequantization, the one primitive under ``npu_anti_quant``, the grouped int4 weight tiles
of w4a16, ``npu_weight_quant_batchmatmul``, ``pypto.dequantize`` and ``aclnnAscendAntiQuant``:

    out[r, c] = cast((float32(q[r, c]) + offset[p]) * scale[p])

x (int8, int16, or int32 holding 8 int4 per word) is seen as ``(rows, cols)``: its leading dims by
its last dim (x8 when packed). Granularity is data, as in torchao's ``dequantize_affine``, given by
the parameters' shape ``(a, b)`` (a 1-D one of n is ``(1, n)``): they split the view into a x b
equal blocks, and element ``(r, c)`` takes block ``(r // (rows / a), c // (cols / b))``:

=====================  ==================================
granularity            scale shape
=====================  ==================================
per tensor             ``(1,)``
per last dim           ``(cols,)``
per row                ``(rows, 1)``
per (row, K-group)     ``(rows, cols / G)``
per (matrix, column)   ``(rows / R, cols)``, R rows per matrix
=====================  ==================================

The front-ends are shape adapters: they validate with their own messages and call
:func:`dequant_affine`. Operator ``torch.ops.npuquant.dequant_affine``: the C kernel
(csrc/dequant.c) on CPU, :mod:`.reference` elsewhere.
"""

from __future__ import annotations

import torch

from ... import _native
from . import reference

__all__ = ["dequant_affine"]


def _fake(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    out_dtype: torch.dtype,
    half_steps: bool = False,
) -> torch.Tensor:
    shape = (*x.shape[:-1], x.shape[-1] * 8) if x.dtype == torch.int32 else x.shape
    return x.new_empty(shape, dtype=out_dtype)


dequant_affine = _native.operator("dequant_affine", reference.dequant_affine, _fake)
dequant_affine.__doc__ = """``torch.ops.npuquant.dequant_affine(x, scale, offset, out_dtype, half_steps=False)``.

``offset`` may be None (+0); scale and offset are float32, bfloat16 or float16 (read as float32);
out_dtype float32, float16 or bfloat16. ``half_steps`` (float16 scale, offset and out_dtype) is
float16 arithmetic: ``fp16(fp16(q + offset) * scale)``, as torch computes in float16. The native kernel checks every argument; callers validate first
with their own op's messages.
"""
