"""``npu_quant_matmul`` (A8W8 / A4W4) and ``npu_trans_quant_param`` (SPEC §4, §5).

Route: public function (torch_npu signature, dtype codes, validation with torch_npu's messages)
-> normalisation in plain torch ops (int64 scales decoded, float32 scales FP19-encoded where
torch_npu does so, int4 unpacked, batch broadcast resolved) -> operator
``torch.ops.npuquant.quant_matmul`` (:data:`_compute`; the exact int8 GEMM and its epilogue in C
on CPU, the pure-torch reference elsewhere). ``npu_trans_quant_param`` is pure torch (a custom op).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import _native
from ..._args import SCALAR_TYPE_CODES, TORCH_NPU_INT4, check, optional_tensors, tensors, to_dtype
from .. import int4
from . import a8w4, grouped, reference

__all__ = ["npu_quant_matmul", "npu_trans_quant_param", "validate", "output_shape"]

MIN_DIMS, MAX_DIMS = 2, 6
MAX_LAST_DIM = 65535
INT4_PER_INT32 = 8
GROUP_MAX = 65535
OUTPUT_DTYPES = (torch.int8, torch.float16, torch.bfloat16, torch.int32)
SCALE_DTYPES = (torch.float32, torch.int64, torch.bfloat16)
BIAS_DTYPES = (torch.int32, torch.bfloat16, torch.float16, torch.float32)
PER_BLOCK_GROUPS = [1, 128, 128]


class Plan(NamedTuple):
    """What validation learnt about a call: everything the fake kernel and the normalisation need."""

    out_dtype: torch.dtype
    batch: tuple  # broadcast batch dims (may be empty)
    m: int
    k: int  # logical k (int4 elements for A4W4)
    n: int
    is_a4w4: bool
    x2_packed_along_k: bool  # A4W4 x2 given as (k/8, n), the transpose of a (n, k/8) tensor
    # The kernel receives an int64 quant param (an int64 scale, or a float32 one torch_npu FP19-encodes).
    scale_is_quant_param: bool = False

    @property
    def shape(self) -> tuple:
        return (*self.batch, self.m, self.n)


def fp19_applies(scale: torch.Tensor, pertoken_scale: torch.Tensor | None, out_dtype: torch.dtype) -> bool:
    """torch_npu converts a float32 scale with npu_trans_quant_param (FP19, integer offset) exactly in this case."""
    return scale.dtype == torch.float32 and pertoken_scale is None and out_dtype in (torch.int8, torch.float16)


# Validation runs on every call (decode runs hundreds per token), so a message is formatted only
# when its rule fails: ``check(cond, f"...")`` would format it every time.


# Storage-dtype keywords (x1_dtype, ...): torch_npu's codes for the float8 / hifloat8 / MX formats
# of the Ascend 950 line, which npuquant does not implement.
_LOW_PRECISION_CODES = {
    23: "float8_e5m2",
    24: "float8_e4m3fn",
    290: "hifloat8",
    293: "float8_e8m0fnu",
    296: "float4_e2m1fn_x2",
    297: "float4_e1m2fn_x2",
}
_LOW_PRECISION_DTYPES = {
    getattr(torch, name)
    for name in _LOW_PRECISION_CODES.values()
    if isinstance(getattr(torch, name, None), torch.dtype)
}


def _storage_dtype_name(value: object) -> str:
    if isinstance(value, torch.dtype):
        return str(value)
    if value == TORCH_NPU_INT4:
        return "int4"
    if value in _LOW_PRECISION_CODES:
        return _LOW_PRECISION_CODES[value]
    return str(SCALAR_TYPE_CODES.get(value, value))


def _check_storage_dtype(name: str, value: object, tensor: torch.Tensor | None) -> None:
    """x1_dtype / x2_dtype / scale_dtype / pertoken_scale_dtype: how the tensor's bits are to be read.

    npuquant reads int8 as int8 and int32 as 8 packed int4 (x1/x2), scales as their own dtype; a
    keyword naming exactly that (or None) is accepted, the 950 line's low-precision formats raise.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, torch.dtype)):
        raise RuntimeError(f"{name} must be a torch.dtype or an integer dtype code, but got {value!r}")
    label = _storage_dtype_name(value)
    if value in _LOW_PRECISION_CODES or value in _LOW_PRECISION_DTYPES:
        raise RuntimeError(
            f"{name} {label} (float8 / hifloat8 / MX quantization, Ascend 950 only) is not supported by npuquant: "
            "x1 and x2 only support int8 or int32 (int4) before Ascend 950"
        )
    dtype = value if isinstance(value, torch.dtype) else SCALAR_TYPE_CODES.get(value)
    if tensor is None:
        raise RuntimeError(f"{name} is {label}, but its tensor is None")
    accepted = {tensor.dtype}
    if name in ("x1_dtype", "x2_dtype") and tensor.dtype == torch.int32:
        accepted.add(torch.quint4x2)  # 8 int4 per int32 word (torch_npu.int4 maps here too)
    if dtype not in accepted:
        raise RuntimeError(
            f"{name} {label} does not match the dtype of its tensor ({tensor.dtype}); npuquant reads int8 as int8, "
            "int32 as 8 packed int4, and scales as their own dtype"
        )


