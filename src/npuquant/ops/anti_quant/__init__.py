"""``npu_anti_quant``: int8 / packed-int4 -> float16 / bfloat16 (SPEC §1).

Route: :func:`npu_anti_quant` (torch_npu's signature, dtype codes, validation with torch_npu's
messages) -> operator ``torch.ops.npuquant.anti_quant`` (fake kernel for torch.compile; the C
kernel on CPU, the pure-torch reference elsewhere). The aclnn front-end calls :func:`anti_quant`
(the operator on validated arguments), with sqrt mode.
"""

from __future__ import annotations

import torch

from ..._args import check, optional_tensors, tensors, to_dtype
from ..dequant_affine import dequant_affine

__all__ = ["npu_anti_quant", "anti_quant", "dequant_int4_grouped"]

MAX_DIMS = 8
_UNKNOWN_DST = "Input dst_type must be valid, but got UNKNOWN_SCALAR"
_UNKNOWN_SRC = "Input src_dtype must be valid, but got UNKNOWN_SCALAR"
OUTPUT_DTYPES = (torch.float16, torch.bfloat16)
SCALE_DTYPES = (torch.float32, torch.bfloat16)


def validate(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    dst_dtype: torch.dtype | None,
    src_dtype: torch.dtype | None,
) -> torch.dtype:
    """Every rule of SPEC §1.5 in torch_npu's order; returns the output dtype. Metadata only.

    Runs on every call, so each message is formatted only when its rule fails.
    """
    x_dtype = x.dtype
    if x_dtype == torch.int8:
        if src_dtype is not None and src_dtype != torch.int8:
            raise RuntimeError("x datatype is Int8, src_dtype must be same to x")
    elif x_dtype == torch.int32:
        if src_dtype is not None and src_dtype != torch.quint4x2:
            raise RuntimeError("x datatype is Int32, src_dtype must be Int4")
    else:
        raise RuntimeError(f"Input x must be Int8 or Int32, but got {x_dtype}")
    dst = torch.float16 if dst_dtype is None else dst_dtype
    if dst not in OUTPUT_DTYPES:
        raise RuntimeError(f"Input dst_dtype must be float16 or bfloat16, but got {dst}")
    x_dim = x.dim()
    if x_dtype == torch.int32 and x_dim == 0:
        raise RuntimeError("No supported for x is scalar when x dtype is int32")
    if scale.dtype not in SCALE_DTYPES:
        raise RuntimeError(f"scale dtype must be float32 or bfloat16, but got {scale.dtype}")
    if offset is not None and offset.dtype != scale.dtype:
        raise RuntimeError(
            f"offset dtype must be the same as scale dtype, but offset is {offset.dtype} and scale is {scale.dtype}"
        )
    if scale.dim() != 1:
        raise RuntimeError(f"scale dim num must be 1. scale:{scale.dim()}")
    if offset is not None:
        if offset.dim() != 1:
            raise RuntimeError(f"offset dim num must be 1. offset:{offset.dim()}")
        if offset.numel() != scale.numel():  # both 1-D
            raise RuntimeError(
                f"offset shape must be the same as scale shape, but offset is {tuple(offset.shape)} "
                f"and scale is {tuple(scale.shape)}"
            )
    out_last = (x.size(-1) * 8 if x_dtype == torch.int32 else x.size(-1)) if x_dim else 1
    n = scale.numel()  # 1-D
    if n != 1 and n != out_last and not (n == 0 and x.numel() == 0):
        raise RuntimeError(f"the last dim size({out_last}) of out(y) must be same as scale and offset({n}).")
    if x_dim > MAX_DIMS:
        raise RuntimeError(f"x dim num must be no more than {MAX_DIMS}, but got {x_dim}")
    if not (x.is_cpu and scale.is_cpu and (offset is None or offset.is_cpu)):  # no device objects on the fast path
        for name, t in (("scale", scale), ("offset", offset)):
            if t is not None and t.device != x.device:
                raise RuntimeError(f"{name} must be on the same device as x ({x.device}), but is on {t.device}")
    return dst


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
        if offset is not None:
            offset = offset.to(torch.float32)  # exact; the operator wants scale's dtype
    return dequant_affine(x, scale, offset, dst_dtype)  # a 1-D scale: per tensor (1) or per output column


def check_grouped(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, out_dtype: torch.dtype
) -> None:
    """Argument rules of :func:`dequant_int4_grouped` (metadata only; RuntimeError naming the rule)."""
    check(packed.dtype == torch.int32 and packed.dim() == 2, "packed must be a 2-D int32 tensor (rows, K/8)")
    check(
        scale.dtype in (torch.float32, torch.bfloat16) and scale.dim() == 2,
        "scale must be a 2-D float32 or bfloat16 tensor (rows, groups)",
    )
    rows, words = packed.shape
    groups = scale.shape[1]
    check(
        scale.shape[0] == rows and groups >= 1 and words % groups == 0,
        f"scale shape {tuple(scale.shape)} does not split packed {tuple(packed.shape)} into groups: "
        "need (rows, groups) with K/8 divisible by groups (group size a multiple of 8)",
    )
    if offset is not None:
        check(
            offset.shape == scale.shape and offset.dtype == scale.dtype,
            "offset must have the same shape and dtype as scale",
        )
    check(
        out_dtype in (torch.float32, torch.float16, torch.bfloat16), f"out_dtype must be a float type, not {out_dtype}"
    )


def dequant_int4_grouped(
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Group-wise int4 weight dequantization ``(v + offset[r, g]) * scale[r, g]`` (see :mod:`.reference`).

    packed (rows, K/8) int32, scale / offset (rows, groups). Checked with the reference's messages.
    """
    check_grouped(packed, scale, offset, out_dtype)
    return dequant_affine(packed, scale, offset, out_dtype)  # (rows, groups): one block per row and group


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
    if not (isinstance(x, torch.Tensor) and isinstance(scale, torch.Tensor)):
        tensors("npu_anti_quant", x=x, scale=scale)
    if offset is not None and not isinstance(offset, torch.Tensor):
        optional_tensors("npu_anti_quant", offset=offset)
    dst = dst_dtype if dst_dtype is None or isinstance(dst_dtype, torch.dtype) else to_dtype(dst_dtype, _UNKNOWN_DST)
    src = src_dtype if src_dtype is None or isinstance(src_dtype, torch.dtype) else to_dtype(src_dtype, _UNKNOWN_SRC)
    dst = validate(x, scale, offset, dst, src)
    return dequant_affine(x, scale, offset, dst)
