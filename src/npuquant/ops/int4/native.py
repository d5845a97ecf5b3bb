"""Native CPU kernels for int4 packing (csrc/int4.c), called through ctypes.

Inputs may be strided: the kernels walk rows numbered by the leading dims (any strides)
with an element stride inside the row, so no contiguous copy is made. Outputs are
contiguous. ``row_layout`` is shared with the anti-quant kernels.
"""

from __future__ import annotations

import ctypes

import torch

from ... import _native

__all__ = ["PACK_DTYPES", "check_status", "output", "pack_int4", "row_layout", "unpack_int4"]

# Value dtypes the native pack reads (codes of csrc/int4.c); others use the reference.
PACK_DTYPES = {torch.int8: 0, torch.uint8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4}

_i64p = ctypes.POINTER(ctypes.c_int64)
_lib = _native.lib
if _lib is not None:
    _lib.npq_unpack_int4.restype = ctypes.c_int
    _lib.npq_unpack_int4.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, _i64p, _i64p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    _lib.npq_pack_int4.restype = ctypes.c_int
    _lib.npq_pack_int4.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, _i64p, _i64p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, _i64p, _i64p, ctypes.c_int,
    ]  # fmt: skip

_ERRORS = {-1: "invalid sizes or strides", -2: "the tensor's sizes and strides reach outside its storage"}


def check_status(rc: int, what: str) -> None:
    """Turns a kernel's status code into a RuntimeError (0 = success)."""
    if rc != 0:
        raise RuntimeError(f"npuquant native {what}: {_ERRORS.get(rc, f'error {rc}')}")


_I64_ARRAYS = [ctypes.c_int64 * n for n in range(9)]  # array types by length, built once


def row_layout(t: torch.Tensor, one_row: bool = False) -> tuple:
    """Describes ``t`` for the kernels as rows of its last dim, numbered by the leading dims.

    Returns ``(nd, sizes, strides, inner, inner_stride, extent)``, all in elements: ctypes
    arrays for the leading dims, the last dim's size and stride, and how many elements
    from the data pointer its storage holds (the kernels bounds-check against it). With
    ``one_row`` a contiguous tensor is presented as a single row of all its elements.
    """
    if t.dim() == 0:
        t = t.reshape(1)
    extent = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
    inner = t.shape[-1]
    if t.is_contiguous():
        if one_row:
            return 0, None, None, t.numel(), 1, extent
        array = _I64_ARRAYS[1]
        return 1, array(t.numel() // inner if inner else 0), array(inner), inner, 1, extent
    nd = t.dim() - 1
    array = _I64_ARRAYS[nd]
    return nd, array(*t.shape[:-1]), array(*t.stride()[:-1]), inner, t.stride(-1), extent


def output(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A fresh result, or the caller's buffer (internal ``out=``) after checking it can take one."""
    if out is None:
        return torch.empty(shape, dtype=dtype)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device.type != "cpu" or not out.is_contiguous():
        raise RuntimeError(
            f"out must be a contiguous CPU tensor of shape {tuple(shape)} and dtype {dtype}, "
            f"but got shape {tuple(out.shape)}, dtype {out.dtype} on {out.device}"
        )
    return out


def unpack_int4(packed: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """int32 ``(..., n)`` -> int8 ``(..., 8n)``; ``packed`` is a CPU int32 tensor of at least 1 dim.

    ``out`` (internal: benchmarks, buffer reuse) receives the result instead of a new tensor.
    """
    out = output(out, (*packed.shape[:-1], packed.shape[-1] * 8), torch.int8)
    if out.numel() == 0:
        return out
    nd, sizes, strides, inner, inner_stride, extent = row_layout(packed, one_row=True)
    rc = _lib.npq_unpack_int4(
        packed.data_ptr(), extent, nd, sizes, strides, inner, inner_stride, out.data_ptr(), _native.num_threads()
    )
    check_status(rc, "unpack_int4")
    return out


def pack_int4(values: torch.Tensor, *, out: torch.Tensor | None = None) -> tuple[torch.Tensor, int | None, int | None]:
    """Integer ``(..., 8n)`` -> int32 ``(..., n)``, plus the smallest and largest value seen.

    The caller rejects the result when a value lies outside [-8, 7] (the bounds are None
    for an empty tensor). ``values.dtype`` must be one of :data:`PACK_DTYPES`.
    """
    out = output(out, (*values.shape[:-1], values.shape[-1] // 8), torch.int32)
    if out.numel() == 0:
        return out, None, None
    nd, sizes, strides, inner, inner_stride, extent = row_layout(values, one_row=True)
    lo, hi = ctypes.c_int64(0), ctypes.c_int64(0)
    rc = _lib.npq_pack_int4(
        values.data_ptr(), PACK_DTYPES[values.dtype], extent, nd, sizes, strides, inner, inner_stride,
        out.data_ptr(), ctypes.byref(lo), ctypes.byref(hi), _native.num_threads(),
    )  # fmt: skip
    check_status(rc, "pack_int4")
    return out, lo.value, hi.value
