"""Native CPU kernels for anti-quantization (csrc/anti_quant.c), called through ctypes.

Bit-identical to :mod:`.reference`: float32 ``(x + offset) * scale`` in that order, one
round-half-to-even cast. NaN outputs match PyTorch's own CPU casts: float16 keeps sign and
payload (F16C semantics, which torch uses); bfloat16 NaN is :data:`BF16_NAN_BITS`, the pattern
this torch build's cast writes (probed once by :mod:`npuquant._native`, used by every kernel).
"""

from __future__ import annotations

import ctypes

import torch

from ... import _native
from ..int4.native import check_status, output, row_layout
from . import reference

__all__ = ["OUT_DTYPES", "GroupedTiles", "anti_quant", "dequant_int4_grouped"]

# Output dtypes the kernels write (codes of csrc/anti_quant.c).
OUT_DTYPES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

_i64p = ctypes.POINTER(ctypes.c_int64)
_lib = _native.lib
if _lib is not None:
    _lib.npq_anti_quant.restype = ctypes.c_int
    _lib.npq_anti_quant.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, _i64p, _i64p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    _lib.npq_dequant_int4_grouped.restype = ctypes.c_int
    _lib.npq_dequant_int4_grouped.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip


BF16_NAN_BITS = _native.BF16_NAN_BITS  # what the kernels write for a bfloat16 NaN


def _as_f32(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.to(torch.float32).contiguous()


def anti_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    dst_dtype: torch.dtype,
    sqrt_mode: bool = False,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same contract as :func:`.reference.anti_quant` for validated CPU tensors.

    x is int8 or int32 (8 packed int4), any strides; scale / offset 1-D of length 1 or the
    output's last dim; dst_dtype one of :data:`OUT_DTYPES`. The result is contiguous; ``out``
    (internal use: benchmarks, layers reusing a buffer) receives it instead of a new tensor.
    """
    packed = x.dtype == torch.int32
    shape = (*x.shape[:-1], x.shape[-1] * 8) if packed else tuple(x.shape)
    out = output(out, shape, dst_dtype)
    if out.numel() == 0:
        return out
    s = _as_f32(scale)
    if sqrt_mode:
        s = s * s  # float32 multiply first, as the reference does
    o = _as_f32(offset)
    nd, sizes, strides, inner, inner_stride, extent = row_layout(x, one_row=s.numel() == 1)
    rc = _lib.npq_anti_quant(
        x.data_ptr(), 1 if packed else 0, extent, nd, sizes, strides, inner, inner_stride, s.data_ptr(), s.numel(),
        _native.ptr(o), out.data_ptr(), OUT_DTYPES[dst_dtype], _native.num_threads(),
    )  # fmt: skip
    check_status(rc, "anti_quant")
    return out


def dequant_int4_grouped(
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantizes a packed int4 weight tile with one scale (and offset) per row and group.

    ``out[r, c] = cast((nibble[r, c] + offset[r, g]) * scale[r, g])`` with ``g = c // G``,
    ``G = 8 * words // groups`` (a multiple of 8). See :func:`.reference.dequant_int4_grouped`
    for the argument rules; the two are bit-identical. ``out``: optional contiguous buffer
    ``(rows, 8 * words)`` of ``out_dtype`` to write into (e.g. reused across calls).
    """
    reference.check_grouped(packed, scale, offset, out_dtype)
    rows, words = packed.shape
    out = output(out, (rows, words * 8), out_dtype)
    if out.numel() == 0:
        return out
    s, o = _as_f32(scale), _as_f32(offset)
    extent = packed.untyped_storage().nbytes() // 4 - packed.storage_offset()
    rc = _lib.npq_dequant_int4_grouped(
        packed.data_ptr(), extent, rows, words, packed.stride(0), packed.stride(1), words // scale.shape[1],
        s.data_ptr(), _native.ptr(o), out.data_ptr(), OUT_DTYPES[out_dtype], _native.num_threads(),
    )  # fmt: skip
    check_status(rc, "dequant_int4_grouped")
    return out


class GroupedTiles:
    """:func:`dequant_int4_grouped` of one weight, a tile of rows at a time (w4a16 layers).

    Same interface as :class:`.reference.GroupedTiles`. The arguments are checked, converted and
    turned into kernel arguments once, here: :meth:`dequant` then costs one ctypes call (a
    SmolLM2-135M decode step dequantizes ~1000 tiles, and the full per-call path's checks cost
    more than a cache-sized tile's conversion). Keeps the tensors it reads alive; build a new
    plan when they are replaced (in-place updates are seen).
    """

    def __init__(
        self,
        packed: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor | None,
        out_dtype: torch.dtype,
        tile_rows: int,
    ):
        reference.check_grouped(packed, scale, offset, out_dtype)
        reference.check_tile_rows(tile_rows)
        s, o = _as_f32(scale), _as_f32(offset)
        self._tensors = (packed, s, o)  # the kernel arguments point into these
        rows, words = packed.shape
        groups = scale.shape[1]
        self.out_dtype = out_dtype
        self.columns = words * 8
        self._out_code = OUT_DTYPES[out_dtype]
        self.bounds = [(r0, min(r0 + tile_rows, rows)) for r0 in range(0, rows, tile_rows)]
        extent = packed.untyped_storage().nbytes() // 4 - packed.storage_offset()
        row_stride, word_stride = packed.stride()
        self._args = []
        for r0, r1 in self.bounds:
            first = r0 * row_stride  # words from the data pointer to the tile's first row
            self._args.append((
                packed.data_ptr() + 4 * first, extent - first, r1 - r0, words, row_stride, word_stride,
                words // groups, s.data_ptr() + 4 * r0 * groups, None if o is None else o.data_ptr() + 4 * r0 * groups,
            ))  # fmt: skip

    def dequant(self, i: int, out: torch.Tensor) -> torch.Tensor:
        """Tile ``i`` into ``out``, a contiguous CPU ``(r1 - r0, K)`` tensor of ``out_dtype``; returns ``out``."""
        r0, r1 = self.bounds[i]
        shape = (r1 - r0, self.columns)
        if out.shape != shape or out.dtype != self.out_dtype or not out.is_contiguous() or out.device.type != "cpu":
            reference.check_grouped_out(out, shape, self.out_dtype, torch.device("cpu"))  # raises, naming the rule
        rc = _lib.npq_dequant_int4_grouped(*self._args[i], out.data_ptr(), self._out_code, _native.num_threads())
        check_status(rc, "dequant_int4_grouped")
        return out
