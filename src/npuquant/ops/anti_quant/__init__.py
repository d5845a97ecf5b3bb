"""``npu_anti_quant``: int8 / packed-int4 -> float16 / bfloat16 (SPEC §1).

Layers: :func:`npu_anti_quant` (torch_npu's signature; dtype codes) -> custom op
``torch.ops.npuquant.npu_anti_quant`` (validation with torch_npu's messages, fake kernel
for torch.compile) -> :func:`anti_quant` (device dispatch: native CPU kernels or the
pure-torch reference). The aclnn front-end calls :func:`anti_quant` too, with sqrt mode.
"""

from __future__ import annotations

import torch

from ..._args import check, to_dtype
from ..._native import use_native
from . import native, reference

__all__ = ["npu_anti_quant", "anti_quant", "dequant_int4_grouped", "grouped_int4_tiles", "output_shape"]

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


def anti_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    dst_dtype: torch.dtype,
    sqrt_mode: bool = False,
) -> torch.Tensor:
    """Device dispatch for validated arguments: native kernels on CPU, the reference elsewhere.

    Also accepts ``dst_dtype=torch.float32`` (internal callers such as a w4a16 layer).
    """
    if x.dtype in (torch.int8, torch.int32) and dst_dtype in native.OUT_DTYPES and use_native(x, scale, offset):
        return native.anti_quant(x, scale, offset, dst_dtype, sqrt_mode)
    return reference.anti_quant(x, scale, offset, dst_dtype, sqrt_mode)


def dequant_int4_grouped(
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Group-wise int4 weight dequantization (internal, for a w4a16 linear layer); device dispatch.

    packed (rows, K/8) int32, scale / offset (rows, groups): see :func:`.reference.dequant_int4_grouped`.
    ``out``: optional contiguous ``(rows, K)`` buffer of ``out_dtype`` on packed's device that receives
    the result (e.g. a tile buffer reused across calls); it is returned.
    """
    if use_native(packed, scale, offset, out):
        return native.dequant_int4_grouped(packed, scale, offset, out_dtype, out=out)
    result = reference.dequant_int4_grouped(packed, scale, offset, out_dtype)
    if out is None:
        return result
    reference.check_grouped_out(out, result.shape, out_dtype, packed.device)
    return out.copy_(result)


def grouped_int4_tiles(
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    out_dtype: torch.dtype,
    tile_rows: int,
) -> native.GroupedTiles | reference.GroupedTiles:
    """:func:`dequant_int4_grouped` of one weight as a plan of row tiles (device dispatch).

    For callers that dequantize the same weight tile by tile again and again (w4a16 layers):
    ``plan.bounds[i]`` is tile i's row range, ``plan.dequant(i, out)`` writes it into ``out``.
    Native on CPU (arguments checked once, then one kernel call per tile), else the reference.
    """
    if use_native(packed, scale, offset):
        return native.GroupedTiles(packed, scale, offset, out_dtype, tile_rows)
    return reference.GroupedTiles(packed, scale, offset, out_dtype, tile_rows)


@torch.library.custom_op("npuquant::npu_anti_quant", mutates_args=())
def _npu_anti_quant_op(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    dst_dtype: torch.dtype | None = None,
    src_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    dst = validate(x, scale, offset, dst_dtype, src_dtype)
    return anti_quant(x, scale, offset, dst)


@_npu_anti_quant_op.register_fake
def _(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    dst_dtype: torch.dtype | None = None,
    src_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    dst = validate(x, scale, offset, dst_dtype, src_dtype)
    return x.new_empty(output_shape(x), dtype=dst)


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
    unknown = "Input dst_type must be valid, but got UNKNOWN_SCALAR"
    dst = to_dtype(dst_dtype, unknown)
    src = to_dtype(src_dtype, "Input src_dtype must be valid, but got UNKNOWN_SCALAR")
    return torch.ops.npuquant.npu_anti_quant(x, scale, offset, dst, src)