def _check_group_sizes_format(group_sizes: list[int] | None) -> bool:
    """OP-CPP ``check_and_get_groups``; returns whether any group size is non-zero."""
    if not group_sizes:
        return False
    if len(group_sizes) != 3:
        raise RuntimeError(f"group_sizes only support input with three elements, but got {len(group_sizes)}")
    check(all(0 <= g <= GROUP_MAX for g in group_sizes), "group param value must conform to range [0, 65535]")
    return any(g != 0 for g in group_sizes)


def _grouped_mode(x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, groups: list[int] | None) -> bool:
    """Whether the call is A4W4 per-group (int32 x1/x2 with group sizes or a 2-D scale) or int8 per-block."""
    nonzero = _check_group_sizes_format(groups)
    if x1.dtype == torch.int32 and x2.dtype == torch.int32:
        return nonzero or scale.dim() == 2
    return nonzero and x1.dtype == torch.int8 and x2.dtype == torch.int8 and groups == PER_BLOCK_GROUPS


def _check_bias_dtype(bias_dtype: torch.dtype, out: torch.dtype, has_pertoken: bool, output_dtype) -> None:
    if bias_dtype not in BIAS_DTYPES:
        raise RuntimeError(
            f"bias's type supported for int32, bfloat16, float16 and float32, but bias.dtype is {bias_dtype}"
        )
    if bias_dtype == torch.bfloat16 and out != torch.bfloat16:
        raise RuntimeError(f"When bias dtype is bfloat16, output_dtype must be bfloat16, but it is {output_dtype}")
    if out == torch.int32 and bias_dtype != torch.int32:
        raise RuntimeError(f"When output_dtype dtype is int32, bias_dtype must be int32, but it is {bias_dtype}")
    if has_pertoken:
        if bias_dtype == torch.float16 and out != torch.float16:
            raise RuntimeError(
                "When bias dtype is float16 and pertoken is given, output_dtype must be float16, "
                f"but it is {output_dtype}"
            )
    else:
        check(bias_dtype != torch.float16, "Bias dtype cannot be float16 when pertoken not given.")
        if bias_dtype == torch.float32 and out != torch.bfloat16:
            raise RuntimeError(
                "When bias dtype is float32 and pertoken not given, output_dtype must be bfloat16, "
                f"but it is {output_dtype}"
            )


def _check_dtypes(x1, x2, scale, offset, pertoken_scale, bias, output_dtype) -> torch.dtype:
    x1_dtype = x1.dtype
    if x1_dtype != x2.dtype:
        raise RuntimeError(
            f"x1's type and x2's type should be same, but x1.dtype is {x1_dtype} and x2.dtype is {x2.dtype}"
        )
    if x1_dtype not in (torch.int8, torch.int32):
        raise RuntimeError(f"input's type supported for int8 and int32, but now is {x1_dtype}")
    if scale.dtype not in SCALE_DTYPES:
        raise RuntimeError(f"scale's type supported for float32, int64 and bfloat16, but scale.dtype is {scale.dtype}")
    if offset is not None and offset.dtype != torch.float32:
        raise RuntimeError(f"offset's type supported for float32, but offset.dtype is {offset.dtype}")
    if pertoken_scale is not None and pertoken_scale.dtype != torch.float32:
        raise RuntimeError(
            f"pertoken_scale's type supported for float32, but pertoken_scale.dtype is {pertoken_scale.dtype}"
        )
    out = torch.int8 if output_dtype is None else output_dtype
    if out not in OUTPUT_DTYPES:
        raise RuntimeError(f"Not supportted output dtype is {output_dtype}")
    if bias is not None:
        _check_bias_dtype(bias.dtype, out, pertoken_scale is not None, output_dtype)
    return out


