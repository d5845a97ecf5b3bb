"""Pure-torch golden for affine dequantization, on any device:

    out[r, c] = cast((float32(q[r, c]) + offset[p]) * scale[p]),   p = block (r // row_block, c // col_block)

over q seen as (rows, cols) = (x's leading dims, its last dim), int32 x unpacked to 8 int4 per word.
"""

from __future__ import annotations

import torch

from ..int4 import reference as int4


def _per_element(p: torch.Tensor, rows: int, cols: int, row_block: int, col_block: int) -> torch.Tensor:
    """Block parameters (row-major blocks) spread over (rows, cols); a single block row or column broadcasts."""
    p = p.to(torch.float32).reshape(-(-rows // row_block), -(-cols // col_block))
    if p.shape[0] > 1:
        p = p.repeat_interleave(row_block, 0)[:rows]
    return p.repeat_interleave(col_block, 1)[:, :cols] if p.shape[1] > 1 else p


def dequant_affine(
    x: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    row_block: int,
    col_block: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    q = int4.unpack_int4(x) if x.dtype == torch.int32 else x
    if q.numel() == 0:
        return torch.empty(q.shape, dtype=out_dtype, device=x.device)
    v = q.reshape(-1, q.shape[-1] if q.dim() else 1).to(torch.float32)
    shape = (v.shape[0], v.shape[1], row_block, col_block)
    if offset is not None:
        v = v + _per_element(offset, *shape)
    return (v * _per_element(scale, *shape)).to(out_dtype).reshape(q.shape)
