"""``npu_quant_matmul`` with ``group_sizes``: the A4W4 per-group (K-G) and int8 per-block (G-B) modes of Atlas A2/A3.

Both modes are documented for the A2/A3 line (the emulated SoC, Ascend910B4) by torch_npu's
``npu_quant_matmul`` page (dtype table row "int32, int32, float32, float16 offset, float32
pertoken, bf16/fp16") and by aclnnQuantMatmulV5 (K-G and G-B scenarios). The 950 line's other
block modes (B-B ``[128, 128, 128]``, mx ``[1, 1, 32]``) take float8 / MX inputs, which
npuquant does not implement; for int8 inputs they keep torch_npu's message ("group_sizes's value
must be 0 or [1,128,128]").

**A4W4 per-group** (``x1``, ``x2`` int32 = 8 packed int4; pertoken-pergroup asymmetric):

* x1 ``(m, k/8)``; x2 ``(k, n/8)`` or the ``.t()`` view of a contiguous ``(n, k/8)`` (op-plugin's
  test passes ``npu_convert_weight_to_int4pack(w).t()``); scale float32 ``(ceil(k / G), n)``;
  offset float16, the scale's shape (required); pertoken_scale float32 ``(m, 1)`` (required);
  bias None; output float16 or bfloat16. ``group_sizes`` ``[0, 0, G]`` or ``[1, 1, G]``; None or
  all zeros infers ``G = k / scale.shape[0]`` when that divides exactly.
* Rule (op-plugin's CPU golden ``cpu_quant_matmul_a4w4_pergroup``): per k-group ``g`` (the last one
  may be shorter), the exact integer ``a_g = x1[:, g] @ (w[g, :] - int(offset[g]))`` (the offset
  read as an integer, truncated toward zero as the golden's ``.int()``), then in float32, one
  IEEE operation at a time: ``acc = +0``; for g in order: ``acc = acc + float32(a_g) * scale[g]``;
  finally ``out = cast(acc * pertoken_scale)`` (round half to even).

**int8 per-block** (G-B, ``group_sizes = [1, 128, 128]``): x1 int8 ``(m, k)``, x2 int8 ``(k, n)``
(any strides; the device wants the ``.t()`` of an ``(n, k)`` weight), pertoken_scale float32
``(m, ceil(k / 128))``, scale float32 ``(ceil(n / 128), ceil(k / 128))``, bias None or float32
``(n,)``, no offset, output bfloat16. Rule (aclnnQuantMatmulV5's G-B formula; the order is
npuquant's decision, the device's is undocumented): per k-block ``j`` of 128 (the last may be
shorter), the exact int32 ``a_j = x1[:, j] @ x2[j, :]``; ``acc = +0``; for j in order:
``acc = acc + float32(a_j) * (x1_scale[i, j] * x2_scale[c / 128, j])``; ``acc + bias[c]``; cast.

Not enforced (aclnn tiling limits without a documented message): the K-G ``k % 1024`` / ``n %
256`` and G-B ``n % 256`` / ``k % 512`` alignments; every shape the rules above accept computes.

Both operators run their pure-torch reference on every device (the integer products as exact
float64 matmuls), like the A8W4 mode.
"""

from __future__ import annotations

import torch

from ..._args import check
from ..int4 import reference as int4

__all__ = ["validate_a4w4_pergroup", "validate_perblock", "a4w4_pergroup_reference", "perblock_reference"]

A4W4_OUTPUT_DTYPES = (torch.float16, torch.bfloat16)
BLOCK = 128
PER_BLOCK_GROUPS = [1, 128, 128]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_devices(x1: torch.Tensor, **others: torch.Tensor | None) -> None:
    for name, t in others.items():
        if t is not None and t.device != x1.device:
            raise RuntimeError(f"{name} must be on the same device as x1 ({x1.device}), but is on {t.device}")


