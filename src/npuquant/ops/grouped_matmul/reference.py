"""Pure-torch golden for ``npu_grouped_matmul`` (any torch device): one existing op per expert.

Expert ``e`` multiplies its activations (its rows of the single ``x``, or its own ``x[e]``) by its
weight with the op the form calls for, and nothing else:

* A8W8 (int8 x, int8 weight): ``npu_quant_matmul(x_e, w_e, scale_e, pertoken_scale=..., bias=b_e,
  output_dtype=...)`` — exact int32 accumulation and that op's epilogue, FP19 scale encoding
  included (int32 output: a scale is not read; a placeholder is passed).
* weight-only A16W8 / A16W4: ``npu_weight_quant_batchmatmul(x_e, w_e, antiquant_scale_e,
  antiquant_offset_e, bias=b_e, antiquant_group_size=k / G)`` (per channel, or per group of the
  k / G rows a ``(G, n)`` scale gives).
* float: ``torch.matmul`` in float32 (float16 / bfloat16 products are exact there), ``+ bias`` in
  float32, one round-half-to-even cast to the output dtype.

The weight-only form with a bias of x's dtype (float16) adds it to the float16 product, rounding
twice, as op-plugin's test golden for this op does (``y = x @ w`` in float16, then ``y += bias``);
its own ``test_npu_grouped_matmul_antiquant_0`` holds npuquant to that rule, and adding in float32
first (``npu_weight_quant_batchmatmul``'s single rounding) misses its tolerance. A float32 bias
(bfloat16 x) is added in float32 before the one rounding, as ``npu_weight_quant_batchmatmul`` does.

An expert without rows gives an empty result (the per-expert ops refuse empty inputs); rows of a
single ``x`` past the last group are zeros in the single output.
"""

from __future__ import annotations

import torch

from ..quant_matmul import _compute as quant_matmul_operator
from ..quant_matmul import npu_quant_matmul
from ..weight_quant_matmul import npu_weight_quant_batchmatmul
from ..weight_quant_matmul import reference as wqbmm

__all__ = ["grouped_matmul", "grouped_matmul_s8", "logical_kn", "experts_of"]

INT4_PER_INT32 = 8


def logical_kn(w: torch.Tensor) -> tuple[int, int]:
    """(k, n) of one expert's weight (its last two dims): int32 holds 8 int4 along n, or along k
    when it is the transposed view of ``(n, k/8)`` words."""
    rows, cols = w.shape[-2], w.shape[-1]
    if w.dtype != torch.int32:
        return rows, cols
    if wqbmm.is_transposed(w):
        return rows * INT4_PER_INT32, cols
    return rows, cols * INT4_PER_INT32


def experts_of(weight: list[torch.Tensor]) -> int:
    """Expert count: the leading dim of one 3-D weight, else the list's length."""
    return weight[0].shape[0] if len(weight) == 1 and weight[0].dim() == 3 else len(weight)


def _pick(params: list[torch.Tensor], e: int, stacked: bool) -> torch.Tensor | None:
    """Expert e's tensor of a per-expert parameter list (stacked along dim 0 for a 3-D weight)."""
    if not params:
        return None
    return params[0][e] if stacked else params[e]


def _float_matmul(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, out: torch.dtype) -> torch.Tensor:
    v = torch.matmul(x.to(torch.float32), w.to(torch.float32))
    if bias is not None:
        v = v + bias.to(torch.float32)
    return v.to(out)


def _one(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    pertoken: torch.Tensor | None,
    antiquant_scale: torch.Tensor | None,
    antiquant_offset: torch.Tensor | None,
    out: torch.dtype,
) -> torch.Tensor:
    k, n = logical_kn(w)
    if x.numel() == 0:
        return torch.empty((*x.shape[:-1], n), dtype=out, device=x.device)
    if x.dtype == torch.int8:
        if scale is None:  # int32 output: the scale is not read
            scale = torch.ones(1, dtype=torch.float32, device=x.device)
        return npu_quant_matmul(x, w, scale, pertoken_scale=pertoken, bias=bias, output_dtype=out)
    if antiquant_scale is not None:
        groups = antiquant_scale.shape[0] if antiquant_scale.dim() == 2 else 1
        group_size = k // groups if groups > 1 else 0
        if bias is not None and bias.dtype == x.dtype:  # float16 bias: added to the rounded product (see above)
            y = npu_weight_quant_batchmatmul(x, w, antiquant_scale, antiquant_offset, antiquant_group_size=group_size)
            return y + bias
        return npu_weight_quant_batchmatmul(
            x, w, antiquant_scale, antiquant_offset, bias=bias, antiquant_group_size=group_size
        )
    return _float_matmul(x, w, bias, out)


