"""Pure-torch golden for per-row / per-column dequantization (SPEC §8.1, seed formula):

    dst = (float32(x) + zero_points) * scale         # dst = float32(x) * scale without zero points

axis -1 (per-row): scale has shape ``x.shape[:-1]`` and is broadcast along the last axis;
axis -2 (per-column): scale has shape ``x.shape[:-2] + x.shape[-1:]``, broadcast along axis -2.
Works on any torch device and any strides.
"""

from __future__ import annotations

import torch


def dequantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_points: torch.Tensor | None,
    axis: int,
) -> torch.Tensor:
    # Re-insert the reduced axis so the parameters broadcast against x.
    reduced = -1 if axis == -1 else -2
    s = scale.to(torch.float32).unsqueeze(reduced)
    xf = x.to(torch.float32)
    if zero_points is not None:
        xf = xf + zero_points.to(torch.float32).unsqueeze(reduced)
    return (xf * s).contiguous()
