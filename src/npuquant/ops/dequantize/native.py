"""Native CPU kernel for per-row / per-column dequantization (csrc/dequantize.c), through ctypes.

Bit-identical to :mod:`.reference`: exact int -> float32, then ``+ zero_points`` (if any), then
``* scale``, in that order. One corner aside: where zero point and scale are both NaN the result
is NaN with either one's payload (torch itself picks one or the other depending on its loop).

x is read in place when its last dim has stride 1 (any row / batch strides: the strided tiles the
pypto front-end passes); other layouts are made contiguous first. The parameters are made
contiguous (they are ``cols`` or ``rows`` times smaller than x). The result is contiguous.
"""

from __future__ import annotations

import ctypes

import torch

from ... import _native
from ..int4.native import check_status, output, row_layout

__all__ = ["IN_DTYPES", "dequantize"]

# Input dtypes the kernel reads (codes of csrc/dequantize.c).
IN_DTYPES = {torch.int8: 0, torch.int16: 1}
_MAX_LEAD = 8  # leading dims the kernel walks; more are collapsed by a contiguous copy

_i64p = ctypes.POINTER(ctypes.c_int64)
_lib = _native.lib
if _lib is not None:
    _lib.npq_dequantize.restype = ctypes.c_int
    _lib.npq_dequantize.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, _i64p, _i64p, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip


def dequantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_points: torch.Tensor | None,
    axis: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`.reference.dequantize` for validated CPU tensors.

    x: int8 or int16, at least 1 dim, any strides; axis -1 or -2 (normalized); scale and
    zero_points float32 of the shape the axis implies. ``out`` (internal: benchmarks, buffer
    reuse) is a contiguous float32 tensor of x's shape that receives the result.
    """
    out = output(out, tuple(x.shape), torch.float32)
    if out.numel() == 0:
        return out
    if (x.shape[-1] > 1 and x.stride(-1) != 1) or x.dim() - 1 > _MAX_LEAD:
        x = x.contiguous()
    s = scale.contiguous()
    z = None if zero_points is None else zero_points.contiguous()
    nd, sizes, strides, cols, _, extent = row_layout(x)
    rows_per_matrix = x.shape[-2] if axis == -2 else 1
    rc = _lib.npq_dequantize(
        x.data_ptr(), IN_DTYPES[x.dtype], extent, nd, sizes, strides, cols, s.data_ptr(), _native.ptr(z), s.numel(),
        axis, rows_per_matrix, out.data_ptr(), _native.num_threads(),
    )  # fmt: skip
    check_status(rc, "dequantize")
    return out