def grouped_matmul(
    x: list[torch.Tensor],
    weight: list[torch.Tensor],
    group_sizes: torch.Tensor | None,
    bias: list[torch.Tensor],
    scale: list[torch.Tensor],
    per_token_scale: list[torch.Tensor],
    antiquant_scale: list[torch.Tensor],
    antiquant_offset: list[torch.Tensor],
    out_dtype: torch.dtype,
    single_out: bool,
) -> list[torch.Tensor]:
    """The whole op on normalised arguments (see ``ops.grouped_matmul._operator``)."""
    experts = experts_of(weight)
    stacked = weight[0].dim() == 3 and len(weight) == 1
    counts = group_sizes.tolist() if group_sizes is not None else None
    pertoken = per_token_scale[0] if per_token_scale else None
    ys, row = [], 0
    for e in range(experts):
        if counts is None:
            x_e, pt_e = x[e], pertoken
        else:
            x_e = x[0][row : row + counts[e]]
            pt_e = None if pertoken is None else pertoken[row : row + counts[e]]
            row += counts[e]
        ys.append(
            _one(
                x_e,
                _pick(weight, e, stacked),
                _pick(bias, e, stacked),
                _pick(scale, e, stacked),
                pt_e,
                _pick(antiquant_scale, e, stacked),
                _pick(antiquant_offset, e, stacked),
                out_dtype,
            )
        )
    if not single_out:
        return ys
    if counts is not None and row < x[0].shape[0]:  # rows past the last group
        ys.append(torch.zeros((x[0].shape[0] - row, ys[0].shape[-1]), dtype=out_dtype, device=x[0].device))
    return [torch.cat(ys, 0)]


def grouped_matmul_s8(
    x: list[torch.Tensor],
    weight: list[torch.Tensor],
    group_sizes: torch.Tensor | None,
    scale: torch.Tensor | None,
    offset: torch.Tensor | None,
    pertoken: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    single_out: bool,
) -> list[torch.Tensor]:
    """Golden of the native A8W8 operator ``torch.ops.npuquant.grouped_matmul_s8`` (its arguments:
    csrc/torch_ops.cpp): per expert, the ``quant_matmul`` operator on that expert's slices."""
    experts = experts_of(weight)
    stacked = weight[0].dim() == 3 and len(weight) == 1
    counts = group_sizes.tolist() if group_sizes is not None else None
    ys, row, col = [], 0, 0
    for e in range(experts):
        w = weight[0][e] if stacked else weight[e]
        n = w.shape[-1]
        if counts is None:
            x_e, pt = x[e].reshape(-1, x[e].shape[-1]), pertoken
        else:
            x_e, pt = x[0][row : row + counts[e]], None if pertoken is None else pertoken[row : row + counts[e]]
        cols = slice(col, col + n)
        s = torch.ones(1, dtype=torch.float32, device=w.device) if scale is None else scale[cols]
        b = None if bias is None else bias[cols].reshape(1, n)
        o = None if offset is None else offset[cols]
        y = quant_matmul_operator(x_e.unsqueeze(0), w.unsqueeze(0), s, o, pt, b, out_dtype)[0]
        ys.append(y if counts is not None else y.reshape(*x[e].shape[:-1], n))
        row += x_e.shape[0]
        col += n
    if not single_out:
        return ys
    total = x[0].shape[0] if counts is not None else row
    if row < total:
        ys.append(torch.zeros((total - row, ys[0].shape[-1]), dtype=out_dtype, device=x[0].device))
    return [torch.cat(ys, 0)]
