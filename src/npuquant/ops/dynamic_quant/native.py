"""ctypes bridge to csrc/dynamic_quant.c: per-token dynamic quantization on CPU tensors.

x is read in place through its strides (leading dims coalesced; a last-dim stride other than 1
is gathered row by row inside the kernel), so non-contiguous inputs cost no full copy.
"""

from __future__ import annotations

import ctypes

import torch

from ... import _native

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_MAX_LEAD = 8
_ERRORS = {
    -1: "invalid sizes or strides",
    -2: "group_index must be non-decreasing, within [0, rows] and end at rows (1 to 1024 groups)",
    -3: "out of memory for the row buffers",
}

_lib = _native.lib
if _lib is not None:
    _lib.npq_dynamic_quant.restype = ctypes.c_int
    _lib.npq_dynamic_quant.argtypes = [
        ctypes.c_void_p,  # x
        ctypes.c_int,  # x dtype code
        ctypes.c_int,  # number of leading dims
        ctypes.POINTER(ctypes.c_int64),  # leading shape
        ctypes.POINTER(ctypes.c_int64),  # leading strides (elements)
        ctypes.c_int64,  # cols
        ctypes.c_int64,  # col stride (elements)
        ctypes.c_void_p,  # smooth scales or NULL
        ctypes.c_void_p,  # group_index (int32) or NULL
        ctypes.c_int64,  # number of groups
        ctypes.c_void_p,  # y
        ctypes.c_void_p,  # scale
        ctypes.c_void_p,  # offset or NULL (symmetric)
        ctypes.c_int,  # int4 output
        ctypes.c_int,  # threads
    ]


def _leading_layout(x: torch.Tensor) -> tuple[list[int], list[int]] | None:
    """Leading dims and strides with size-1 dims dropped and mergeable neighbours merged."""
    dims: list[list[int]] = []
    for size, stride in zip(x.shape[:-1], x.stride()[:-1]):
        if size == 1:
            continue
        if dims and dims[-1][1] == stride * size:
            dims[-1] = [dims[-1][0] * size, stride]
        else:
            dims.append([size, stride])
    if len(dims) > _MAX_LEAD:
        return None
    return [d[0] for d in dims], [d[1] for d in dims]


def output_shapes(x: torch.Tensor, int4: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(y shape, scale/offset shape) for input x."""
    lead = tuple(x.shape[:-1])
    return (*lead, x.shape[-1] // 8 if int4 else x.shape[-1]), lead


def dynamic_quant(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    *,
    asymmetric: bool = True,
    int4: bool = False,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Runs the native kernel; returns ``(y, scale, offset)`` (offset None when symmetric).

    Plain function (no custom op, no torch_npu argument checks) for benchmarks and the op's dispatch.
    x: CPU float16/bfloat16/float32, dim >= 1, any strides. smooth_scales: x's dtype, ``[H]`` or
    ``[E, H]`` with int32 ``group_index`` ``[E]``. ``out``: preallocated contiguous
    ``(y, scale, offset)`` of the right shapes/dtypes (offset None for the symmetric op), so a
    benchmark can time the kernel without allocation.
    """
    if _lib is None:
        raise RuntimeError(f"npuquant native kernels unavailable: {_native.load_error}")
    if x.dtype not in _DTYPE_CODES or x.device.type != "cpu" or x.dim() < 1:
        raise RuntimeError(f"native dynamic_quant needs a CPU float16/bfloat16/float32 tensor with dim >= 1, got {x}")
    if smooth_scales is not None:
        smooth_scales = smooth_scales.to(x.dtype).contiguous()
    if group_index is not None:
        group_index = group_index.to(torch.int32).contiguous()
    groups = 1 if group_index is None else group_index.numel()
    if smooth_scales is not None and smooth_scales.numel() != groups * x.shape[-1]:
        raise RuntimeError(f"smooth_scales must hold {groups} x {x.shape[-1]} values, got {tuple(smooth_scales.shape)}")
    y_shape, s_shape = output_shapes(x, int4)
    if out is None:
        y = torch.empty(y_shape, dtype=torch.int32 if int4 else torch.int8)
        scale = torch.empty(s_shape, dtype=torch.float32)
        offset = torch.empty(s_shape, dtype=torch.float32) if asymmetric else None
    else:
        y, scale, offset = out
        ok = (
            y.shape == y_shape
            and y.dtype == (torch.int32 if int4 else torch.int8)
            and scale.shape == s_shape
            and scale.dtype == torch.float32
            and (offset is None) == (not asymmetric)
            and (offset is None or (offset.shape == s_shape and offset.dtype == torch.float32))
            and all(t is None or t.is_contiguous() for t in (y, scale, offset))
        )
        if not ok:
            raise RuntimeError("out must be contiguous (y, scale, offset) tensors of the output shapes and dtypes")
    if y.numel() == 0 and scale.numel() == 0:
        return y, scale, offset
    layout = _leading_layout(x)
    if layout is None:  # more than 8 non-mergeable leading dims: rare, copy once
        x = x.contiguous()
        layout = _leading_layout(x)
        assert layout is not None
    shape, strides = layout
    n = len(shape)
    shape_arr = (ctypes.c_int64 * max(n, 1))(*shape)
    stride_arr = (ctypes.c_int64 * max(n, 1))(*strides)
    rc = _lib.npq_dynamic_quant(
        x.data_ptr(),
        _DTYPE_CODES[x.dtype],
        n,
        shape_arr,
        stride_arr,
        x.shape[-1],
        x.stride(-1),
        _native.ptr(smooth_scales),
        _native.ptr(group_index),
        0 if group_index is None else groups,
        y.data_ptr(),
        scale.data_ptr(),
        _native.ptr(offset),
        int(int4),
        _native.num_threads(),
    )
    if rc != 0:
        raise RuntimeError(f"npuquant dynamic_quant kernel: {_ERRORS.get(rc, f'error {rc}')}")
    return y, scale, offset
