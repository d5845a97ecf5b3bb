"""A8W4 ``npu_quant_matmul``: int8 activations times an int32-packed int4 weight, the vendor's numerics.

``npu_quant_matmul(x1, x2, scale, offset=y_offset, pertoken_scale=x1_scale, output_dtype=float16 |
bfloat16, group_sizes=[0, 0, G])`` with x1 int8 ``(m, k)`` and x2 int32 ``(k, n/8)`` (8 int4 along n,
as ``npu_convert_weight_to_int4pack`` packs a ``(k, n)`` weight) — vllm-ascend's W4A8 dynamic method.

Rule (op-plugin's CPU golden ``a8w4_quant_golden`` in ``test_npu_quant_matmul.py``; the device's
cube multiplies int4 by int4, so each int8 activation is split in two int4 halves):

1. Split: ``hi = floor(x1 / 16)`` and ``lo = (x1 & 0xF) - 8``, both in [-8, 7];
   ``16 * hi + lo = x1 - 8`` (not x1: the missing ``8 * sum_k w * s`` is the client's job, passed
   back as ``offset``).
2. Per k-group ``g`` (``G = group_sizes[2]`` rows; the whole k when no group size is given) and
   per half ``h`` in (hi, lo): ``p = float32(h[:, g] @ w[g, :])`` (exact integer sum) ``* s[g, j]``
   (float32), rounded to float16, and accumulated over the groups **in float16**, in group order:
   ``acc_h = fp16(acc_h + fp16(p))`` starting from +0.
3. ``v = float32(acc_hi) * 16 + float32(acc_lo)`` ``[+ offset[j]]`` ``[* pertoken_scale[i]]`` in
   float32, one operation at a time; then RNE to the output dtype.

``s`` is the scale as the kernel sees it: an int64 ``scale`` (from ``npu_trans_quant_param``, as
the vendor test and vllm-ascend pass it) is decoded to its FP19 float32 value; a float32 ``scale``
is used as is. The golden is deterministic and every step is a single IEEE operation, so this
module reproduces it bit for bit (its step-2 sums are exact: ``|sum| <= 64 * G < 2**24``).

Shapes: x1 ``(m, k)``; x2 ``(k, n/8)`` contiguous; scale ``(k / G, n)`` (``(1, n)`` or ``(n,)``
without groups); offset ``(n,)`` float32; pertoken_scale ``(m,)`` or ``(m, 1)`` float32; bias must
be None; output float16 or bfloat16. group_sizes ``[0, 0, G]`` or ``[1, 1, G]`` with G dividing k.

No native kernel has this float16 group accumulation, so the operator's implementation on every
device, the CPU included, is this pure-torch reference (its integer products run as one batched
float32 matmul, exact).
"""

from __future__ import annotations

import torch

from ..._args import check
from ..int4 import reference as int4
from . import reference

__all__ = ["validate", "quant_matmul_a8w4", "a8w4_reference"]

OUTPUT_DTYPES = (torch.float16, torch.bfloat16)
MAX_K = 65535