def _check_scale_offset_output(scale, offset, pertoken_scale, output_dtype, out, is_a4w4) -> None:
    scale_dtype = scale.dtype
    if scale_dtype == torch.bfloat16 and out not in (torch.bfloat16, torch.int32):
        raise RuntimeError(
            "When scale's dtype is bfloat16, output_dtype must be bfloat16 or int32, "
            f"but output_dtype is {output_dtype}"
        )
    if out == torch.bfloat16 and scale_dtype not in (torch.bfloat16, torch.float32):
        raise RuntimeError(
            "When output_dtype is bfloat16, scale's dtype must be bfloat16 or float32, "
            f"but scale's dtype is {scale_dtype}"
        )
    if out == torch.int32 and scale_dtype not in (torch.bfloat16, torch.float32):
        raise RuntimeError(
            "When output_dtype is int32, scale's dtype must be bfloat16 or float32, "
            f"but scale's dtype is {scale_dtype}"
        )
    if offset is not None and out != torch.int8:
        raise RuntimeError(f"offset only exists when output_dtype is int8, but output_dtype is {output_dtype}")
    if pertoken_scale is not None:
        if out == torch.float16 and scale_dtype != torch.float32:
            raise RuntimeError(
                "When output_dtype is float16 and pertoken_scale is not none, scale's dtype must be float32, "
                f"but scale's dtype is {scale_dtype}"
            )
        if out not in (torch.float16, torch.bfloat16):
            raise RuntimeError(
                "When pertoken_scale is not none, output_dtype must be float16 or bfloat16, "
                f"but output_dtype is {output_dtype}"
            )
    if is_a4w4 and pertoken_scale is None and out != torch.float16:
        raise RuntimeError(
            f"When input's dtype is int32, output_dtype must be float16, but output_dtype is {output_dtype}"
        )


def _broadcast_batch(shape1: tuple, shape2: tuple) -> tuple:
    """Right-aligned numpy broadcasting of the batch dims (all but the last two) of two shapes."""
    if len(shape1) == 2 and len(shape2) == 2:
        return ()
    b1, b2 = tuple(shape1[:-2]), tuple(shape2[:-2])
    rank = max(len(b1), len(b2))
    b1, b2 = (1,) * (rank - len(b1)) + b1, (1,) * (rank - len(b2)) + b2
    batch = []
    for d1, d2 in zip(b1, b2):
        if not (d1 == d2 or d1 == 1 or d2 == 1):
            short, long = (d1, d2) if len(shape1) <= len(shape2) else (d2, d1)
            raise RuntimeError(
                "the batch shape cannot be broadcast: the x1 shape and x2 shape not supported for broadcast, "
                f"the short_dim is {short} and  the long_dim is {long}"
            )
        batch.append(d2 if d1 == 1 else d1)
    return tuple(batch)


def _check_bias_shape(bias: torch.Tensor, plan: Plan) -> None:
    bias_shape = bias.shape
    bias_dim = len(bias_shape)
    if bias_dim == 3:
        check(len(plan.batch) == 1, "when bias dim is 3, out dim need to be 3")
    if plan.is_a4w4:
        check(bias_dim == 1, "bias_dim_num should be 1 when x1's dtype is int32, please check bias dim num ")
    else:
        check(bias_dim in (1, 3), "bias_dim_num should be 1 or 3 when x1's dtype is int8, please check bias dim num ")
    if bias_dim == 1:
        check(bias_shape[0] == plan.n, "bias_first_dim should be equal to x2 n dim, please check bias 1st dim value ")
        return
    check(
        bias_shape[0] == plan.batch[0],
        "infered batch value should be equal to bias batch dim value, please check bias batch dim value",
    )
    check(bias_shape[1] == 1, "bias_second_dim should be 1, please check bias second dim value ")
    check(bias_shape[2] == plan.n, "bias_third_dim should be equal to x2_n_dim, please check bias third dim value ")


