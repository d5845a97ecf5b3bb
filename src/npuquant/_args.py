"""Argument handling shared by every op: dtype codes (SPEC §0) and torch_npu-style checks."""

from __future__ import annotations

import torch

# torch.ScalarType codes as torch_npu's schemas carry them (`int? dst_dtype`).
SCALAR_TYPE_CODES: dict[int, torch.dtype] = {
    0: torch.uint8,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    7: torch.float64,
    11: torch.bool,
    12: torch.qint8,
    13: torch.quint8,
    14: torch.qint32,
    15: torch.bfloat16,
    16: torch.quint4x2,
    23: torch.float8_e5m2,
    24: torch.float8_e4m3fn,
}
# torch_npu's own int4 code; it means the same thing as quint4x2 in these APIs.
TORCH_NPU_INT4 = 285
SCALAR_TYPE_CODES[TORCH_NPU_INT4] = torch.quint4x2



def to_dtype(value: torch.dtype | int | None, unknown_message: str) -> torch.dtype | None:
    """Normalises a dtype argument; an unknown integer code raises RuntimeError(unknown_message)."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuntimeError(f"{unknown_message} (expected a torch.dtype or an integer ScalarType code, got {value!r})")
    try:
        return SCALAR_TYPE_CODES[value]
    except KeyError:
        raise RuntimeError(unknown_message) from None


def check(condition: bool, message: str) -> None:
    """torch_npu's TORCH_CHECK: raise RuntimeError carrying the quoted text when the rule fails."""
    if not condition:
        raise RuntimeError(message)


def tensors(op: str, **arguments: object) -> None:
    """TypeError naming the argument when a required tensor argument is None or not a tensor.

    Called first by every public op, so a missing tensor never surfaces as an AttributeError.
    """
    for name, value in arguments.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{op}(): argument '{name}' must be a torch.Tensor, but got {type(value).__name__}")


def optional_tensors(op: str, **arguments: object) -> None:
    """As :func:`tensors` for optional arguments: None is fine, anything else must be a tensor."""
    for name, value in arguments.items():
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{op}(): argument '{name}' must be a torch.Tensor or None, but got {type(value).__name__}"
            )
