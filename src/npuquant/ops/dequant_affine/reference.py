"""Pure-torch golden for affine dequantization, on any device:

    out[r, c] = cast((float32(q[r, c]) + offset[i, j]) * scale[i, j]),   i = r // (rows / a), j = c // (cols / b)

(``half_steps``: the sum rounded to float16 before the multiply, float16 arithmetic.)

over q seen as (rows, cols) = (x's leading dims, its last dim), int32 x unpacked to 8 int4 per word, and
the parameters seen as (a, b) = their shape (a 1-D one of n as (1, n)): equal blocks, row-major.
"""

from __future__ import annotations

import torch

from ..int4 import reference as int4


def per_element(p: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Block parameters spread over (rows, cols); a single block row or column broadcasts."""
    p = p.to(torch.float32).reshape(p.shape[0] if p.dim() == 2 else 1, -1)
    if p.shape[0] > 1:
        p = p.repeat_interleave(rows // p.shape[0], 0)
    return p.repeat_interleave(cols // p.shape[1], 1) if p.shape[1] > 1 else p


def dequant_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    out_dtype: torch.dtype,
    half_steps: bool = False,
) -> torch.Tensor:
    """``half_steps`` (float16 scale, offset and output): float16 arithmetic, the sum rounded to
    float16 before the multiply: ``fp16(fp16(q + offset) * scale)``, torch's float16 add then multiply."""
    q = int4.unpack_int4(x) if x.dtype == torch.int32 else x
    if q.numel() == 0:
        return torch.empty(q.shape, dtype=out_dtype, device=x.device)
    v = q.reshape(-1, q.shape[-1] if q.dim() else 1).to(torch.float32)
    if offset is not None:
        v = v + per_element(offset.reshape(scale.shape), *v.shape)
    if half_steps:
        v = v.to(torch.float16).to(torch.float32)
    return (v * per_element(scale, *v.shape)).to(out_dtype).reshape(q.shape)
