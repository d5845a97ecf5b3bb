"""``npu_weight_quant_batchmatmul``: float16 / bfloat16 activations times an int8 or int4 weight.

``y = x @ ((weight + antiquant_offset) * antiquant_scale) + bias``, optionally requantized to int8
with ``quant_scale`` / ``quant_offset``. Numerics and operation order: :mod:`.reference`.

Route: :func:`npu_weight_quant_batchmatmul` (torch_npu's signature; argument checks with torch_npu's
messages where its torch layer has them, op-plugin ``WeightQuantBatchMatmulKernelNpuOpApi.cpp``;
the aclnn-level rules of ``aclnnWeightQuantBatchMatmulV2`` with npuquant's wording) -> operator
``torch.ops.npuquant.weight_quant_batchmatmul`` (a Python custom op: fake kernel for
torch.compile; CPU kernel :mod:`.native`, composed of npuquant's native dequantization
operators; the pure-torch :mod:`.reference` on every other device).

Shapes (SPEC-style summary):

* ``x``: ``(*bx, m, k)``, ``weight``: ``(*bw, k, n)`` int8, or int32 words holding 8 int4 each —
  ``(*bw, k, n/8)`` packed along n (contiguous), or ``(*bw, k/8, n)``, the ``.transpose(-1, -2)``
  view of a contiguous ``(*bw, n, k/8)`` (torch_npu's ``is_transpose_last_two_dims`` decides).
  Both at least 2-D. When both have batch dims their ranks and batch dims must be equal; a 2-D
  operand is shared by every batch. Output ``(*batch, m, n)``.
* ``antiquant_scale``: per-tensor ``(1,)``/``(1, 1)``; per-channel ``(n,)``/``(1, n)``;
  per-group (``antiquant_group_size = G > 0``) ``(ceil(k / G), n)``. ``antiquant_offset``: same
  shape. Transposed views are fine (only values matter here).
* ``quant_scale`` / ``quant_offset`` (int8 output): ``(1,)``, ``(n,)``, ``(1, 1)`` or ``(1, n)``.
* ``bias``: ``(n,)`` or ``(1, n)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import _native
from ..._args import check, optional_tensors, tensors
from . import native, reference

__all__ = ["npu_weight_quant_batchmatmul", "validate", "Plan"]

MIN_DIMS = 2
MAX_KN = 65535
INT4_PER_INT32 = 8
GROUP_MULTIPLE = 32
X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
WEIGHT_DTYPES = (torch.int8, torch.int32)
QUANT_SCALE_DTYPES = (torch.float32, torch.int64)
# bias dtype required for each activation dtype (aclnnWeightQuantBatchMatmulV2 on A2 / A3).
BIAS_DTYPE = {torch.float16: torch.float16, torch.bfloat16: torch.float32, torch.float32: torch.float32}


class Plan(NamedTuple):
    """What validation learnt: the output's shape and dtype, and how to read the weight."""

    shape: tuple
    dtype: torch.dtype
    packed_along_k: bool


def _shape_checks(x: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, tuple, bool]:
    """op-plugin's torch-layer shape rules, in its order; returns (k, n, batch, packed_along_k)."""
    x_dim, w_dim = x.dim(), weight.dim()
    if x_dim < MIN_DIMS:
        raise RuntimeError(f"x shape do not support dim num less than 2, but it is {x_dim}")
    if w_dim < MIN_DIMS:
        raise RuntimeError(f"weight shape do not support dim num less than 2, but it is {w_dim}")
    check(not (min(x_dim, w_dim) > MIN_DIMS and x_dim != w_dim), "x dim is not the same as weight dim")
    is_int4 = weight.dtype == torch.int32
    packed_along_k = is_int4 and reference.is_transposed(weight)
    x_k = x.shape[-1]
    w_k = weight.shape[-2] * INT4_PER_INT32 if packed_along_k else weight.shape[-2]
    if x_k != w_k:
        raise RuntimeError(f"The k of x and weight should be equal. but x_k_dim is {x_k}, weight_k_dim is {w_k}")
    n = weight.shape[-1] * INT4_PER_INT32 if is_int4 and not packed_along_k else weight.shape[-1]
    if x_dim == w_dim:
        for i in range(x_dim - MIN_DIMS):
            check(x.shape[i] == weight.shape[i], "batch of x is diff from batch of weight")
        batch = tuple(x.shape[:-2])
    else:
        batch = tuple((x if x_dim > w_dim else weight).shape[:-2])
    return w_k, n, batch, packed_along_k


def _check_group_and_flags(
    group_size: int, k: int, quant_scale: torch.Tensor | None, quant_offset: torch.Tensor | None, inner_precise: int
) -> None:
    valid = group_size == 0 or (GROUP_MULTIPLE <= group_size <= k - 1 and group_size % GROUP_MULTIPLE == 0)
    check(valid, "antiquant_group_size can be either 0 or a multiple of 32 within the range 32 to weight_k_dim - 1.")
    check(
        quant_scale is not None or quant_offset is None,
        "Quantization parameters are incorrectly set, quant_offset cannot exist in isolation from quant_scale",
    )
    if inner_precise not in (0, 1):
        raise RuntimeError(f"inner_precise only support 0 or 1. but is:{inner_precise}")


