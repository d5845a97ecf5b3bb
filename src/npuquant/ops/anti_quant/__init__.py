"""``npu_anti_quant``: int8 / packed-int4 -> float16 / bfloat16 (SPEC §1).

Route: :func:`npu_anti_quant` (torch_npu's signature, dtype codes, validation with torch_npu's
messages) -> operator ``torch.ops.npuquant.anti_quant`` (fake kernel for torch.compile; the C
kernel on CPU, the pure-torch reference elsewhere). The aclnn front-end calls :func:`anti_quant`
(the operator on validated arguments), with sqrt mode.
"""

from __future__ import annotations

import torch

from ... import _native
from ..._args import check, optional_tensors, tensors, to_dtype
from . import reference

__all__ = ["npu_anti_quant", "anti_quant", "dequant_int4_grouped", "output_shape"]

MAX_DIMS = 8
OUTPUT_DTYPES = (torch.float16, torch.bfloat16)
SCALE_DTYPES = (torch.float32, torch.bfloat16)


def output_shape(x: torch.Tensor) -> tuple[int, ...]:
    """Shape of the anti-quantized result: x's shape, last dim ×8 for packed int32."""
    if x.dtype == torch.int32:
        return (*x.shape[:-1], x.shape[-1] * 8)
    return tuple(x.shape)


def validate(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    dst_dtype: torch.dtype | None,
    src_dtype: torch.dtype | None,
) -> torch.dtype:
    """Every rule of SPEC §1.5 in torch_npu's order; returns the output dtype. Metadata only."""
    if x.dtype == torch.int8:
        check(src_dtype in (None, torch.int8), "x datatype is Int8, src_dtype must be same to x")
    elif x.dtype == torch.int32:
        check(src_dtype in (None, torch.quint4x2), "x datatype is Int32, src_dtype must be Int4")
    else:
        check(False, f"Input x must be Int8 or Int32, but got {x.dtype}")
    dst = torch.float16 if dst_dtype is None else dst_dtype
    check(dst in OUTPUT_DTYPES, f"Input dst_dtype must be float16 or bfloat16, but got {dst}")
    check(not (x.dtype == torch.int32 and x.dim() == 0), "No supported for x is scalar when x dtype is int32")
    check(scale.dtype in SCALE_DTYPES, f"scale dtype must be float32 or bfloat16, but got {scale.dtype}")
    if offset is not None:
        check(
            offset.dtype == scale.dtype,
            f"offset dtype must be the same as scale dtype, but offset is {offset.dtype} and scale is {scale.dtype}",
        )
    check(scale.dim() == 1, f"scale dim num must be 1. scale:{scale.dim()}")
    if offset is not None:
        check(offset.dim() == 1, f"offset dim num must be 1. offset:{offset.dim()}")
        check(
            offset.shape == scale.shape,
            f"offset shape must be the same as scale shape, but offset is {tuple(offset.shape)} "
            f"and scale is {tuple(scale.shape)}",
        )
    out_shape = output_shape(x)
    out_last = out_shape[-1] if out_shape else 1
    n = scale.shape[0]
    empty_out = any(s == 0 for s in out_shape)
    check(
        n == 1 or n == out_last or (n == 0 and empty_out),
        f"the last dim size({out_last}) of out(y) must be same as scale and offset({n}).",
    )
    check(x.dim() <= MAX_DIMS, f"x dim num must be no more than {MAX_DIMS}, but got {x.dim()}")
    for name, t in (("scale", scale), ("offset", offset)):
        if t is not None:
            check(t.device == x.device, f"{name} must be on the same device as x ({x.device}), but is on {t.device}")
    return dst


def _anti_quant_fake(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, dst_dtype: torch.dtype
) -> torch.Tensor:
    return x.new_empty(output_shape(x), dtype=dst_dtype)


def _grouped_fake(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    reference.check_grouped(packed, scale, offset, out_dtype)
    return packed.new_empty((packed.shape[0], packed.shape[1] * 8), dtype=out_dtype)


_anti_quant = _native.operator("anti_quant", reference.anti_quant, _anti_quant_fake)
_dequant_int4_grouped = _native.operator("dequant_int4_grouped", reference.dequant_int4_grouped, _grouped_fake)


def anti_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    dst_dtype: torch.dtype,
    sqrt_mode: bool = False,
) -> torch.Tensor:
    """The operator on validated arguments (also ``dst_dtype=torch.float32``, and aclnn's sqrt mode)."""
    if sqrt_mode:
        s = scale.to(torch.float32)
        scale = s * s  # float32 multiply first, as the reference does
    return _anti_quant(x, scale, offset, dst_dtype)


def dequant_int4_grouped(
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Group-wise int4 weight dequantization ``(v + offset[r, g]) * scale[r, g]`` (see :mod:`.reference`).

    packed (rows, K/8) int32, scale / offset (rows, groups). Checked with the reference's messages.
    """
    reference.check_grouped(packed, scale, offset, out_dtype)
    return _dequant_int4_grouped(packed, scale, offset, out_dtype)


def npu_anti_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    dst_dtype: torch.dtype | int | None = None,
    src_dtype: torch.dtype | int | None = None,
) -> torch.Tensor:
    """torch_npu.npu_anti_quant: ``cast_dst((float32(x) [+ offset]) * scale)``.

    Args:
        x: int8 tensor, or int32 holding 8 signed int4 per word (element j in bits 4j..4j+3);
            up to 8 dims, any strides.
        scale: 1-D float32 or bfloat16, length 1 or the output's last dim (8× x's for int32).
        offset: optional, same dtype and shape as ``scale``.
        dst_dtype: ``torch.float16`` (default) or ``torch.bfloat16``; torch_npu integer codes accepted.
        src_dtype: validation only: ``torch.int8`` for int8 x, ``torch.quint4x2`` for int32 x.

    Returns:
        Tensor of x's shape (last dim ×8 for int32) in ``dst_dtype``; float32 arithmetic,
        round-half-to-even cast.

    Raises:
        RuntimeError: containing torch_npu's message for every rule of SPEC §1.5.
    """
    tensors("npu_anti_quant", x=x, scale=scale)
    optional_tensors("npu_anti_quant", offset=offset)
    unknown = "Input dst_type must be valid, but got UNKNOWN_SCALAR"
    dst = to_dtype(dst_dtype, unknown)
    src = to_dtype(src_dtype, "Input src_dtype must be valid, but got UNKNOWN_SCALAR")
    dst = validate(x, scale, offset, dst, src)
    return _anti_quant(x, scale, offset, dst)