def _check_devices(x1: torch.Tensor, others: dict) -> None:
    if x1.is_cpu and all(t is None or t.is_cpu for t in others.values()):
        return  # the common case, without building torch.device objects
    for name, t in others.items():
        if t is not None and t.device != x1.device:
            raise RuntimeError(f"{name} must be on the same device as x1 ({x1.device}), but is on {t.device}")


def validate(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype | None,
    group_sizes: list[int] | None,
) -> Plan:
    """Every rule of SPEC §4.6 and §4.8 (torch_npu's messages); metadata only, so the fake kernel runs it too."""
    grouped = _check_group_sizes_format(group_sizes)
    out = _check_dtypes(x1, x2, scale, offset, pertoken_scale, bias, output_dtype)
    is_a4w4 = x1.dtype == torch.int32
    _check_scale_offset_output(scale, offset, pertoken_scale, output_dtype, out, is_a4w4)
    if grouped and not is_a4w4:  # [1, 128, 128] and A4W4 groups never get here (see _grouped_mode)
        raise RuntimeError(
            f"when the dtype of input is int8, group_sizes's value must be 0 or [1,128,128], but got {list(group_sizes)}"
        )

    shape1, shape2 = x1.shape, x2.shape
    check(MIN_DIMS <= len(shape1) <= MAX_DIMS, "x1 dim num should be 2 ~ 6, please check x1 dim num")
    if is_a4w4:
        check(len(shape2) == MIN_DIMS, "x2 dim num should be 2 when x1's dtype is int32, please check x2 dim num")
    else:
        check(
            MIN_DIMS <= len(shape2) <= MAX_DIMS,
            "x2 dim num should be 2 ~ 6 when x1's dtype is int8, please check x2 dim num",
        )
    m, k1 = shape1[-2], shape1[-1]
    k2, n2 = shape2[-2], shape2[-1]
    # A4W4 x2 is (k, n/8) packed along n, or (k/8, n) packed along k (the .t() of a (n, k/8) tensor);
    # torch_npu tells them apart by shape, as done here.
    packed_along_k = is_a4w4 and k1 == k2
    if is_a4w4 and not packed_along_k:
        check(
            k1 * INT4_PER_INT32 == k2,
            "k dim of x2 should be 8 multiple of k dim of x1, please check k dim of x1 and x2",
        )
    else:
        check(k1 == k2, "k dim of x1 and x2 need be same, please check k dim of x1 and x2")
    k = k1 * INT4_PER_INT32 if is_a4w4 else k1
    n = n2 * INT4_PER_INT32 if is_a4w4 and not packed_along_k else n2

    if offset is not None:
        check(offset.dim() == 1, "the offset dim num must be 1, please check offset dim num ")
        check(
            offset.shape[0] == 1 or offset.shape[0] == n,
            "the offset 1st dim value must be 1 or x2 n dim value, please check offset 1st dim value",
        )
    if pertoken_scale is not None:
        check(pertoken_scale.dim() == 1, "the pertoken_scale dim num must be 1, please check scale dim num")
        check(
            pertoken_scale.shape[0] == m,
            "the pertoken_scale 1st dim value must be x1 m dim value, please check scale 1st dim value ",
        )
    scale_shape = scale.shape
    check(len(scale_shape) == 1, "the scale dim num must be 1, please check scale dim num")
    check(
        scale_shape[0] == 1 or scale_shape[0] == n,
        "the scale 1st dim value must be 1 or x2 n dim value, please check scale 1st dim value ",
    )

    scale_is_quant_param = scale.dtype == torch.int64 or fp19_applies(scale, pertoken_scale, out)
    plan = Plan(out, _broadcast_batch(shape1, shape2), m, k, n, is_a4w4, packed_along_k, scale_is_quant_param)
    if bias is not None:
        _check_bias_shape(bias, plan)

    # The device lifts the 65535 limit only for int8 inputs whose kernel sees a float32/bfloat16 scale.
    if (is_a4w4 or scale_is_quant_param) and (k1 > MAX_LAST_DIM or n2 > MAX_LAST_DIM):
        raise RuntimeError(f"x1 last dim or x2 last dim is larger than 65535, x1 is {k1}, x2 is {n2}.")
    check(x1.numel() != 0 and x2.numel() != 0, "QuantMatmul not support to process empty tensor currently.")
    _check_devices(x1, {"x2": x2, "scale": scale, "offset": offset, "pertoken_scale": pertoken_scale, "bias": bias})
    return plan


