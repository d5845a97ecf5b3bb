"""Per-row / per-column dequantization of int8 / int16 to float32 (SPEC §8.1).

    dst = (float32(x) + zero_points) * scale          # symmetric: float32(x) * scale

This is the math behind ``pypto.dequantize``; the pypto front-end (``npuquant.pypto``) checks
PyPTO's rules and walks the output tile by tile, calling this op on each tile.

Route: :func:`dequantize_per_row_col` (public, keyword arguments, validation) -> shape adapter
-> operator ``torch.ops.npuquant.dequant_affine`` (the C kernel on CPU, the pure-torch reference
elsewhere; :mod:`npuquant.ops.dequant_affine`).

Shapes (x = ``[..., row, col]``):
    axis -1 (per-row):    scale / zero_points ``[..., row]``  = ``x.shape[:-1]``
    axis -2 (per-column): scale / zero_points ``[..., col]``  = ``x.shape[:-2] + x.shape[-1:]``
Non-negative axes ``x.dim() - 1`` / ``x.dim() - 2`` mean the same.
"""

from __future__ import annotations

import torch

from ..._args import optional_tensors, tensors
from ..dequant_affine import dequant_affine

__all__ = ["dequantize_per_row_col", "dequantize", "normalize_axis", "param_shape"]

INPUT_DTYPES = (torch.int8, torch.int16)


def normalize_axis(axis: int, ndim: int) -> int:
    """PyPTO's normalisation: a non-negative axis counts from the front (``axis - ndim``)."""
    return axis - ndim if axis >= 0 else axis


def param_shape(x_shape: tuple[int, ...] | torch.Size, axis: int) -> tuple[int, ...]:
    """Shape scale / zero_points must have for a normalized ``axis`` (-1 or -2)."""
    shape = tuple(x_shape)
    return shape[:-1] if axis == -1 else shape[:-2] + shape[-1:]


def validate(x: torch.Tensor, scale: torch.Tensor, zero_points: torch.Tensor | None, axis: int) -> int:
    """Every rule of the op, metadata only; returns the normalized axis (-1 or -2).

    Runs on every call (pypto calls it per tile), so each message is formatted only when its rule fails.
    """
    if x.dtype not in INPUT_DTYPES:
        raise RuntimeError(f"dequantize: x must be int8 or int16, but got {x.dtype}")
    dim = x.dim()
    if dim < 1:
        raise RuntimeError("dequantize: x must have at least 1 dimension")
    norm = normalize_axis(axis, dim)
    if norm not in (-1, -2):
        raise RuntimeError(
            f"dequantize: axis must be -1 (per-row) or -2 (per-column), but got axis={axis} (normalized={norm})"
        )
    if norm == -2 and dim < 2:
        raise RuntimeError("dequantize: 1D input only supports axis=-1, axis=-2 is not supported")
    expected = param_shape(x.shape, norm)
    for name, t in (("scale", scale), ("zero_points", zero_points)):
        if t is None:
            continue
        if t.dtype != torch.float32:
            raise RuntimeError(f"dequantize: {name} must be float32, but got {t.dtype}")
        if tuple(t.shape) != expected:
            raise RuntimeError(
                f"dequantize: {name} shape must be {list(expected)} for x of shape {list(x.shape)} and axis={norm}, "
                f"but got {list(t.shape)}"
            )
        if t.device != x.device:
            raise RuntimeError(f"dequantize: {name} must be on the same device as x ({x.device}), but is on {t.device}")
    return norm


def _dequantize(x: torch.Tensor, scale: torch.Tensor, zero_points: torch.Tensor | None, axis: int) -> torch.Tensor:
    """Shape adapter: parameters (rows, 1) per row, (matrices, cols) per matrix column."""
    if x.numel():
        view = (-1, 1) if axis == -1 else (-1, x.shape[-1])
        scale = scale.reshape(view)
        zero_points = None if zero_points is None else zero_points.reshape(view)
    return dequant_affine(x, scale, zero_points, torch.float32)


def dequantize(x: torch.Tensor, scale: torch.Tensor, zero_points: torch.Tensor | None, axis: int) -> torch.Tensor:
    """The operator on validated arguments (axis already -1 or -2): the native CPU kernel
    (bit-identical: same float32 operation order) or the pure-torch reference elsewhere."""
    return _dequantize(x, scale, zero_points, axis)


def dequantize_per_row_col(
    x: torch.Tensor,
    scale: torch.Tensor,
    *,
    zero_points: torch.Tensor | None = None,
    axis: int = -1,
) -> torch.Tensor:
    """Per-row (axis -1) or per-column (axis -2) dequantization: ``(float32(x) + zero_points) * scale``.

    Args:
        x: int8 or int16 tensor ``[..., row, col]``, any strides.
        scale: float32, shape ``x.shape[:-1]`` (axis -1) or ``x.shape[:-2] + x.shape[-1:]`` (axis -2).
        zero_points: optional float32 of scale's shape; ``None`` means symmetric.
        axis: -1 / ``x.dim() - 1`` (per-row) or -2 / ``x.dim() - 2`` (per-column).

    Returns:
        Contiguous float32 tensor of x's shape (float32 arithmetic: add, then multiply).

    Raises:
        RuntimeError: naming the argument and the rule that failed.
    """
    tensors("dequantize_per_row_col", x=x, scale=scale)
    optional_tensors("dequantize_per_row_col", zero_points=zero_points)
    norm = validate(x, scale, zero_points, axis)
    return _dequantize(x, scale, zero_points, norm)
