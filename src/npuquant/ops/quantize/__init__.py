"""``npu_quantize``: float -> int8 / uint8 / int32 / packed int4 with per-channel scales and zero points.

Two modes, as in torch_npu (docs ``torch_npu-npu_quantize.md``; OP-CPP ``QuantizeKernelNpu.cpp``,
``QuantizeKernelNpuOpApi.cpp``):

* ``div_mode=True`` (the ``Quantize`` op, torch.quantize_per_channel's contract): per-channel along
  ``axis`` (any dim), 1-D ``scales``/``zero_points``; dtype qint8 / quint8 / qint32.
* ``div_mode=False`` (aclnnAscendQuantV3): ``x * scales + zero_points`` along the last axis
  (``axis=-2``: the second-to-last); dtype qint8 / int8, or quint4x2 (8 int4 packed per int32).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..._args import check, optional_tensors, tensors, to_dtype
from . import reference

__all__ = ["npu_quantize", "validate"]

INPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DIV_SCALE_DTYPES = (torch.float32, torch.bfloat16)
DIV_ZERO_POINT_DTYPES = (torch.int8, torch.uint8, torch.int32, torch.bfloat16)
# dtype argument -> (storage dtype, qmin, qmax)
DIV_OUTPUTS = {
    torch.qint8: (torch.int8, -128, 127),
    torch.int8: (torch.int8, -128, 127),
    torch.quint8: (torch.uint8, 0, 255),
    torch.uint8: (torch.uint8, 0, 255),
    torch.qint32: (torch.int32, -(2**31), 2**31 - 1),
    torch.int32: (torch.int32, -(2**31), 2**31 - 1),
}
MUL_OUTPUTS = {
    torch.qint8: (torch.int8, -128, 127),
    torch.int8: (torch.int8, -128, 127),
    torch.quint4x2: (torch.int32, -8, 7),
}


class Plan(NamedTuple):
    out_dtype: torch.dtype
    out_shape: tuple
    scale_shape: tuple  # scales / zero_points viewed with this shape broadcast against the input
    qmin: int
    qmax: int
    pack_int4: bool


def _validate_div(x, scales, zero_points, dtype, axis) -> Plan:
    check(
        dtype in DIV_OUTPUTS,
        f"dtype must be torch.qint8, torch.quint8 or torch.qint32 when div_mode is True, but got {dtype}",
    )
    ndim = x.dim()
    check(ndim >= 1, "input must have at least 1 dimension when div_mode is True")
    check(
        -ndim <= axis < ndim,
        f"Unexpected value of axis. Dimension out of range (expected to be in range of [{-ndim}, {ndim - 1}], "
        f"but got {axis})",
    )
    axis = axis % ndim
    check(scales.dim() == 1, "Scales' dim should be equal to 1.")
    check(
        scales.dtype in DIV_SCALE_DTYPES,
        f"scales' type supported for float32 and bfloat16 when div_mode is True, but scales.dtype is {scales.dtype}",
    )
    if zero_points is not None:
        check(zero_points.dim() == 1, "Zero points' dim should be equal to 1.")
        check(zero_points.shape[0] == scales.shape[0], "Scales' size should be equal to zero points' size.")
        check(
            zero_points.dtype in DIV_ZERO_POINT_DTYPES,
            "zero_points' type supported for int8, uint8, int32 and bfloat16 when div_mode is True, "
            f"but zero_points.dtype is {zero_points.dtype}",
        )
    length = scales.shape[0]
    check(
        length == x.shape[axis] or length == 1,
        "length of scales must equal to the specified dimension. "
        f"(scales has {length} elements, input dim {axis} has {x.shape[axis]})",
    )
    scale_shape = [1] * ndim
    scale_shape[axis] = length
    storage, qmin, qmax = DIV_OUTPUTS[dtype]
    return Plan(storage, tuple(x.shape), tuple(scale_shape), qmin, qmax, False)


def _validate_mul(x, scales, zero_points, dtype, axis) -> Plan:
    check(dtype in MUL_OUTPUTS, f"dtype must be Int8 or Int4, but got {dtype}")
    ndim = x.dim()
    check(ndim >= 1, "input must have at least 1 dimension when div_mode is False")
    check(
        -2 <= axis < ndim and not (axis == -2 and ndim < 2),
        f"axis must be in [-2, {ndim - 1}] (and -2 needs a 2-D input) when div_mode is False, but got {axis}",
    )
    quant_axis = ndim - 2 if axis == -2 else ndim - 1  # any axis > -2 means the last one
    check(
        scales.dtype == x.dtype,
        "scales' type must be the same as input's type when div_mode is False, "
        f"but scales.dtype is {scales.dtype} and input.dtype is {x.dtype}",
    )
    if zero_points is not None:
        check(
            zero_points.dtype == scales.dtype and zero_points.shape == scales.shape,
            "zero_points' type and shape must be the same as scales', but zero_points is "
            f"{zero_points.dtype} {tuple(zero_points.shape)} and scales is {scales.dtype} {tuple(scales.shape)}",
        )
    size = x.shape[quant_axis]
    if scales.dim() == 1:
        length = scales.shape[0]
        check(
            length == size or length == 1,
            f"the length of 1-D scales must be 1 or input's dim {quant_axis} ({size}), but it is {length}",
        )
        scale_shape = [1] * ndim
        scale_shape[quant_axis] = length
    else:
        ok = scales.dim() == ndim and all(s == 1 or (d == quant_axis and s == size) for d, s in enumerate(scales.shape))
        check(
            ok,
            f"scales of shape {tuple(scales.shape)} must have input's {ndim} dims, all 1 except dim {quant_axis} "
            f"which must be 1 or {size}",
        )
        scale_shape = list(scales.shape)
    storage, qmin, qmax = MUL_OUTPUTS[dtype]
    pack = dtype == torch.quint4x2
    out_shape = tuple(x.shape)
    if pack:
        last = x.shape[-1]
        check(
            last % 8 == 0,
            f"input shape last dim must be divded by 8 (If dtype is quint4x2, the last dim of input must be "
            f"divided by 8), but it is {last}",
        )
        out_shape = (*x.shape[:-1], last // 8)
    return Plan(storage, out_shape, tuple(scale_shape), qmin, qmax, pack)


def validate(
    x: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    dtype: torch.dtype,
    axis: int,
    div_mode: bool,
) -> Plan:
    """All argument rules for both modes (metadata only, also run by the fake kernel)."""
    check(x.dtype in INPUT_DTYPES, f"input's type supported for float32, float16 and bfloat16, but it is {x.dtype}")
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if t is not None:
            check(
                t.device == x.device, f"{name} must be on the same device as input ({x.device}), but is on {t.device}"
            )
    if div_mode:
        return _validate_div(x, scales, zero_points, dtype, axis)
    return _validate_mul(x, scales, zero_points, dtype, axis)


@torch.library.custom_op("npuquant::npu_quantize", mutates_args=())
def _npu_quantize_op(
    input: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    dtype: torch.dtype,
    axis: int = 1,
    div_mode: bool = True,
) -> torch.Tensor:
    plan = validate(input, scales, zero_points, dtype, axis, div_mode)
    s = scales.reshape(plan.scale_shape)
    zp = None if zero_points is None else zero_points.reshape(plan.scale_shape)
    return reference.quantize(input, s, zp, div_mode, plan.qmin, plan.qmax, plan.out_dtype, plan.pack_int4)


@_npu_quantize_op.register_fake
def _(input, scales, zero_points, dtype, axis=1, div_mode=True):  # the op's signature
    plan = validate(input, scales, zero_points, dtype, axis, div_mode)
    return input.new_empty(plan.out_shape, dtype=plan.out_dtype)


def npu_quantize(
    input: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    dtype: torch.dtype | int,
    axis: int = 1,
    div_mode: bool = True,
) -> torch.Tensor:
    """torch_npu.npu_quantize: ``saturate(RNE(input / scales + zero_points))`` (``div_mode=True``) or
    ``saturate(RNE(input * scales + zero_points))`` (``div_mode=False``), in float32.

    Args:
        input: float32 / float16 / bfloat16, any shape and strides (empty allowed).
        scales: ``div_mode=True``: 1-D float32/bfloat16, length 1 or ``input.shape[axis]``.
            ``div_mode=False``: input's dtype; 1-D (length 1 or the quantized axis' size) or with
            input's rank, all dims 1 except the quantized axis.
        zero_points: optional. ``div_mode=True``: 1-D int8/uint8/int32/bfloat16, scales' length;
            ``div_mode=False``: scales' dtype and shape.
        dtype: ``div_mode=True``: torch.qint8 / torch.quint8 / torch.qint32 (int8 / uint8 / int32
            accepted as aliases) -> int8 / uint8 / int32 result. ``div_mode=False``: torch.qint8 or
            torch.int8 -> int8; torch.quint4x2 -> int32 with 8 int4 per word (last dim / 8).
            torch.dtype or ScalarType code.
        axis: ``div_mode=True``: the channel dim (negative counts from the end).
            ``div_mode=False``: -2 for the second-to-last dim, anything in (-2, input.dim()) for the last.
        div_mode: divide (True) or multiply (False) by ``scales``.

    Raises:
        RuntimeError: for an unsupported dtype, shape or axis (torch_npu's wording where it has one).
    """
    tensors("npu_quantize", input=input, scales=scales)
    optional_tensors("npu_quantize", zero_points=zero_points)
    check(dtype is not None, "dtype must be given (e.g. torch.qint8)")
    dst = to_dtype(dtype, f"dtype must be a valid ScalarType, but got {dtype}")
    return torch.ops.npuquant.npu_quantize(input, scales, zero_points, dst, int(axis), bool(div_mode))
