"""int4 packing: ``pack_int4``, ``unpack_int4`` and ``npu_convert_weight_to_int4pack`` (SPEC §2)."""

from __future__ import annotations

import torch

from ... import _native
from ..._args import check, tensors
from . import reference

# Value dtypes the native pack reads; others go to the reference.
PACK_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)

__all__ = ["pack_int4", "unpack_int4", "npu_convert_weight_to_int4pack"]


def _check_pack(values: torch.Tensor, name: str) -> None:
    check(
        not values.dtype.is_floating_point and not values.is_complex() and values.dtype != torch.bool,
        f"{name} must have an integer dtype, but got {values.dtype}",
    )
    check(values.dim() >= 1, f"{name} must have at least 1 dimension")
    check(values.shape[-1] % 8 == 0, f"the last dim of {name} must be a multiple of 8, but it is {values.shape[-1]}")


def _check_bounds(lo: int | None, hi: int | None, name: str) -> None:
    if lo is not None:
        check(lo >= -8 and hi <= 7, f"{name} must hold int4 values in [-8, 7], but found values in [{lo}, {hi}]")


def _check_range(values: torch.Tensor, name: str) -> None:
    # Data-dependent: a value outside [-8, 7] would be silently truncated. (Fake tensors have no values.)
    if values.numel() and not isinstance(values, torch._subclasses.FakeTensor):
        if values.dtype not in PACK_DTYPES:  # e.g. torch.uint16: torch has no min/max for it
            values = values.to(torch.int64)
        _check_bounds(int(values.min()), int(values.max()), name)


def _pack_reference(values: torch.Tensor, name: str = "values") -> torch.Tensor:
    _check_range(values, name)
    return reference.pack_int4(values)


def _pack_fake(values: torch.Tensor, name: str = "values") -> torch.Tensor:
    return values.new_empty((*values.shape[:-1], values.shape[-1] // 8), dtype=torch.int32)


def _unpack_fake(packed: torch.Tensor) -> torch.Tensor:
    return packed.new_empty((*packed.shape[:-1], packed.shape[-1] * 8), dtype=torch.int8)


# The native kernel finds the smallest and largest value in the same pass and raises the same error.
_pack = _native.operator("pack_int4", _pack_reference, _pack_fake)
_unpack = _native.operator("unpack_int4", reference.unpack_int4, _unpack_fake)


def _pack_any(values: torch.Tensor, name: str) -> torch.Tensor:
    if values.dtype in PACK_DTYPES:
        return _pack(values, name)
    return _pack_reference(values, name)  # another integer dtype (uint16, ...): the kernels take none of those


def _check_unpack(packed: torch.Tensor) -> None:
    check(packed.dtype == torch.int32, f"packed must be int32 (8 int4 per word), but got {packed.dtype}")
    check(packed.dim() >= 1, "packed must have at least 1 dimension")


def _check_convert(weight: torch.Tensor, inner_k_tiles: int) -> None:
    # torch_npu's checks, in its order and words (SPEC §2).
    check(weight.is_contiguous(), "weight should be contiguous")
    check(weight.dim() in (2, 3), f"weight shape only support dim num 2/3, but it is {weight.dim()}")
    check(
        weight.dtype in (torch.int32, torch.float32),
        f"weight dtype only support int32 and float32, but it is {weight.dtype}",
    )
    check(all(s > 0 for s in weight.shape), "weight dim should be greater than 0")
    check(weight.shape[-1] % 8 == 0, f"weight last dim should be the multiple of 8, but it is {weight.shape[-1]}")
    check(
        weight.dtype == torch.int32,
        "float32 weight (FP4-E2M1 packing, Ascend 950 only) is not supported by npuquant; pass int32 int4 values",
    )
    check(inner_k_tiles == 0, f"inner_k_tiles must be 0 (ND layout), but it is {inner_k_tiles}")


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Packs int4 values into int32 words, 8 per word, element j in bits 4j..4j+3 (SPEC §2).

    Args:
        values: integer tensor ``(..., 8n)`` with every value in [-8, 7].

    Returns:
        int32 tensor ``(..., n)``.

    Raises:
        RuntimeError: non-integer dtype, last dim not a multiple of 8, or a value outside [-8, 7].
    """
    tensors("pack_int4", values=values)
    _check_pack(values, "values")
    return _pack_any(values, "values")


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int32 ``(..., n)`` -> int8 ``(..., 8n)`` in [-8, 7]."""
    tensors("unpack_int4", packed=packed)
    _check_unpack(packed)
    return _unpack(packed)


def npu_convert_weight_to_int4pack(weight: torch.Tensor, inner_k_tiles: int = 0) -> torch.Tensor:
    """torch_npu.npu_convert_weight_to_int4pack: int32 int4 weights ``(k, n)`` -> int32 ``(k, n/8)``.

    The weight must be contiguous, 2-D or 3-D, with a last dim that is a multiple of 8 and
    values in [-8, 7]; the packing is :func:`pack_int4`'s (SPEC §2).
    """
    tensors("npu_convert_weight_to_int4pack", weight=weight)
    _check_convert(weight, inner_k_tiles)
    return _pack_any(weight, "weight")