def output_shape(plan: Plan) -> tuple:
    """Shape of the result: broadcast batch dims, then (m, n)."""
    return plan.shape


def _normalise(x1, x2, scale, offset, pertoken_scale, bias, plan: Plan):
    """Validated torch_npu arguments -> the arguments of :func:`_compute` (see its docstring).

    Plain torch ops, nothing cached: int4 operands are unpacked and int64 scales decoded per call.
    """
    if plan.is_a4w4:
        x1 = int4.unpack_int4(x1)
        if plan.x2_packed_along_k:
            x2 = int4.unpack_int4(x2.transpose(-1, -2)).transpose(-1, -2)
        else:
            x2 = int4.unpack_int4(x2)
    batch_size = 1
    if plan.batch:
        for d in plan.batch:
            batch_size *= d
        x1 = x1.expand(*plan.batch, plan.m, plan.k).reshape(batch_size, plan.m, plan.k)
        x2 = x2.expand(*plan.batch, plan.k, plan.n).reshape(batch_size, plan.k, plan.n)
    else:  # 2-D operands: a batch of one, as views
        x1, x2 = x1.unsqueeze(0), x2.unsqueeze(0)

    out = plan.out_dtype
    effective_offset = None
    if plan.scale_is_quant_param:
        # What the kernel receives: an int64 quant param; its encoded offset is the one used (SPEC §4.3).
        quant_param = scale if scale.dtype == torch.int64 else reference.trans_quant_param(scale, offset)
        scale_f32, decoded_offset = reference.decode_quant_param(quant_param)
        if out == torch.int8 and (scale.dtype == torch.int64 or offset is not None):
            effective_offset = decoded_offset
    else:
        scale_f32 = scale if scale.dtype == torch.float32 else scale.to(torch.float32)
    if bias is not None:
        bias = bias.reshape(1, plan.n) if bias.dim() == 1 else bias.reshape(batch_size, plan.n)
    return x1, x2, scale_f32, effective_offset, pertoken_scale, bias, out


def _fake(x1, x2, scale, offset, pertoken_scale, bias, out_dtype):  # the operator's signature
    return x1.new_empty((x1.shape[0], x1.shape[1], x2.shape[2]), dtype=out_dtype)


#: The one dispatch point of npu_quant_matmul: exact int8 GEMM + epilogue on normalised arguments.
#:
#: * ``x1``: int8 ``(B, m, k)`` logical values (A4W4 already unpacked to [-8, 7]); any strides,
#:   including a batch stride of 0 (broadcast).
#: * ``x2``: int8 ``(B, k, n)`` logical values; any strides (typically the transpose of a
#:   contiguous ``(B, n, k)`` weight, or batch stride 0 for one weight shared by every batch).
#: * ``scale``: float32 1-D, length 1 or n: the *effective* scale. Already FP19-truncated where
#:   the hardware does it (int64 scales decoded, float32 scales with int8/float16 output and no
#:   pertoken_scale encoded then decoded). Not read for int32 output.
#: * ``offset``: None, or float32 1-D (1 or n) of integers in [-256, 255]; only for int8 output.
#: * ``pertoken_scale``: None, or float32 ``(m,)``.
#: * ``bias``: None, or 2-D ``(1, n)`` / ``(B, n)`` of int32 (joins the int32 accumulator),
#:   or bfloat16 / float16 / float32 (added in float32 after the scales).
#: * ``out_dtype``: torch.int8, torch.float16, torch.bfloat16, torch.int32 (or torch.float32).
#:
#: Returns a new contiguous ``(B, m, n)`` tensor of ``out_dtype``, bit-identical to
#: ``reference.quant_matmul`` (int32 accumulation wrapping modulo 2**32, then
#: ``reference.epilogue``'s float32 operation order).
_compute = _native.operator("quant_matmul", reference.quant_matmul, _fake)


