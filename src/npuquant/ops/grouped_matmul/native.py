"""CPU path of ``torch.ops.npuquant.grouped_matmul``.

* A8W8 (int8 x, int8 weight) — native: one call of the C++ operator
  ``torch.ops.npuquant.grouped_matmul_s8`` (csrc/torch_ops.cpp), which checks every tensor and
  runs each expert through the exact int8 GEMV / packed GEMM and epilogue of ``npu_quant_matmul``
  (csrc/gemm_s8.c): when the experts' work is balanced enough, one expert per thread in a single
  parallel region (dynamic scheduling); otherwise one after the other, each on all threads. Either
  way the bits are the same (exact integer accumulation, per-element epilogue). No per-expert Python: the
  scales are converted in one vectorised step (int64 quant params decoded, float32 scales with
  float16 output and no per-token scale FP19-encoded exactly as ``npu_quant_matmul`` does) and
  handed over with the biases as flat per-column vectors (``torch.cat`` of a weight list's
  per-expert tensors, a view for one 3-D weight).
* float and weight-only (A16W8 / A16W4) forms — the reference (:mod:`.reference`), whose per-expert
  ``npu_weight_quant_batchmatmul`` / float32 ``torch.matmul`` already run npuquant's CPU paths.
"""

from __future__ import annotations

import torch

from ... import _native
from ..quant_matmul import reference as qmm
from . import reference

__all__ = ["grouped_matmul"]


def _fake_s8(x, weight, group_sizes, scale, offset, pertoken, bias, out_dtype, single_out):  # the operator's
    ns = [reference.logical_kn(weight[0][0] if weight[0].dim() == 3 else w)[1] for w in weight]
    experts = reference.experts_of(weight)
    if len(ns) == 1 and experts > 1:
        ns = ns * experts
    if single_out:
        rows = x[0].shape[0] if group_sizes is not None else sum(t.shape[0] for t in x)
        return [x[0].new_empty((rows, ns[0]), dtype=out_dtype)]
    if group_sizes is None:
        return [t.new_empty((*t.shape[:-1], n), dtype=out_dtype) for t, n in zip(x, ns)]
    ctx = torch.library.get_ctx()
    return [x[0].new_empty((ctx.new_dynamic_size(), n), dtype=out_dtype) for n in ns]


#: ``torch.ops.npuquant.grouped_matmul_s8``: the C++ kernel on CPU, :func:`.reference.grouped_matmul_s8` elsewhere.
grouped_matmul_s8 = _native.operator("grouped_matmul_s8", reference.grouped_matmul_s8, _fake_s8)


def _flat(params: list[torch.Tensor]) -> torch.Tensor | None:
    """Every expert's per-column values back to back (a view for one stacked tensor)."""
    if not params:
        return None
    return params[0].reshape(-1) if len(params) == 1 else torch.cat(params)


def _effective_scale(
    scale: list[torch.Tensor], pertoken: torch.Tensor | None, out_dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What ``npu_quant_matmul``'s normalisation gives its kernel, for every expert at once:
    (float32 scale, float32 integer offset or None)."""
    if out_dtype == torch.int32 or not scale:
        return None, None
    flat = _flat(scale)
    if flat.dtype == torch.int64:  # int8 output: the encoded offset is the one used
        s, o = qmm.decode_quant_param(flat)
        return s, (o if out_dtype == torch.int8 else None)
    if flat.dtype == torch.float32 and pertoken is None and out_dtype in (torch.int8, torch.float16):
        return qmm.decode_quant_param(qmm.trans_quant_param(flat))[0], None
    return flat.to(torch.float32), None


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
    """Same contract and result, bit for bit, as :func:`.reference.grouped_matmul`."""
    if x[0].dtype != torch.int8 or weight[0].dtype != torch.int8:
        return reference.grouped_matmul(
            x, weight, group_sizes, bias, scale, per_token_scale, antiquant_scale, antiquant_offset, out_dtype,
            single_out,
        )
    pertoken = per_token_scale[0] if per_token_scale and out_dtype != torch.int32 else None
    if pertoken is not None and group_sizes is None:  # one expert, one 2-D x: all its rows
        group_sizes = torch.full((1,), x[0].shape[0], dtype=torch.int64)
    s, o = _effective_scale(scale, pertoken, out_dtype)
    return grouped_matmul_s8(x, weight, group_sizes, s, o, pertoken, _flat(bias), out_dtype, single_out)
