"""Pure-torch golden for ``npu_quant_matmul`` and ``npu_trans_quant_param`` (SPEC §4, §5). Any torch device.

Three pieces, each the hardware's step:

* :func:`trans_quant_param` / :func:`decode_quant_param`: the 64-bit dequant parameter the
  fixpipe consumes (FP19 scale in bits 13..31, 9-bit offset in bits 37..45, flag bit 46).
* :func:`int_matmul`: the Cube unit's exact int32 accumulation of int8 x int8 products.
* :func:`epilogue`: the float32 dequant / requant of that accumulator into the output dtype.
"""

from __future__ import annotations

import torch

FP19_MASK = 0xFFFFE000  # keeps sign, exponent and the top 10 mantissa bits of a float32
FLAG_BIT = 1 << 46
KEEP_SCALE_AND_FLAG = 0x4000FFFFFFFF  # bits 0..31 and 46
OFFSET_SHIFT = 37
OFFSET_MIN, OFFSET_MAX = -256, 255
# Chunk of k for which a float32 matmul of int8 values is exact: every partial sum, in any
# order, is an integer of magnitude <= 1024 * 128 * 128 = 2**24, which float32 holds exactly.
EXACT_FP32_K_CHUNK = 1024
# Below this k, |sum of k int8 products| <= k * 2**14 < 2**31: the int32 accumulator cannot wrap.
MAX_K_WITHOUT_OVERFLOW = 2**17


