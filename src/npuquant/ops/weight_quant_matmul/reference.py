"""Pure-torch golden for ``npu_weight_quant_batchmatmul`` (weight-only quantized matmul). Any torch device.

The device runs two units in sequence, and so does this golden:

1. **Anti-quantization of the weight** (vector unit), per element of the logical ``(k, n)`` weight
   ``w`` (int8, or int4 unpacked from the int32 words), with the scale / offset entry of its
   column ``j`` (and of its k-group ``k // G`` in per-group mode):

   * float16 activations: ``w16 = fp16(fp16(w + offset) * scale)`` — two float16 operations,
     each rounded to nearest even (the device computes in half precision: Add, then Mul).
   * bfloat16 activations: ``w16 = bf16((float32(w) + float32(offset)) * float32(scale))`` —
     float32 arithmetic, one round-half-to-even cast (the device widens to float32 for bf16).
     This is exactly ``npu_anti_quant``'s formula.
   * float32 activations (a CPU extension): the bfloat16 rule without the final cast.

   Without an offset the addition is skipped. op-plugin's CPU golden in
   ``test_npu_weight_quant_batchmatmul.py`` writes ``torch.matmul(x, (weight + offset) * scale)``
   in x's dtype: for float16 that is the rule above exactly (torch's float16 add and multiply
   are correctly rounded); for bfloat16 it rounds twice where the device rounds once, so the
   device's single rounding is the one implemented (the test compares with rtol 1e-3).

2. **Matmul** (cube unit): the products of float16 / bfloat16 values are exact in float32 and
   accumulate in float32: ``acc = float32(x) @ float32(w16)``; then ``v = acc + float32(bias)``.

3. **Output**: without ``quant_scale``, ``cast_x_dtype(v)`` (RNE). With ``quant_scale`` the
   output is int8 through the fixpipe: ``y = saturate_int8(RNE(v * qscale[j] + qoffset[j]))``
   in float32, where ``(qscale, qoffset)`` are the FP19 scale and the integer offset of
   ``npu_trans_quant_param(quant_scale, quant_offset)`` (torch_npu converts a float32
   ``quant_scale`` that way before the kernel; an int64 one is decoded as is, its encoded
   offset being the one used, as in ``npu_quant_matmul``).

int64 ``antiquant_scale`` (the fixpipe per-channel mode: float16 x, int8 weight, optional int32
offset) moves the scale after the matmul: ``v = (float32(x) @ float32(w + offset)) * scale[j]
(+ bias)``, with ``scale`` the FP19 value decoded from the int64 and ``w + offset`` an exact
integer.

The float32 matmul's summation order is the only freedom left; native and reference share the
same call, so they agree bit for bit.
"""

from __future__ import annotations

import torch

from ..int4 import reference as int4
from ..quant_matmul import reference as qmm


def is_transposed(t: torch.Tensor) -> bool:
    """torch_npu's ``is_transpose_last_two_dims``: the last two dims are the transpose of a contiguous pair.

    ``stride(-2) == 1 and stride(-1) == size(-2)``; a ``(.., 1, 1)`` tail does not count.
    """
    if t.dim() < 2:
        return False
    rows, cols = t.shape[-2], t.shape[-1]
    if rows == 1 and cols == 1:
        return False
    return t.stride(-2) == 1 and t.stride(-1) == rows


def logical_weight(weight: torch.Tensor, packed_along_k: bool) -> torch.Tensor:
    """The weight's values as int8 ``(*b, k, n)``: int8 as is; int32 unpacked along n, or along k
    when it is the transposed view of ``(*b, n, k/8)`` words."""
    if weight.dtype != torch.int32:
        return weight
    if packed_along_k:
        return int4.unpack_int4(weight.transpose(-1, -2)).transpose(-1, -2)
    return int4.unpack_int4(weight)


def expand_params(param: torch.Tensor, k: int, n: int, group_size: int) -> torch.Tensor:
    """A scale / offset of any accepted shape -> broadcastable against ``(k, n)``.

    per-tensor ``(1,)``/``(1, 1)`` and per-channel ``(n,)``/``(1, n)`` -> ``(1, 1)`` / ``(1, n)``;
    per-group ``(ceil(k / G), n)`` -> ``(k, n)`` (row r uses group ``r // G``).
    """
    if group_size > 0:
        return param.repeat_interleave(group_size, dim=0)[:k]
    return param.reshape(1, -1)