def npu_quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    *,
    offset: torch.Tensor | None = None,
    pertoken_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    output_dtype: torch.dtype | int | None = None,
    x1_dtype: torch.dtype | int | None = None,
    x2_dtype: torch.dtype | int | None = None,
    pertoken_scale_dtype: torch.dtype | int | None = None,
    scale_dtype: torch.dtype | int | None = None,
    group_sizes: list[int] | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """torch_npu.npu_quant_matmul: quantized matmul with exact integer accumulation (SPEC §4).

    ``acc = x1 @ x2`` in int32, then ``out = cast((acc [+ bias_int32]) * scale [* pertoken_scale]
    [+ bias_float | + offset])`` in float32; int32 output returns ``acc [+ bias]`` (scale unused).

    Args:
        x1: int8 ``(*b1, m, k)`` (2–6 dims), or int32 ``(m, k/8)`` holding 8 int4 per word (A4W4).
        x2: int8 ``(*b2, k, n)`` (2–6 dims, e.g. ``w.t()`` of a ``(n, k)`` weight); A4W4: int32
            ``(k, n/8)`` or the ``.t()`` view of a contiguous ``(n, k/8)``. Batch dims broadcast.
        scale: 1-D, length 1 or n: float32, bfloat16, or int64 from :func:`npu_trans_quant_param`.
            A float32 scale with int8/float16 output and no pertoken_scale acts exactly as its
            int64 encoding (FP19 scale, integer offset), as on the device.
        offset: float32 ``(1,)``/``(n,)``, int8 output only (rounded to an integer in [-256, 255]).
        pertoken_scale: float32 ``(m,)``, for float16/bfloat16 output.
        bias: int32, bfloat16, float16 or float32; ``(n,)``, or ``(batch, 1, n)`` for 3-D output.
        output_dtype: torch.int8 (default), torch.float16, torch.bfloat16 or torch.int32
            (torch.dtype or ScalarType code).
        x1_dtype, x2_dtype, pertoken_scale_dtype, scale_dtype: how the tensors' bits are read
            (torch.dtype or code). Accepted: None or the tensor's own dtype; for int32 x1/x2 also
            int4 (``torch_npu.int4`` = 285, ``torch.quint4x2``). The float8 / hifloat8 / MX codes
            of the Ascend 950 line raise.
        group_sizes: None or ``[0, 0, 0]`` (plain); ``[0, 0, G]`` / ``[1, 1, G]`` with int32 x1 and x2
            (A4W4 per-group: 2-D float32 scale, float16 offset, ``(m, 1)`` pertoken_scale) or
            with int8 x1 and int32 x2 (A8W4); ``[1, 128, 128]`` with int8 x1 and x2 (per-block,
            bfloat16 output). See :mod:`.grouped` and :mod:`.a8w4` for the rules.

    Returns:
        Contiguous tensor ``(*broadcast(b1, b2), m, n)`` of ``output_dtype``.

    Raises:
        RuntimeError: containing torch_npu's message for every rule of SPEC §4.6 / §4.8.
    """
    tensors("npu_quant_matmul", x1=x1, x2=x2, scale=scale)
    optional_tensors("npu_quant_matmul", offset=offset, pertoken_scale=pertoken_scale, bias=bias)
    if x1_dtype is not None or x2_dtype is not None or scale_dtype is not None or pertoken_scale_dtype is not None:
        _check_storage_dtype("x1_dtype", x1_dtype, x1)
        _check_storage_dtype("x2_dtype", x2_dtype, x2)
        _check_storage_dtype("scale_dtype", scale_dtype, scale)
        _check_storage_dtype("pertoken_scale_dtype", pertoken_scale_dtype, pertoken_scale)
    out = output_dtype  # a torch.dtype passes as is: to_dtype's message would be formatted for nothing
    if not isinstance(out, torch.dtype):
        out = to_dtype(output_dtype, f"Not supportted output dtype is {output_dtype}")
    groups = None if group_sizes is None else [int(g) for g in group_sizes]
    if x1.dtype == torch.int8 and x2.dtype == torch.int32:  # A8W4: int4 weight, split activations (.a8w4)
        return a8w4.npu_quant_matmul_a8w4(x1, x2, scale, offset, pertoken_scale, bias, out, groups)
    if _grouped_mode(x1, x2, scale, groups):  # A4W4 per-group, int8 per-block (.grouped)
        out = torch.int8 if out is None else out
        return grouped.npu_quant_matmul_grouped(x1, x2, scale, offset, pertoken_scale, bias, out, groups)
    plan = validate(x1, x2, scale, offset, pertoken_scale, bias, out, groups)
    return _compute(*_normalise(x1, x2, scale, offset, pertoken_scale, bias, plan)).view(plan.shape)