def validate_a4w4_pergroup(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype,
    group_sizes: list[int] | None,
) -> tuple[int, int, int, int, bool]:
    """The A4W4 per-group rules (metadata only); returns (m, k, n, group size, x2 packed along k)."""
    check(x1.dim() == 2, f"x1 dim num should be 2 for A4W4 per-group quantization, but it is {x1.dim()}")
    check(x2.dim() == 2, "x2 dim num should be 2 when x1's dtype is int32, please check x2 dim num")
    m, k8 = x1.shape
    k = k8 * 8
    packed_along_k = x2.shape[0] == k8  # the .t() of a contiguous (n, k/8): torch_npu's shape rule
    if packed_along_k:
        n = x2.shape[1]
    else:
        check(
            x2.shape[0] == k,
            "k dim of x2 should be 8 multiple of k dim of x1, please check k dim of x1 and x2",
        )
        n = x2.shape[1] * 8
    check(x1.numel() != 0 and x2.numel() != 0, "QuantMatmul not support to process empty tensor currently.")
    if output_dtype not in A4W4_OUTPUT_DTYPES:
        raise RuntimeError(
            "When x1 and x2 are int32 with a 2-D scale (A4W4 per-group), output_dtype must be float16 or bfloat16, "
            f"but output_dtype is {output_dtype}"
        )
    if scale.dtype != torch.float32:
        raise RuntimeError(f"A4W4 per-group scale's type supported for float32, but scale.dtype is {scale.dtype}")
    check(scale.dim() == 2, f"A4W4 per-group scale must be 2-D (ceil(k / group size), n), but it is {scale.dim()}-D")
    groups = list(group_sizes) if group_sizes else [0, 0, 0]
    g_m, g_n, g_k = groups
    if (g_m, g_n) not in ((0, 0), (1, 1)):
        raise RuntimeError(f"A4W4 per-group group_sizes must be [0, 0, G] or [1, 1, G], but got {groups}")
    if g_k == 0:
        rows = scale.shape[0]
        if rows == 0 or k % rows:
            raise RuntimeError(
                f"group_sizes gives no k group size and none can be inferred: k ({k}) is not a multiple of "
                f"scale's first dim ({rows})"
            )
        g_k = k // rows
    count = _ceil_div(k, g_k)
    if tuple(scale.shape) != (count, n):
        raise RuntimeError(
            f"A4W4 per-group scale's shape must be ({count}, {n}) (ceil(k / {g_k}), n), but it is {tuple(scale.shape)}"
        )
    check(offset is not None, "A4W4 per-group quantization needs offset (float16, the shape of scale)")
    if offset.dtype != torch.float16:
        raise RuntimeError(f"A4W4 per-group offset's type supported for float16, but offset.dtype is {offset.dtype}")
    if offset.shape != scale.shape:
        raise RuntimeError(
            f"A4W4 per-group offset's shape must equal scale's {tuple(scale.shape)}, but it is {tuple(offset.shape)}"
        )
    check(pertoken_scale is not None, "A4W4 per-group quantization needs pertoken_scale (float32, (m, 1))")
    if pertoken_scale.dtype != torch.float32:
        raise RuntimeError(
            f"pertoken_scale's type supported for float32, but pertoken_scale.dtype is {pertoken_scale.dtype}"
        )
    if tuple(pertoken_scale.shape) != (m, 1):
        raise RuntimeError(
            f"A4W4 per-group pertoken_scale's shape must be ({m}, 1), but it is {tuple(pertoken_scale.shape)}"
        )
    check(bias is None, "bias must be None for A4W4 per-group quantization")
    _check_devices(x1, x2=x2, scale=scale, offset=offset, pertoken_scale=pertoken_scale)
    return m, k, n, g_k, packed_along_k


def validate_perblock(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype,
) -> tuple[int, int, int]:
    """The int8 per-block (G-B, ``[1, 128, 128]``) rules (metadata only); returns (m, k, n)."""
    check(x1.dim() == 2, f"x1 dim num should be 2 for per-block quantization, but it is {x1.dim()}")
    check(x2.dim() == 2, f"x2 dim num should be 2 for per-block quantization, but it is {x2.dim()}")
    m, k = x1.shape
    check(x2.shape[0] == k, "k dim of x1 and x2 need be same, please check k dim of x1 and x2")
    n = x2.shape[1]
    check(x1.numel() != 0 and x2.numel() != 0, "QuantMatmul not support to process empty tensor currently.")
    if output_dtype != torch.bfloat16:
        raise RuntimeError(f"per-block quantization supports bfloat16 output only, but output_dtype is {output_dtype}")
    if scale.dtype != torch.float32:
        raise RuntimeError(f"per-block scale's type supported for float32, but scale.dtype is {scale.dtype}")
    kb, nb = _ceil_div(k, BLOCK), _ceil_div(n, BLOCK)
    if tuple(scale.shape) != (nb, kb):
        raise RuntimeError(
            f"per-block scale's shape must be ({nb}, {kb}) (ceil(n / 128), ceil(k / 128)), but it is "
            f"{tuple(scale.shape)}"
        )
    check(pertoken_scale is not None, "per-block quantization needs pertoken_scale (float32, (m, ceil(k / 128)))")
    if pertoken_scale.dtype != torch.float32:
        raise RuntimeError(
            f"pertoken_scale's type supported for float32, but pertoken_scale.dtype is {pertoken_scale.dtype}"
        )
    if tuple(pertoken_scale.shape) != (m, kb):
        raise RuntimeError(
            f"per-block pertoken_scale's shape must be ({m}, {kb}) (m, ceil(k / 128)), but it is "
            f"{tuple(pertoken_scale.shape)}"
        )
    check(offset is None, "offset must be None for per-block quantization")
    if bias is not None:
        if bias.dtype != torch.float32:
            raise RuntimeError(f"per-block bias's type supported for float32, but bias.dtype is {bias.dtype}")
        if tuple(bias.shape) != (n,):
            raise RuntimeError(f"per-block bias's shape must be ({n},), but it is {tuple(bias.shape)}")
    _check_devices(x1, x2=x2, scale=scale, pertoken_scale=pertoken_scale, bias=bias)
    return m, k, n


