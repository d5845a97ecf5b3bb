"""The op entry points the quantized linear layers call.

The layers validate their (fixed) weights at construction, so per call they go straight to
each op family's dispatch function (native kernels on CPU, the pure-torch reference on other
devices) instead of the public custom-op wrapper: on a 135M-parameter model decoding one token
runs ~210 linear layers, and the wrapper's per-call argument checks would cost more than the
int8 GEMV itself. Numerics are the ops' own: nothing here re-implements their math.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .. import _native
from ..ops import anti_quant as _anti_quant
from ..ops import dynamic_quant as _dynamic_quant
from ..ops import quant_matmul as _quant_matmul
from ..ops.quant_matmul import asymmetric as _asymmetric


def dynamic_quant_asymmetric(
    x: torch.Tensor, smooth_scales: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``npu_dynamic_quant_asymmetric(x, smooth_scales=...)`` on a 2-D float tensor (validated by the caller)."""
    y, scale, offset = _dynamic_quant.dynamic_quant(x, smooth_scales, None, False, True)
    return y, scale, offset  # type: ignore[return-value]


def dynamic_quant_symmetric(
    x: torch.Tensor, smooth_scales: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``npu_dynamic_quant(x, smooth_scales=...)`` on a 2-D float tensor (validated by the caller)."""
    y, scale, _ = _dynamic_quant.dynamic_quant(x, smooth_scales, None, False, False)
    return y, scale


# ---- w8a8 (asymmetric activations): exact int8 GEMM with the zero-point correction fused ----


def prepare_asymmetric(weight: torch.Tensor) -> Any:
    """An int8 ``(n, k)`` weight in the form :func:`asymmetric_matmul` takes, built once per layer.

    CPU with the native library: packed into the GEMM's panel layout (with exact column sums);
    elsewhere the ``(k, n)`` view for the reference path.
    """
    if _native.use_native(weight):
        return _asymmetric.native.pack_weight(weight.t())
    return weight.t()


def asymmetric_matmul(
    packed: Any,
    q: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``quant_matmul_asymmetric``: ``(acc - offset * colsum(W)) * weight_scale * scale (+ bias)``, ``(m, n)``.

    q int8 ``(m, k)``, scale/offset float32 ``(m,)`` from ``npu_dynamic_quant_asymmetric``;
    ``packed`` from :func:`prepare_asymmetric`.
    """
    if isinstance(packed, _asymmetric.native.PackedWeight):
        return _asymmetric.native.quant_matmul_asymmetric(q, scale, offset, packed, weight_scale, bias, out_dtype)
    return _asymmetric._compute(q, scale, offset, packed, weight_scale, bias, out_dtype)


# ---- w8a8-sym: npu_quant_matmul with pertoken_scale ----


def quant_matmul_pertoken(
    q: torch.Tensor,
    weight_t: torch.Tensor,
    weight_scale: torch.Tensor,
    pertoken_scale: torch.Tensor,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``npu_quant_matmul(q, weight_t, weight_scale, pertoken_scale=..., output_dtype=out_dtype)`` for 2-D q.

    q int8 ``(m, k)``, weight_t int8 ``(k, n)`` (the ``.t()`` of a contiguous ``(n, k)``), float32
    weight_scale ``(n,)`` and pertoken_scale ``(m,)``. Goes to the op's dispatch point with its
    normalised arguments; out_dtype may also be float32 there (the epilogue's own precision).
    """
    return _quant_matmul._compute(
        q.unsqueeze(0), weight_t.unsqueeze(0), weight_scale, None, pertoken_scale, None, out_dtype
    )[0]


# ---- w4a16: grouped int4 dequantization of a tile of weight rows ----


def dequant_int4_grouped(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, out_dtype: torch.dtype
) -> torch.Tensor:
    """The anti-quant family's grouped int4 path: ``(v + offset[r, g]) * scale[r, g]`` for rows ``(rows, K/8)``."""
    return _anti_quant.dequant_int4_grouped(packed, scale, offset, out_dtype)


def grouped_int4_tiles(
    packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, out_dtype: torch.dtype, tile_rows: int
) -> Any:
    """The same dequantization as a plan of ``tile_rows``-row tiles (``.bounds``, ``.dequant(i, out)``), built once."""
    return _anti_quant.grouped_int4_tiles(packed, scale, offset, out_dtype, tile_rows)


_scratch = threading.local()  # per thread: concurrent forwards in several threads must not share a tile


def scratch(rows: int, columns: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A reusable ``(rows, columns)`` buffer (contents undefined), one per thread, dtype and device.

    Every w4a16 layer dequantizes its tiles into the same memory, so that memory stays in the cache
    from one tile (and layer) to the next; a buffer per layer would not (measured: per-layer buffers
    made the matmuls read the tiles from DRAM, ~4x slower).
    """
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    numel = rows * columns
    buf = buffers.get((dtype, device))
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: written in and out of inference mode alike
            buf = buffers[(dtype, device)] = torch.empty(numel, dtype=dtype, device=device)
    return buf[:numel].view(rows, columns)
