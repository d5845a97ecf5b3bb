"""``quant_matmul_asymmetric``: the A8W8 matmul for per-token *asymmetric* activations.

``npu_dynamic_quant_asymmetric`` gives ``x_q = round(x / x_scale + x_offset)`` per row (SPEC §3.4),
so ``x ~ (x_q - x_offset) * x_scale``; with per-column weights ``W ~ W_q * w_scale``::

    x @ W ~ (x_q @ W_q - x_offset (outer) colsum(W_q)) * w_scale * x_scale

The integer product is exact and the zero-point correction uses the weight's exact column sums
(computed in the same pass), so an asymmetric activation costs one multiply-subtract per output.

Exact operation order, float32, one rounding per step, no fused multiply-add (the native kernel
and :func:`reference` here are bit-identical)::

    acc[i, j]    = sum_k x_q[i, k] * W[k, j]                 int32, exact (k <= 131071)
    colsum[j]    = sum_k W[k, j]                             exact integer, exact in float32
    v = float32(acc[i, j]) - x_offset[i] * float32(colsum[j])
    v = v * w_scale[j]
    v = v * x_scale[i]
    v = v + float32(bias[j])                                 (when bias is given)
    out = cast(v)                                            round half to even
"""

from __future__ import annotations

import math

import torch

from ... import _native
from ..._args import check, optional_tensors, tensors, to_dtype
from . import reference as qm_reference

__all__ = ["quant_matmul_asymmetric", "reference", "validate", "MAX_K"]

MAX_K = 131071  # |acc| < 2**31 and |colsum| <= 2**24: exact int32 sums, exact float32 column sums
OUTPUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SCALE_DTYPES = (torch.float32, torch.bfloat16)
BIAS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def validate(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    x_offset: torch.Tensor,
    weight_shape: tuple[int, ...],
    weight_dtype: torch.dtype,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype | None,
) -> torch.dtype:
    """Metadata checks (run by the real op and the fake kernel); returns the output dtype.

    Messages are formatted only when a rule fails (this runs on every call).
    """
    if x_q.dtype != torch.int8:
        raise RuntimeError(f"x_q must be int8, but got {x_q.dtype}")
    check(x_q.dim() >= 1, "x_q must have at least 1 dimension")
    rows = x_q.shape[:-1]
    for name, t in (("x_scale", x_scale), ("x_offset", x_offset)):
        if t.dtype != torch.float32:
            raise RuntimeError(f"{name} must be float32, but got {t.dtype}")
        if t.shape != rows:
            raise RuntimeError(f"{name} must have shape x_q.shape[:-1] = {tuple(rows)}, but got {tuple(t.shape)}")
    if weight_dtype != torch.int8:
        raise RuntimeError(f"weight must be int8 (k, n), but got {weight_dtype}")
    if len(weight_shape) != 2:
        raise RuntimeError(f"weight must be 2-D (k, n), but got shape {tuple(weight_shape)}")
    k, n = weight_shape
    if k != x_q.shape[-1]:
        raise RuntimeError(f"k of x_q ({x_q.shape[-1]}) and of weight ({k}) must be equal")
    if k > MAX_K:
        raise RuntimeError(f"k must be at most {MAX_K} for exact int32 accumulation, but it is {k}")
    if w_scale.dtype not in SCALE_DTYPES:
        raise RuntimeError(f"w_scale must be float32 or bfloat16, but got {w_scale.dtype}")
    if not (w_scale.dim() == 1 and w_scale.shape[0] in (1, n)):
        raise RuntimeError(f"w_scale must be 1-D of length 1 or n ({n}), but got shape {tuple(w_scale.shape)}")
    if bias is not None:
        if bias.dtype not in BIAS_DTYPES:
            raise RuntimeError(f"bias must be float32, float16 or bfloat16, but got {bias.dtype}")
        if not (bias.dim() == 1 and bias.shape[0] == n):
            raise RuntimeError(f"bias must be 1-D of length n ({n}), but got {tuple(bias.shape)}")
    out = torch.float32 if output_dtype is None else output_dtype
    if out not in OUTPUT_DTYPES:
        raise RuntimeError(f"output_dtype must be float32, float16 or bfloat16, but got {output_dtype}")
    others = (x_scale, x_offset, w_scale, bias)
    if not (x_q.is_cpu and all(t is None or t.is_cpu for t in others)):  # else: no torch.device objects needed
        for name, t in zip(("x_scale", "x_offset", "w_scale", "bias"), others):
            if t is not None and t.device != x_q.device:
                raise RuntimeError(f"{name} must be on x_q's device ({x_q.device}), but is on {t.device}")
    return out