def _scale_kind(shape: tuple, k: int, n: int, group_size: int) -> str | None:
    """'tensor', 'channel' or 'group' for an accepted antiquant_scale shape, else None."""
    if group_size > 0:
        return "group" if shape == ((k + group_size - 1) // group_size, n) else None
    if shape in ((1,), (1, 1)):
        return "tensor"
    if shape in ((n,), (1, n)):
        return "channel"
    return None


def _check_antiquant_params(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    k: int,
    n: int,
    group_size: int,
) -> None:
    if scale.dtype == torch.int64:
        check(
            x.dtype == torch.float16 and weight.dtype == torch.int8,
            "antiquant_scale of dtype int64 needs float16 x and int8 weight, "
            f"but x is {x.dtype} and weight is {weight.dtype}",
        )
        check(quant_scale is None, "quant_scale and quant_offset must be None when antiquant_scale is int64")
        if offset is not None and offset.dtype != torch.int32:
            raise RuntimeError(
                f"antiquant_offset must be int32 when antiquant_scale is int64, but it is {offset.dtype}"
            )
    else:
        if scale.dtype != x.dtype:
            raise RuntimeError(
                f"antiquant_scale's dtype must be the same as x's ({x.dtype}) or int64, but it is {scale.dtype}"
            )
        if offset is not None and offset.dtype != scale.dtype:
            raise RuntimeError(
                f"antiquant_offset's dtype must be the same as antiquant_scale's ({scale.dtype}), "
                f"but it is {offset.dtype}"
            )
    kind = _scale_kind(tuple(scale.shape), k, n, group_size)
    if kind is None:
        expected = (
            f"({(k + group_size - 1) // group_size}, {n}) for antiquant_group_size {group_size}"
            if group_size
            else f"(1,), (1, 1), ({n},) or (1, {n})"
        )
        raise RuntimeError(f"antiquant_scale's shape must be {expected}, but it is {tuple(scale.shape)}")
    if scale.dtype == torch.int64 and kind != "channel":
        raise RuntimeError(
            f"antiquant_scale of dtype int64 supports only per-channel shapes (1, {n}) or ({n},), "
            f"but it is {tuple(scale.shape)}"
        )
    if offset is not None and offset.shape != scale.shape:
        raise RuntimeError(
            f"antiquant_offset's shape must be the same as antiquant_scale's {tuple(scale.shape)}, "
            f"but it is {tuple(offset.shape)}"
        )


def _check_quant_params(quant_scale: torch.Tensor | None, quant_offset: torch.Tensor | None, n: int) -> None:
    if quant_scale is None:
        return
    if quant_scale.dtype not in QUANT_SCALE_DTYPES:
        raise RuntimeError(f"quant_scale's dtype must be float32 or int64, but it is {quant_scale.dtype}")
    shape = tuple(quant_scale.shape)
    if shape not in ((1,), (n,), (1, 1), (1, n)):
        raise RuntimeError(f"quant_scale's shape must be (1,), ({n},), (1, 1) or (1, {n}), but it is {shape}")
    if quant_offset is not None:
        if quant_offset.dtype != torch.float32:
            raise RuntimeError(f"quant_offset's dtype must be float32, but it is {quant_offset.dtype}")
        if tuple(quant_offset.shape) != shape:
            raise RuntimeError(
                f"quant_offset's shape must be the same as quant_scale's {shape}, but it is {tuple(quant_offset.shape)}"
            )


def _check_bias(bias: torch.Tensor | None, x_dtype: torch.dtype, n: int) -> None:
    if bias is None:
        return
    want = BIAS_DTYPE[x_dtype]
    if bias.dtype != want:
        raise RuntimeError(f"bias's dtype must be {want} when x is {x_dtype}, but it is {bias.dtype}")
    if tuple(bias.shape) not in ((n,), (1, n)):
        raise RuntimeError(f"bias's shape must be ({n},) or (1, {n}), but it is {tuple(bias.shape)}")


def validate(
    x: torch.Tensor,
    weight: torch.Tensor,
    antiquant_scale: torch.Tensor,
    antiquant_offset: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    quant_offset: torch.Tensor | None,
    bias: torch.Tensor | None,
    antiquant_group_size: int,
    inner_precise: int,
) -> Plan:
    """Every argument rule (metadata only, so the fake kernel runs it too); returns the :class:`Plan`."""
    k, n, batch, packed_along_k = _shape_checks(x, weight)
    _check_group_and_flags(antiquant_group_size, k, quant_scale, quant_offset, inner_precise)
    if x.dtype not in X_DTYPES:
        raise RuntimeError(f"x's dtype must be float16 or bfloat16, but it is {x.dtype}")
    if weight.dtype not in WEIGHT_DTYPES:
        raise RuntimeError(f"weight's dtype must be int8 or int32 (8 packed int4), but it is {weight.dtype}")
    _check_antiquant_params(x, weight, antiquant_scale, antiquant_offset, quant_scale, k, n, antiquant_group_size)
    _check_quant_params(quant_scale, quant_offset, n)
    _check_bias(bias, x.dtype, n)
    m = x.shape[-2]
    check(x.numel() != 0 and weight.numel() != 0, "npu_weight_quant_batchmatmul does not support empty tensors")
    if not (1 <= k <= MAX_KN and 1 <= n <= MAX_KN):
        raise RuntimeError(f"k and n must be in [1, 65535], but k is {k} and n is {n}")
    others = {
        "weight": weight,
        "antiquant_scale": antiquant_scale,
        "antiquant_offset": antiquant_offset,
        "quant_scale": quant_scale,
        "quant_offset": quant_offset,
        "bias": bias,
    }
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise RuntimeError(f"{name} must be on the same device as x ({x.device}), but is on {t.device}")
    out_dtype = torch.int8 if quant_scale is not None else x.dtype
    return Plan((*batch, m, n), out_dtype, packed_along_k)


@torch.library.custom_op("npuquant::weight_quant_batchmatmul", mutates_args=())
def _operator(
    x: torch.Tensor,
    weight: torch.Tensor,
    antiquant_scale: torch.Tensor,
    antiquant_offset: torch.Tensor | None,
    quant_scale: torch.Tensor | None,
    quant_offset: torch.Tensor | None,
    bias: torch.Tensor | None,
    antiquant_group_size: int,
    inner_precise: int,
) -> torch.Tensor:
    """Every device but the CPU: the pure-torch golden."""
    plan = validate(
        x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
        inner_precise,
    )
    return reference.weight_quant_batchmatmul(
        x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
        plan.packed_along_k,
    ).reshape(plan.shape)


@_operator.register_kernel("cpu")
def _cpu(x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
         inner_precise):  # the operator's signature
    plan = validate(
        x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
        inner_precise,
    )
    impl = reference if _native.reference_forced() else native
    return impl.weight_quant_batchmatmul(
        x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
        plan.packed_along_k,
    ).reshape(plan.shape)


@_operator.register_fake
def _fake(x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
          inner_precise):  # the operator's signature
    plan = validate(
        x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias, antiquant_group_size,
        inner_precise,
    )
    return x.new_empty(plan.shape, dtype=plan.dtype)


def npu_weight_quant_batchmatmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    antiquant_scale: torch.Tensor,
    antiquant_offset: torch.Tensor | None = None,
    quant_scale: torch.Tensor | None = None,
    quant_offset: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    antiquant_group_size: int = 0,
    inner_precise: int = 0,
) -> torch.Tensor:
    """torch_npu.npu_weight_quant_batchmatmul: ``x @ ((weight + antiquant_offset) * antiquant_scale) + bias``.

    Args:
        x: float16 or bfloat16 ``(*b, m, k)`` (float32 accepted as an extension), any strides.
        weight: int8 ``(*b, k, n)``, or int32 holding 8 int4 per word: ``(*b, k, n/8)`` packed
            along n, or the transposed view ``(*b, k/8, n)`` of ``(*b, n, k/8)`` words (as
            ``npu_convert_weight_to_int4pack`` makes them from an ``(n, k)`` weight).
        antiquant_scale: x's dtype (or int64 from ``npu_trans_quant_param``: float16 x, int8
            weight, per-channel only); ``(1,)``/``(1, 1)`` per tensor, ``(n,)``/``(1, n)`` per
            channel, ``(ceil(k/G), n)`` per group.
        antiquant_offset: optional, antiquant_scale's dtype (int32 with an int64 scale) and shape.
        quant_scale: optional float32 or int64 ``(1,)``/``(n,)``/``(1, 1)``/``(1, n)``: int8 output.
        quant_offset: optional float32, quant_scale's shape; needs quant_scale.
        bias: optional ``(n,)``/``(1, n)``, float16 for float16 x, float32 for bfloat16 x.
        antiquant_group_size: 0, or the per-group size G: a multiple of 32 in [32, k - 1].
        inner_precise: 0 (high precision) or 1 (high performance); the numerics are the same here.

    Returns:
        ``(*batch, m, n)`` in x's dtype, or int8 when quant_scale is given.

    Raises:
        RuntimeError: torch_npu's message for its torch-layer rules, npuquant's for the aclnn ones.
        TypeError: a required tensor is missing.
    """
    tensors("npu_weight_quant_batchmatmul", x=x, weight=weight, antiquant_scale=antiquant_scale)
    optional_tensors(
        "npu_weight_quant_batchmatmul",
        antiquant_offset=antiquant_offset,
        quant_scale=quant_scale,
        quant_offset=quant_offset,
        bias=bias,
    )
    return torch.ops.npuquant.weight_quant_batchmatmul(
        x, weight, antiquant_scale, antiquant_offset, quant_scale, quant_offset, bias,
        int(antiquant_group_size), int(inner_precise),
    )