def antiquant_weight(
    w: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    x_dtype: torch.dtype,
) -> torch.Tensor:
    """Step 1 on logical int8 values ``w`` with scale / offset already broadcastable (see module doc)."""
    if x_dtype == torch.float16:
        v = w.to(torch.float16)
        if offset is not None:
            v = v + offset.to(torch.float16)
        return v * scale.to(torch.float16)
    v = w.to(torch.float32)
    if offset is not None:
        v = v + offset.to(torch.float32)
    return (v * scale.to(torch.float32)).to(x_dtype)


def matmul_output(
    x: torch.Tensor,
    w: torch.Tensor,
    bias: torch.Tensor | None,
    channel_scale: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    quant_offset: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Steps 2 and 3: float32 matmul of ``x`` and the anti-quantized (or integer) weight ``w``, then the epilogue.

    ``channel_scale`` (float32 ``(1, n)``) is the int64-antiquant-scale mode's post-matmul scale;
    ``quant_scale`` / ``quant_offset`` are the *effective* (decoded) float32 ``(1, n)``/``(1, 1)``
    requant parameters, given for int8 output only.
    """
    v = torch.matmul(x.to(torch.float32), w.to(torch.float32))
    if channel_scale is not None:
        v = v * channel_scale
    if bias is not None:
        v = v + bias.to(torch.float32).reshape(-1)
    if quant_scale is None:
        return v.to(out_dtype).contiguous()
    v = v * quant_scale
    if quant_offset is not None:
        v = v + quant_offset
    v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
    return torch.round(v).clamp(-128, 127).to(torch.int8).contiguous()


def effective_quant_params(
    quant_scale: torch.Tensor, quant_offset: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the fixpipe sees: (FP19 float32 scale, integer float32 offset), both ``(1, len)``."""
    if quant_scale.dtype == torch.int64:
        param = quant_scale.reshape(-1)
    else:
        offset = None if quant_offset is None else quant_offset.to(torch.float32).reshape(-1)
        param = qmm.trans_quant_param(quant_scale.to(torch.float32).reshape(-1), offset)
    scale, offset = qmm.decode_quant_param(param)
    return scale.reshape(1, -1), offset.reshape(1, -1)


def weight_quant_batchmatmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    antiquant_scale: torch.Tensor,
    antiquant_offset: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    quant_offset: torch.Tensor | None,
    bias: torch.Tensor | None,
    group_size: int,
    packed_along_k: bool,
) -> torch.Tensor:
    """The whole op on validated arguments (module doc): anti-quantize, float32 matmul, epilogue."""
    w = logical_weight(weight, packed_along_k)
    k, n = w.shape[-2], w.shape[-1]
    if antiquant_scale.dtype == torch.int64:  # fixpipe per-channel mode: scale after the matmul
        channel_scale, _ = qmm.decode_quant_param(antiquant_scale.reshape(-1))
        w_int = w.to(torch.int32)
        if antiquant_offset is not None:
            w_int = w_int + antiquant_offset.to(torch.int32).reshape(1, -1)
        return matmul_output(x, w_int, bias, channel_scale.reshape(1, -1), None, None, x.dtype)
    scale = expand_params(antiquant_scale, k, n, group_size)
    offset = None if antiquant_offset is None else expand_params(antiquant_offset, k, n, group_size)
    w16 = antiquant_weight(w, scale, offset, x.dtype)
    return finish(x, w16, bias, quant_scale, quant_offset)


def finish(
    x: torch.Tensor,
    w16: torch.Tensor,
    bias: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    quant_offset: torch.Tensor | None,
) -> torch.Tensor:
    """Steps 2-3 after the anti-quantization (shared by the native path)."""
    if quant_scale is None:
        return matmul_output(x, w16, bias, None, None, None, x.dtype)
    qs, qo = effective_quant_params(quant_scale, quant_offset)
    return matmul_output(x, w16, bias, None, qs, qo, torch.int8)
