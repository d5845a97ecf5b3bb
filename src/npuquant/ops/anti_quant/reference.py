"""Pure-torch golden for anti-quantization (SPEC §1.2): float32 math, one RNE cast at the end.

    out = cast_dst((float32(x) [+ offset]) * scale)      # scale squared first in sqrt mode

int32 x holds 8 packed int4 per word (SPEC §2). Works on any torch device.
"""

from __future__ import annotations

import torch

from ..._args import check
from ..int4 import reference as int4


def anti_quant(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    dst_dtype: torch.dtype,
    sqrt_mode: bool = False,
) -> torch.Tensor:
    values = int4.unpack_int4(x) if x.dtype == torch.int32 else x
    xf = values.to(torch.float32)
    s = scale.to(torch.float32)
    if sqrt_mode:
        s = s * s
    if offset is not None:
        xf = xf + offset.to(torch.float32)
    # reshape: a 0-dim x broadcast against a (1,) scale must stay 0-dim
    return (xf * s).to(dst_dtype).reshape(values.shape).contiguous()


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
    """Group-wise int4 weight dequantization (for a w4a16 linear layer).

    packed (rows, K/8) int32 holds int4 values along K (SPEC §2); scale and the optional
    offset are (rows, groups); group g covers columns [g*G, (g+1)*G), G = K / groups:
    ``out = cast((value + offset[r, g]) * scale[r, g])`` in float32.
    """
    check_grouped(packed, scale, offset, out_dtype)
    rows, groups = scale.shape
    values = int4.unpack_int4(packed).to(torch.float32).reshape(rows, groups, packed.shape[1] * 8 // groups)
    if offset is not None:
        values = values + offset.to(torch.float32).unsqueeze(-1)
    out = values * scale.to(torch.float32).unsqueeze(-1)
    return out.reshape(rows, packed.shape[1] * 8).to(out_dtype).contiguous()