def _float32_bits(t: torch.Tensor) -> torch.Tensor:
    """IEEE bits of a float32 tensor as non-negative int64 (0 .. 2**32-1)."""
    return t.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def _float32_from_bits(bits: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_float32_bits` (only the low 32 bits are read)."""
    low = bits & 0xFFFFFFFF
    signed = torch.where(low >= 2**31, low - 2**32, low)
    return signed.to(torch.int32).view(torch.float32)


def fp19_bits(scale: torch.Tensor, round_mode: int = 0) -> torch.Tensor:
    """float32 scale -> its FP19 form as float32 bits (int64), SPEC §5.2.

    round_mode 0 truncates the 13 low mantissa bits; round_mode 1 rounds them half-to-even
    (a carry may ripple into the exponent, up to infinity), flushes denormals to a signed
    zero and truncates inf/NaN.
    """
    u = _float32_bits(scale.to(torch.float32))
    truncated = u & FP19_MASK
    if round_mode == 0:
        return truncated
    exponent = (u >> 23) & 0xFF
    kept_lsb = (u >> 13) & 1
    round_bit = (u >> 12) & 1
    sticky = (u & 0xFFF) != 0
    round_up = (round_bit == 1) & (sticky | (kept_lsb == 1))
    rounded = truncated + (round_up.to(torch.int64) << 13)  # carries into the exponent on mantissa overflow
    rounded = torch.where(exponent == 255, truncated, rounded)
    return torch.where(exponent == 0, u & 0x80000000, rounded)


def round_offset(offset: torch.Tensor) -> torch.Tensor:
    """float32 offset -> integer offset as int64: RNE, clamped to [-256, 255]; NaN -> 0 (SPEC §5.2)."""
    o = offset.to(torch.float32)
    o = torch.where(torch.isnan(o), torch.zeros_like(o), o)
    return torch.round(o).clamp(OFFSET_MIN, OFFSET_MAX).to(torch.int64)


def trans_quant_param(scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0) -> torch.Tensor:
    """npu_trans_quant_param: float32 scale (+ offset) -> int64 ``FP19(scale) | 1<<46 | (offset & 0x1FF) << 37``.

    A 1-D scale and offset broadcast against each other (a length-1 one is replicated);
    a ``(1, n)`` scale keeps its shape.
    """
    packed = fp19_bits(scale, round_mode) | FLAG_BIT
    if offset is not None:
        if scale.dim() == 1:
            packed, off = torch.broadcast_tensors(packed, offset.reshape(-1))
        else:
            off = offset
        packed = (packed & KEEP_SCALE_AND_FLAG) | ((round_offset(off) & 0x1FF) << OFFSET_SHIFT)
    return packed.contiguous()


def decode_quant_param(quant_param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 from :func:`trans_quant_param` -> (float32 FP19 scale, float32 integer offset), SPEC §5.3."""
    scale = _float32_from_bits(quant_param & FP19_MASK)
    o9 = (quant_param >> OFFSET_SHIFT) & 0x1FF
    offset = torch.where(o9 >= 256, o9 - 512, o9).to(torch.float32)
    return scale, offset


def _wrap_int32(values: torch.Tensor) -> torch.Tensor:
    """int64 -> int32 modulo 2**32 (two's complement), as a 32-bit accumulator register wraps."""
    return (((values + 2**31) % 2**32) - 2**31).to(torch.int32)


def _float32_matmul_is_ieee(device: torch.device) -> bool:
    """Whether float32 matmul on this device is plain IEEE float32 (no TF32 / bf16 shortcuts)."""
    backend = {"cpu": "mkldnn", "cuda": "cuda"}.get(device.type)
    if backend is None:  # e.g. MPS: no float64 to fall back to, and its float32 matmul is IEEE
        return True
    precision = getattr(getattr(getattr(torch.backends, backend, None), "matmul", None), "fp32_precision", "none")
    if precision == "ieee":
        return True
    if precision != "none":
        return False
    try:
        if torch.get_float32_matmul_precision() != "highest":
            return False
    except RuntimeError:  # legacy and new precision APIs mixed: assume the worst
        return False
    return not (device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)


def int_matmul(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Exact int32 accumulation of ``x1 @ x2`` for int8 operands, wrapping modulo 2**32 like the Cube unit.

    Args:
        x1: int8 ``(B, m, k)``; x2: int8 ``(B, k, n)``; any strides (a batch stride of 0 is fine).

    Returns:
        int32 ``(B, m, n)``.

    Float matmul of small integers is exact as long as every partial sum is representable:
    float32 in k-chunks of 1024 (|sum| <= 2**24), or float64 in one go where float32 matmul may
    take precision shortcuts. Chunk sums are added in float64 (exact below 2**53); below
    k = 2**17 no int8 sum can leave the int32 range, beyond it the sum is wrapped modulo 2**32.
    """
    batch, m, k = x1.shape
    n = x2.shape[-1]
    use_fp32 = _float32_matmul_is_ieee(x1.device)  # float64 otherwise (CPU and CUDA have it)
    ftype = torch.float32 if use_fp32 else torch.float64
    chunk = EXACT_FP32_K_CHUNK if use_fp32 else max(k, 1)
    a, b = _to_float(x1, ftype), _to_float(x2, ftype)
    shared_weight = batch > 1 and x2.stride(0) == 0
    if shared_weight:  # one weight for every batch: plain 2-D matmuls
        a, b = a.reshape(batch * m, k), b[0]
    acc = None
    for k0 in range(0, k, chunk):
        part = torch.matmul(a[..., k0 : k0 + chunk], b[..., k0 : k0 + chunk, :])
        acc = part if acc is None else acc.to(torch.float64).add_(part)
    if acc is None:  # k == 0
        return torch.zeros((batch, m, n), dtype=torch.int32, device=x1.device)
    acc = acc.reshape(batch, m, n)
    if k < MAX_K_WITHOUT_OVERFLOW:
        return acc.to(torch.int32)
    return _wrap_int32(acc.to(torch.int64))


def _to_float(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int8 -> float copy keeping the memory layout (a transposed weight stays transposed, which
    BLAS takes as is), converting a broadcast (stride-0) batch only once."""
    if t.shape[0] > 1 and t.stride(0) == 0:
        return t[:1].to(dtype).expand(t.shape)
    return t.to(dtype)


def epilogue(
    acc: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Turns the int32 accumulator into the output, in the hardware's order (SPEC §4.2).

    Args:
        acc: int32 ``(B, m, n)`` (or int64 holding values that are wrapped to int32 first).
        scale: float32 ``(1,)`` or ``(n,)``, broadcast along n. Not read for int32 output.
        offset: float32 ``(1,)``/``(n,)`` integer-valued, or None; int8 output only.
        pertoken_scale: float32 ``(m,)`` or None, broadcast along n.
        bias: None or ``(1, n)``/``(B, n)``; int32 joins the integer accumulator, bf16/fp16/fp32
            is added in float32 after scaling.
        out_dtype: int8, float16, bfloat16 or int32.

    Exact operation order (float32, one rounding per step, no fused multiply-add):

    1. ``a = acc + bias``            int32, wrapping (int32 bias only)
    2. int32 output: return ``a``    (scale, pertoken and offset are not applied)
    3. ``v = float32(a)``            RNE for |a| > 2**24
    4. ``v = v * scale[j]``
    5. ``v = v * pertoken_scale[i]`` (if given)
    6. ``v = v + float32(bias[j])``  (float bias) or ``v = v + offset[j]`` (int8 output with offset)
    7. cast: float16/bfloat16 -> RNE (overflow -> ±inf); int8 -> NaN becomes 0, RNE to an
       integer, then saturate to [-128, 127].
    """
    if acc.dtype != torch.int32:
        acc = _wrap_int32(acc.to(torch.int64))
    bias_rows = None if bias is None else bias.unsqueeze(-2)  # (Bb, 1, n) broadcasts over m
    if bias_rows is not None and bias_rows.dtype == torch.int32:
        acc = _wrap_int32(acc.to(torch.int64) + bias_rows.to(torch.int64))
    if out_dtype == torch.int32:
        return acc.contiguous()
    v = acc.to(torch.float32)
    v = v * scale.to(torch.float32)
    if pertoken_scale is not None:
        v = v * pertoken_scale.to(torch.float32).unsqueeze(-1)
    if bias_rows is not None and bias_rows.dtype != torch.int32:
        v = v + bias_rows.to(torch.float32)
    if offset is not None:
        v = v + offset.to(torch.float32)
    if out_dtype == torch.int8:
        v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
        return torch.round(v).clamp(-128, 127).to(torch.int8).contiguous()
    return v.to(out_dtype).contiguous()


def quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The whole op on normalised arguments (see ``ops.quant_matmul._compute``): exact GEMM, then the epilogue."""
    return epilogue(int_matmul(x1, x2), scale, offset, pertoken_scale, bias, out_dtype)