def _group_products(x: torch.Tensor, w: torch.Tensor, size: int) -> torch.Tensor:
    """Exact integer ``x[:, g] @ w[g, :]`` per k-group of ``size`` (last one shorter) as float64 ``(groups, m, n)``.

    float64 holds every partial sum of int4 / int8 products exactly (|sum| < 2**53).
    """
    k = x.shape[1]
    count = _ceil_div(k, size)
    pad = count * size - k
    xd = torch.nn.functional.pad(x.to(torch.float64), (0, pad)).reshape(x.shape[0], count, size).transpose(0, 1)
    wd = torch.nn.functional.pad(w.to(torch.float64), (0, 0, 0, pad)).reshape(count, size, w.shape[1])
    return torch.bmm(xd, wd)


def a4w4_pergroup_reference(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    pertoken_scale: torch.Tensor,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The A4W4 per-group rule of the module docstring on validated arguments (x2 packed along n, (k, n/8))."""
    x = int4.unpack_int4(x1).to(torch.int64)  # (m, k)
    w = int4.unpack_int4(x2).to(torch.int64)  # (k, n)
    k, n = w.shape
    off = offset.to(torch.float32).trunc().to(torch.int64)  # (groups, n): the golden's .int()
    rows = torch.div(torch.arange(k, device=x1.device), group_size, rounding_mode="floor")
    w = w - off[rows]  # exact integers
    parts = _group_products(x, w, group_size)
    # float32 of the exact integer (round half to even, as the golden's int32 .float())
    parts = parts.to(torch.int64).to(torch.float32)
    acc = torch.zeros(x.shape[0], n, dtype=torch.float32, device=x1.device)
    for g in range(parts.shape[0]):
        acc = acc + parts[g] * scale[g].reshape(1, n)
    return (acc * pertoken_scale.reshape(-1, 1)).to(out_dtype).contiguous()


def perblock_reference(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    pertoken_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The int8 per-block rule of the module docstring on validated arguments."""
    n = x2.shape[1]
    parts = _group_products(x1, x2, BLOCK).to(torch.int64).to(torch.float32)  # (kb, m, n)
    cols = torch.div(torch.arange(n, device=x1.device), BLOCK, rounding_mode="floor")
    x2_scale = scale[cols]  # (n, kb)
    acc = torch.zeros(x1.shape[0], n, dtype=torch.float32, device=x1.device)
    for j in range(parts.shape[0]):
        acc = acc + parts[j] * (pertoken_scale[:, j].reshape(-1, 1) * x2_scale[:, j].reshape(1, n))
    if bias is not None:
        acc = acc + bias.reshape(1, n)
    return acc.to(out_dtype).contiguous()


@torch.library.custom_op("npuquant::quant_matmul_a4w4_pergroup", mutates_args=())
def quant_matmul_a4w4_pergroup(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    pertoken_scale: torch.Tensor,
    group_size: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``torch.ops.npuquant.quant_matmul_a4w4_pergroup`` on validated arguments, x2 ``(k, n/8)`` contiguous."""
    check(group_size > 0, "group_size must be positive")
    return a4w4_pergroup_reference(x1, x2, scale, offset, pertoken_scale, group_size, out_dtype)


@quant_matmul_a4w4_pergroup.register_fake
def _(x1, x2, scale, offset, pertoken_scale, group_size, out_dtype):  # the operator's signature
    return x1.new_empty((x1.shape[0], x2.shape[1] * 8), dtype=out_dtype)


@torch.library.custom_op("npuquant::quant_matmul_perblock", mutates_args=())
def quant_matmul_perblock(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    pertoken_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``torch.ops.npuquant.quant_matmul_perblock`` on validated arguments."""
    return perblock_reference(x1, x2, scale, pertoken_scale, bias, out_dtype)


@quant_matmul_perblock.register_fake
def _(x1, x2, scale, pertoken_scale, bias, out_dtype):  # the operator's signature
    return x1.new_empty((x1.shape[0], x2.shape[1]), dtype=out_dtype)


def npu_quant_matmul_grouped(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype,
    group_sizes: list[int] | None,
) -> torch.Tensor:
    """``npu_quant_matmul``'s grouped branches: validation, normalisation, then the operator."""
    if x1.dtype == torch.int32:
        m, k, n, group, along_k = validate_a4w4_pergroup(
            x1, x2, scale, offset, pertoken_scale, bias, output_dtype, group_sizes
        )
        if along_k:  # (k/8, n) = the .t() of (n, k/8): repack along n (plain torch ops, per call)
            x2 = int4.pack_int4(int4.unpack_int4(x2.t().contiguous()).t().contiguous())
        return torch.ops.npuquant.quant_matmul_a4w4_pergroup(
            x1.contiguous(), x2.contiguous(), scale, offset, pertoken_scale, group, output_dtype
        )
    validate_perblock(x1, x2, scale, offset, pertoken_scale, bias, output_dtype)
    return torch.ops.npuquant.quant_matmul_perblock(x1, x2, scale, pertoken_scale, bias, output_dtype)
