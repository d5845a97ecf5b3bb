"""Pure-torch golden for per-token dynamic quantization (SPEC §3.4-§3.6). Works on any device.

Every step is one float32 torch operation, in this order (the native kernels repeat it bit for bit):

    xs     = float32(x) [* float32(smooth row)]          # one rounding
    max    = rowmax(xs), min = rowmin(xs)                  # exact; NaN anywhere in the row -> NaN
    asymmetric:                                            # RANGE 255 / 15, DST_MAX 127 / 7
        scale  = clamp_min((max - min) / RANGE, 1e-12)     # NaN stays NaN
        offset = DST_MAX - max / scale                     # true division: reproduces SPEC §3.8 offsets exactly
        v      = xs * (1 / scale) + offset                 # the device kernel's Muls(1/scale) then Adds(offset)
    symmetric:                                             # DTYPE_MAX 127 / 7
        scale  = max(|xs|) / DTYPE_MAX
        v      = xs * (scale == 0 ? 0 : 1 / scale)         # all-zero row: scale 0, y 0
    y      = clamp(round_half_even(v), DST_MIN, DST_MAX), NaN -> 0

Non-finite values follow from the formula: a NaN in a row gives NaN scale (and offset) and y = 0 for the
row; +-inf gives scale inf, offset NaN (asymmetric) and y = 0 (or the clamp bound where v is +-inf). An
empty row (last dim 0) counts as all zeros. A NaN scale or offset is stored as the
canonical quiet NaN 0x7FC00000. int4 results are packed 8 per int32 word (SPEC §2).
"""

from __future__ import annotations

import math

import torch

from ..int4 import reference as int4

SCALE_FLOOR = 1e-12


def limits(int4_out: bool) -> tuple[int, int]:
    """(DST_MIN, DST_MAX) of the quantized type."""
    return (-8, 7) if int4_out else (-128, 127)


def smooth_rows(smooth_scales: torch.Tensor, group_index: torch.Tensor | None, rows: int) -> torch.Tensor:
    """float32 smooth factor for every row: ``[H]`` broadcast, or ``[rows, H]`` picked by group_index.

    Row r uses ``smooth_scales[i]`` for the first i with ``group_index[i] > r`` (MoE expert groups).
    """
    s = smooth_scales.to(torch.float32)
    if group_index is None:
        return s
    r = torch.arange(rows, device=smooth_scales.device, dtype=torch.int64)
    expert = torch.searchsorted(group_index.to(torch.int64), r, right=True)
    return s[expert]


def dynamic_quant(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    group_index: torch.Tensor | None,
    int4_out: bool,
    asymmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantizes each row of x's last axis; returns ``(y, scale, offset)`` (offset None when symmetric)."""
    lead, h = tuple(x.shape[:-1]), x.shape[-1]
    rows = math.prod(lead)
    xs = x.reshape(rows, h).to(torch.float32)
    if smooth_scales is not None:
        xs = xs * smooth_rows(smooth_scales, group_index, rows)
    if h == 0:  # an empty row counts as an all-zero row
        row_max = row_min = xs.new_zeros((rows, 1))
    else:
        row_max = xs.amax(-1, keepdim=True)
        row_min = xs.amin(-1, keepdim=True)
    dst_min, dst_max = limits(int4_out)
    if asymmetric:
        scale = torch.clamp_min((row_max - row_min) / (dst_max - dst_min), SCALE_FLOOR)
        offset = dst_max - row_max / scale
        v = xs * torch.reciprocal(scale) + offset
    else:
        amax = xs.abs().amax(-1, keepdim=True) if h else row_max
        scale = amax / dst_max
        offset = None
        v = xs * torch.where(scale == 0, torch.zeros_like(scale), torch.reciprocal(scale))
    y = torch.round(v)
    y = torch.where(torch.isnan(y), torch.zeros_like(y), y).clamp(dst_min, dst_max).to(torch.int8)
    if int4_out:
        y = int4.pack_int4(y)
    y = y.reshape(*lead, y.shape[-1]).contiguous()
    return (
        y,
        _canonical_nan(scale).reshape(lead).contiguous(),
        (None if offset is None else _canonical_nan(offset).reshape(lead).contiguous()),
    )


def _canonical_nan(t: torch.Tensor) -> torch.Tensor:
    # NaN payloads depend on which operand the hardware propagates; store one NaN (0x7FC00000).
    return torch.where(torch.isnan(t), torch.full_like(t, float("nan")), t)