# ---------------------------------------------------------------------------------------------
# npu_trans_quant_param


def _trans_output_shape(scale: torch.Tensor, offset: torch.Tensor | None) -> tuple:
    if scale.dim() == 2:
        return tuple(scale.shape)
    length = scale.shape[0] if offset is None else max(scale.shape[0], offset.shape[0])
    return (length,)


def validate_trans_quant_param(scale: torch.Tensor, offset: torch.Tensor | None, round_mode: int) -> tuple:
    """SPEC §5.1 rules (metadata only); returns the output shape."""
    check(scale.dtype == torch.float32, f"scale's type supported for float32, but scale.dtype is {scale.dtype}")
    check(
        scale.dim() == 1 or (scale.dim() == 2 and scale.shape[0] == 1),
        "the scale shape support only (1, ) and (1, n)",
    )
    check(round_mode in (0, 1), f"round_mode must be 0 or 1. but now is {round_mode}")
    check(scale.numel() != 0, "scale must not be an empty tensor")
    if offset is not None:
        check(offset.dtype == torch.float32, f"offset's type supported for float32, but offset.dtype is {offset.dtype}")
        check(offset.numel() != 0, "offset must not be an empty tensor")
        check(offset.device == scale.device, f"offset must be on the same device as scale ({scale.device})")
        if scale.dim() == 1:
            check(offset.dim() == 1, f"offset must be 1-D when scale is 1-D, but offset has {offset.dim()} dims")
            check(
                offset.shape[0] == 1 or scale.shape[0] == 1 or offset.shape[0] == scale.shape[0],
                "offset first dim should be equal to scale first dim if none of them are equal to one",
            )
        else:
            check(
                offset.shape == scale.shape,
                "when the input shape of scale is (1, n), shape of scale and offset should be equal",
            )
    return _trans_output_shape(scale, offset)


@torch.library.custom_op("npuquant::npu_trans_quant_param", mutates_args=())
def _npu_trans_quant_param_op(
    scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0
) -> torch.Tensor:
    validate_trans_quant_param(scale, offset, round_mode)
    return reference.trans_quant_param(scale, offset, round_mode)


@_npu_trans_quant_param_op.register_fake
def _(scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0) -> torch.Tensor:
    shape = validate_trans_quant_param(scale, offset, round_mode)
    return scale.new_empty(shape, dtype=torch.int64)


def npu_trans_quant_param(scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0) -> torch.Tensor:
    """torch_npu.npu_trans_quant_param: float32 scale (+ offset) -> int64 quant parameter (SPEC §5).

    Bits 13..31 hold the FP19 scale (float32 with the low 13 mantissa bits truncated, or rounded
    half-to-even with ``round_mode=1``), bits 37..45 the offset rounded half-to-even and clamped
    to [-256, 255] as 9-bit two's complement, bit 46 is set.

    Args:
        scale: float32 ``(t,)`` or ``(1, n)``, non-empty.
        offset: optional float32; ``(t,)``/``(1,)`` for a 1-D scale (length-1 sides broadcast),
            the scale's shape for a ``(1, n)`` scale.
        round_mode: 0 (truncate) or 1 (round to nearest even).

    Returns:
        int64 tensor: ``(max(t, len(offset)),)`` for a 1-D scale, else the scale's shape.
    """
    tensors("npu_trans_quant_param", scale=scale)
    optional_tensors("npu_trans_quant_param", offset=offset)
    return torch.ops.npuquant.npu_trans_quant_param(scale, offset, int(round_mode))