def validate(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype | None,
    group_sizes: list[int] | None,
) -> tuple[int, int, int, int]:
    """A8W4 argument rules (metadata only); returns (m, k, n, group size)."""
    check(x1.dtype == torch.int8 and x2.dtype == torch.int32, "A8W4 needs int8 x1 and int32 (packed int4) x2")
    check(x1.dim() == 2, f"x1 dim num should be 2 when x1 is int8 and x2 is int32 (A8W4), but it is {x1.dim()}")
    check(x2.dim() == 2, f"x2 dim num should be 2 when x1 is int8 and x2 is int32 (A8W4), but it is {x2.dim()}")
    m, k = x1.shape
    check(
        x2.shape[0] == k and x2.is_contiguous(),
        f"x2 must be a contiguous (k, n/8) int32 tensor with k = {k} for A8W4 (8 int4 packed along n, as "
        f"npu_convert_weight_to_int4pack makes them), but it is {tuple(x2.shape)} with strides {x2.stride()}",
    )
    n = x2.shape[1] * 8
    check(x1.numel() != 0 and x2.numel() != 0, "QuantMatmul not support to process empty tensor currently.")
    check(k <= MAX_K and n <= MAX_K, f"k and n must be at most 65535 for A8W4, but k is {k} and n is {n}")
    if output_dtype not in OUTPUT_DTYPES:
        raise RuntimeError(f"A8W4 output_dtype must be float16 or bfloat16, but output_dtype is {output_dtype}")
    groups = list(group_sizes) if group_sizes else [0, 0, 0]
    if len(groups) != 3:
        raise RuntimeError(f"group_sizes only support input with three elements, but got {len(groups)}")
    g_m, g_n, g_k = groups
    check(
        g_m in (0, 1) and g_n in (0, 1) and g_k >= 0 and g_m == g_n,
        f"A8W4 group_sizes must be [0, 0, G] or [1, 1, G], but got {groups}",
    )
    group = g_k if g_k else k
    if k % group:
        raise RuntimeError(f"k ({k}) must be a multiple of the A8W4 group size {group}")
    if scale.dtype not in (torch.int64, torch.float32):
        raise RuntimeError(f"A8W4 scale's type supported for int64 and float32, but scale.dtype is {scale.dtype}")
    count = k // group
    allowed = [(count, n)] + ([(n,)] if count == 1 else [])
    if tuple(scale.shape) not in allowed:
        raise RuntimeError(
            f"A8W4 scale's shape must be {' or '.join(str(s) for s in allowed)} (k / group size, n), "
            f"but it is {tuple(scale.shape)}"
        )
    if offset is not None:
        check(offset.dtype == torch.float32, f"offset's type supported for float32, but offset.dtype is {offset.dtype}")
        if tuple(offset.shape) != (n,):
            raise RuntimeError(f"A8W4 offset's shape must be ({n},), but it is {tuple(offset.shape)}")
    if pertoken_scale is not None:
        check(
            pertoken_scale.dtype == torch.float32,
            f"pertoken_scale's type supported for float32, but pertoken_scale.dtype is {pertoken_scale.dtype}",
        )
        if tuple(pertoken_scale.shape) not in ((m,), (m, 1)):
            raise RuntimeError(
                f"A8W4 pertoken_scale's shape must be ({m},) or ({m}, 1), but it is {tuple(pertoken_scale.shape)}"
            )
    check(bias is None, "bias must be None for A8W4 (int8 x1, int32 x2): pass the correction as offset")
    for name, t in (("x2", x2), ("scale", scale), ("offset", offset), ("pertoken_scale", pertoken_scale)):
        if t is not None and t.device != x1.device:
            raise RuntimeError(f"{name} must be on the same device as x1 ({x1.device}), but is on {t.device}")
    return m, k, n, group


def a8w4_reference(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The rule of the module docstring on validated arguments."""
    m, k = x1.shape
    w = int4.unpack_int4(x2)  # (k, n)
    n = w.shape[1]
    groups = k // group_size
    if scale.dtype == torch.int64:
        s, _ = reference.decode_quant_param(scale.reshape(-1))
    else:
        s = scale.reshape(-1)
    s = s.reshape(groups, 1, n)
    xi = x1.to(torch.int32)
    halves = torch.stack((torch.div(xi, 16, rounding_mode="floor"), (xi & 0xF) - 8))  # (2, m, k)
    halves = halves.reshape(2 * m, groups, group_size).transpose(0, 1).to(torch.float32)  # (groups, 2m, G)
    parts = torch.bmm(halves, w.reshape(groups, group_size, n).to(torch.float32))  # exact integer sums
    parts = (parts * s).to(torch.float16)
    acc = torch.zeros(2 * m, n, dtype=torch.float16, device=x1.device)
    for g in range(groups):  # float16 accumulation in group order
        acc = acc + parts[g]
    acc = acc.reshape(2, m, n).to(torch.float32)
    v = acc[0] * 16 + acc[1]
    if offset is not None:
        v = v + offset.reshape(1, n)
    if pertoken_scale is not None:
        v = v * pertoken_scale.reshape(m, 1)
    return v.to(out_dtype).contiguous()


@torch.library.custom_op("npuquant::quant_matmul_a8w4", mutates_args=())
def quant_matmul_a8w4(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``torch.ops.npuquant.quant_matmul_a8w4`` on validated arguments (the reference on every device)."""
    check(group_size > 0 and x1.shape[1] % group_size == 0, "group_size must be positive and divide k")
    return a8w4_reference(x1, x2, scale, offset, pertoken_scale, group_size, out_dtype)


@quant_matmul_a8w4.register_fake
def _(x1, x2, scale, offset, pertoken_scale, group_size, out_dtype):  # the operator's signature
    return x1.new_empty((x1.shape[0], x2.shape[1] * 8), dtype=out_dtype)


def npu_quant_matmul_a8w4(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype | None,
    group_sizes: list[int] | None,
) -> torch.Tensor:
    """``npu_quant_matmul``'s A8W4 branch: validation, then the operator."""
    _, _, _, group = validate(x1, x2, scale, offset, pertoken_scale, bias, output_dtype, group_sizes)
    return torch.ops.npuquant.quant_matmul_a8w4(x1, x2, scale, offset, pertoken_scale, group, output_dtype)