def reference(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    x_offset: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Pure-torch golden (any device) on 2-D x_q ``(m, k)``, 1-D x_scale/x_offset ``(m,)``, weight ``(k, n)``."""
    acc = qm_reference.int_matmul(x_q.unsqueeze(0), weight.unsqueeze(0))[0]
    colsum = weight.to(torch.int64).sum(0).to(torch.float32)
    v = acc.to(torch.float32) - x_offset.to(torch.float32).unsqueeze(-1) * colsum
    v = v * w_scale.to(torch.float32)
    v = v * x_scale.to(torch.float32).unsqueeze(-1)
    if bias is not None:
        v = v + bias.to(torch.float32)
    return v.to(out_dtype).contiguous()


def _reference_2d(x_q, x_scale, x_offset, weight, w_scale, bias, out_dtype):  # the operator's signature
    return reference(x_q, x_scale, x_offset, weight, w_scale, bias, out_dtype)


def _fake(x_q, x_scale, x_offset, weight, w_scale, bias, out_dtype):
    return x_q.new_empty((x_q.shape[0], weight.shape[-1]), dtype=out_dtype)


# On 2-D x_q (m, k), 1-D x_scale / x_offset (m,), weight (k, n): the native GEMM on CPU, else the reference.
_operator = _native.operator("quant_matmul_asymmetric", _reference_2d, _fake)


def _compute(x_q, x_scale, x_offset, weight, w_scale, bias, out_dtype) -> torch.Tensor:
    """The operator on validated arguments of any rank (``x_q`` ``(..., k)``)."""
    lead = x_q.shape[:-1]
    x2 = x_q.reshape(math.prod(lead), x_q.shape[-1])  # explicit: k == 0 must stay unambiguous
    out = _operator(x2, x_scale.reshape(-1), x_offset.reshape(-1), weight, w_scale, bias, out_dtype)
    return out.reshape(*lead, out.shape[-1])


def quant_matmul_asymmetric(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    x_offset: torch.Tensor,
    weight: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    output_dtype: torch.dtype | int | None = torch.float32,
) -> torch.Tensor:
    """``(x_q - x_offset) @ W * x_scale * w_scale (+ bias)`` with an exact integer core.

    Feed it ``npu_dynamic_quant_asymmetric``'s outputs and per-output-channel int8 weights.
    See the module docstring for the exact float32 operation order.

    Args:
        x_q: int8 ``(..., k)``.
        x_scale, x_offset: float32 ``x_q.shape[:-1]`` (the per-token scale and float zero point).
        weight: int8 ``(k, n)`` tensor, any strides (e.g. ``w.t()`` of a ``(n, k)`` weight, which the
            native GEMV reads in place for up to 8 rows; larger inputs pack it per call).
        w_scale: float32/bfloat16 ``(n,)`` or ``(1,)``.
        bias: optional float32/float16/bfloat16 ``(n,)``, added last.
        output_dtype: torch.float32 (default), torch.float16 or torch.bfloat16 (or a ScalarType code).

    Returns:
        ``(..., n)`` tensor of ``output_dtype``.

    Raises:
        RuntimeError: naming the argument and the rule it breaks.
    """
    tensors("quant_matmul_asymmetric", x_q=x_q, x_scale=x_scale, x_offset=x_offset, weight=weight, w_scale=w_scale)
    optional_tensors("quant_matmul_asymmetric", bias=bias)
    out = output_dtype  # a torch.dtype passes as is: to_dtype's message would be formatted for nothing
    if not isinstance(out, torch.dtype):
        out = to_dtype(output_dtype, f"output_dtype must be float32, float16 or bfloat16, but got {output_dtype}")
    out = validate(x_q, x_scale, x_offset, weight.shape, weight.dtype, w_scale, bias, out)
    return _compute(x_q, x_scale, x_offset, weight, w_scale, bias, out)
