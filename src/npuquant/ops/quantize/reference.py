"""Pure-torch golden for ``npu_quantize`` (torch_npu docs; SPEC §2 "Where used"). Any torch device.

    div_mode=True:  y = saturate(RNE(float32(x) / scales + zero_points))
    div_mode=False: y = saturate(RNE(float32(x) * scales + zero_points))

float32 arithmetic, one rounding (half to even) after the offset is added, NaN -> 0, then
saturation to the output range; quint4x2 results are packed 8 per int32 (SPEC §2).
"""

from __future__ import annotations

import torch

from ..int4 import reference as int4


def quantize(
    x: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None,
    div_mode: bool,
    qmin: int,
    qmax: int,
    out_dtype: torch.dtype,
    pack_int4: bool,
) -> torch.Tensor:
    """Quantizes ``x`` with ``scales`` / ``zero_points`` already shaped to broadcast against it.

    ``qmin``/``qmax`` bound the result (e.g. -128/127, 0/255, -8/7); ``out_dtype`` is the
    storage dtype of the values (int8, uint8 or int32); with ``pack_int4`` the int4 values are
    packed along the last axis into int32 words.
    """
    v = x.to(torch.float32)
    s = scales.to(torch.float32)
    v = v / s if div_mode else v * s
    if zero_points is not None:
        v = v + zero_points.to(torch.float32)
    v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
    # Clamp in float64: float32 cannot hold the int32 bounds exactly.
    q = torch.round(v).to(torch.float64).clamp(qmin, qmax)
    if pack_int4:
        return int4.pack_int4(q.to(torch.int8))
    return q.to(out_dtype).contiguous()
