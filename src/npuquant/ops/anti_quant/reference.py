"""Pure-torch golden for anti-quantization (SPEC §1.2): float32 math, one RNE cast at the end.

    out = cast_dst((float32(x) [+ offset]) * scale)      # scale squared first in sqrt mode

int32 x holds 8 packed int4 per word (SPEC §2). Works on any torch device.
"""

from __future__ import annotations

import torch

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
