"""Quantized drop-in replacements for ``nn.Linear``, one per scheme of :func:`npuquant.quantize_model`.

* :class:`W8A8Linear` (``"w8a8"``): int8 per-channel symmetric weights; activations quantized per
  token, asymmetric, by ``npu_dynamic_quant_asymmetric``; exact int8 GEMM with the zero-point
  correction fused: ``out = (acc - offset * colsum(W)) * scale_token * scale_channel``.
* :class:`W8A8SymLinear` (``"w8a8-sym"``): the same weights; ``npu_dynamic_quant`` (symmetric)
  and ``npu_quant_matmul`` with ``pertoken_scale``.
* :class:`W4A16Linear` (``"w4a16"``): int4 weights with one scale and offset per group of
  ``group_size`` input channels, packed 8 per int32 along K (SPEC §2); the forward pass
  anti-quantizes a tile of output rows at a time and multiplies in the activation dtype.
* :class:`W4A8Linear` (``"w4a8"``): the same int4 per-group weights; activations quantized per
  token, symmetric, by ``npu_dynamic_quant``; exact int4 x int8 products per group (csrc/gemm_s4.c).

Weights are quantized with the library's own ops (``npu_dynamic_quant`` per output channel for
int8, ``npu_dynamic_quant_asymmetric`` with int4 output per group for int4), so a layer's
numerics are the ops' numerics. Every quantized tensor is a registered buffer: ``state_dict()``
holds the quantized model, and ``load_state_dict`` restores it without re-quantizing.

Each forward pass is one operator call (``torch.ops.npuquant.linear_w8a8``, ``linear_w8a8_sym``,
``linear_w4a16``, ``linear_w4a8``; C++ on CPU, the composition of the public ops elsewhere), and it reads the
layer's buffers as they are at that moment: nothing is derived from them and kept, so every edit
is seen on the next call, whichever way it is made: in place, ``copy_``, ``load_state_dict``,
``.to()``, and also writes that bypass torch's version counter (``.data``, numpy views, DLPack).
(Up to 8 rows the integer GEMV reads ``weight`` where it lies; larger inputs pack it per call.)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import _native
from ..ops import quant_matmul as _quant_matmul
from ..ops.anti_quant import dequant_int4_grouped
from ..ops.dynamic_quant import npu_dynamic_quant, npu_dynamic_quant_asymmetric, quantize_weight_int8
from ..ops.int4 import reference as _int4_reference
from ..ops.quant_matmul.asymmetric import quant_matmul_asymmetric

__all__ = ["QuantizedLinear", "W8A8Linear", "W8A8SymLinear", "W4A16Linear", "W4A8Linear", "SCHEMES"]

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---- one operator per layer: torch.ops.npuquant.linear_* (C++ on CPU); the references below are
# ---- the same computation composed of the public ops, the golden and the path on other devices.


def _linear_fake(x: torch.Tensor, weight: torch.Tensor, *args: Any) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=x.dtype)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as (tokens, features); explicit sizes, so that zero features (k == 0) stay unambiguous."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _smooth(smooth_scales: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if smooth_scales is None else smooth_scales.to(x.dtype)  # the ops take x's dtype


def _linear_w8a8_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    rows = _rows(x)
    q, scale, offset = npu_dynamic_quant_asymmetric(rows, smooth_scales=_smooth(smooth_scales, x))
    out = quant_matmul_asymmetric(q, scale, offset, weight.t(), weight_scale, bias, output_dtype=x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _linear_w8a8_sym_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    rows = _rows(x)
    q, scale = npu_dynamic_quant(rows, smooth_scales=_smooth(smooth_scales, x))
    # npu_quant_matmul's operator on normalised arguments: the public op's per-token mode has no
    # float32 output, and float32 activations should not round through float16.
    b = None if bias is None else bias.reshape(1, -1)
    out = _quant_matmul._compute(q.unsqueeze(0), weight.t().unsqueeze(0), weight_scale, None, scale, b, x.dtype)[0]
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _linear_w4a16_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_offset: torch.Tensor,
    bias: torch.Tensor | None,
    in_features: int,
    tile_rows: int,
) -> torch.Tensor:
    """Tile by tile: ``npu_anti_quant``-style grouped dequantization to x's dtype, then ``F.linear``.

    The native operator does exactly this from 9 rows on (bit for bit). Up to 8 rows (decode) it
    runs the fused int4 GEMV instead (csrc/gemv_int4.c): the same weights rounded to x's dtype, the
    products summed in float32 in that kernel's fixed order, so it agrees with this reference to
    float32 rounding rather than bit for bit.
    """
    if tile_rows < 1:
        raise RuntimeError(f"npuquant::linear_w4a16: tile_rows must be positive, but got {tile_rows}")
    rows = _rows(x.contiguous())  # as the operator multiplies it: BLAS rounds a transposed x differently
    n = weight.shape[0]
    out = torch.empty((rows.shape[0], n), dtype=x.dtype, device=x.device)
    for r0 in range(0, n, tile_rows):  # tile by tile, as the native operator, so the matmuls agree bit for bit
        r1 = min(r0 + tile_rows, n)
        tile = dequant_int4_grouped(weight[r0:r1], weight_scale[r0:r1], weight_offset[r0:r1], x.dtype)
        tile_bias = None if bias is None else bias[r0:r1]
        torch.ops.aten.linear.out(rows, tile[:, :in_features], tile_bias, out=out[:, r0:r1])
    return out.reshape(*x.shape[:-1], n)


def _gemm_s4_reference(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_offset: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The w4a8 product (csrc/gemm_s4.c's rule and float32 order), the golden of its native kernel.

    Per k-group g: exact integers ``a_g = x_q[:, g] @ w[:, g].T`` and ``s_g = sum x_q[:, g]``; then
    ``f = +0; f = f + (float(a_g) + offset[g] * float(s_g)) * scale[g]`` group by group, one float32
    operation at a time; ``y = f * x_scale (+ bias)``, cast to ``out_dtype``. Columns past k count as 0.
    """
    m, k = x_q.shape
    groups, n = weight_scale.shape
    kp = weight.shape[1] * 8
    g = kp // groups
    w = _int4_reference.unpack_int4(weight).to(torch.float64).reshape(n, groups, g).permute(1, 2, 0)
    x = F.pad(x_q.to(torch.float64), (0, kp - k)).reshape(m, groups, g).transpose(0, 1)  # (groups, m, g)
    acc = torch.bmm(x, w).to(torch.float32)  # exact integer sums (float64), then float32 (round half to even)
    xsum = x.sum(-1).to(torch.float32)  # (groups, m), exact
    f = torch.zeros(m, n, dtype=torch.float32, device=x_q.device)
    for i in range(groups):
        f = f + (acc[i] + weight_offset[i] * xsum[i].unsqueeze(1)) * weight_scale[i]
    y = f * x_scale.reshape(m, 1)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


def _gemm_s4_fake(x_q: torch.Tensor, x_scale: torch.Tensor, weight: torch.Tensor, *args: Any) -> torch.Tensor:
    return x_q.new_empty((x_q.shape[0], weight.shape[0]), dtype=args[-1])


def _linear_w4a8_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_offset: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """``npu_dynamic_quant`` per row (symmetric int8), then the w4a8 product in x's dtype."""
    rows = _rows(x)
    q, scale = npu_dynamic_quant(rows)
    out = _gemm_s4(q, scale, weight, weight_scale, weight_offset, bias, x.dtype)
    return out.reshape(*x.shape[:-1], weight.shape[0])


_gemm_s4 = _native.operator("gemm_s4", _gemm_s4_reference, _gemm_s4_fake)
_linear_w4a8 = _native.operator("linear_w4a8", _linear_w4a8_reference, _linear_fake)
_linear_w8a8 = _native.operator("linear_w8a8", _linear_w8a8_reference, _linear_fake)
_linear_w8a8_sym = _native.operator("linear_w8a8_sym", _linear_w8a8_sym_reference, _linear_fake)
_linear_w4a16 = _native.operator("linear_w4a16", _linear_w4a16_reference, _linear_fake)


class QuantizedLinear(nn.Module):
    """Common part of the quantized linear layers: shapes, bias, construction from ``nn.Linear``.

    Subclasses define ``scheme``, their quantized buffers in ``__init__`` (zero-filled, right
    shapes, so an instance can receive a saved ``state_dict``), ``_quantize_from`` and ``forward``.
    """

    scheme: ClassVar[str]
    supports_smoothing: ClassVar[bool] = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"in_features and out_features must be positive, got {in_features} and {out_features}")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.dtype = dtype or torch.get_default_dtype()
        self.register_buffer("bias", torch.zeros(out_features, dtype=self.dtype) if bias else None)

    # ---- construction ----

    @classmethod
    def from_linear(cls, linear: nn.Linear, **options: Any) -> QuantizedLinear:
        """Quantizes ``linear`` (left unchanged) into a new layer on the same device.

        Options are the subclass's constructor keywords; ``smooth_scales`` (w8a8 schemes) is the
        SmoothQuant factor ``s`` per input channel: the weight's columns are multiplied by ``s``
        before quantization and activations by ``1 / s`` inside the dynamic quantization op.
        """
        weight = linear.weight.detach()
        if weight.dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"cannot quantize a linear layer with {weight.dtype} weights")
        smooth = options.pop("smooth_scales", None)
        if smooth is not None:
            if not cls.supports_smoothing:
                raise ValueError(f"smooth_scales apply to the w8a8 schemes only, not {cls.scheme}")
            if smooth.shape != (linear.in_features,):
                raise ValueError(f"smooth_scales must have shape ({linear.in_features},), got {tuple(smooth.shape)}")
            options["smooth"] = True
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=weight.dtype, **options)
        layer.to(weight.device)
        with torch.no_grad():
            layer._quantize_from(weight.to(torch.float32), smooth)
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def _quantize_from(self, weight: torch.Tensor, smooth_scales: torch.Tensor | None) -> None:
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        """Constructor keywords beyond the shapes (JSON-serialisable), recorded by ``save_quantized``."""
        return {}

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.options().items())
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{extra}"

    # ---- per-call helpers ----

    def _check_input(self, x: torch.Tensor) -> None:
        """The few checks on x the layer's operator relies on (metadata only)."""
        if x.dtype not in ACTIVATION_DTYPES:
            raise ValueError(f"{type(self).__name__} expects float32, float16 or bfloat16 input, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (..., {self.in_features}), got {tuple(x.shape)}"
            )

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        result = super()._apply(fn, recurse)
        # .half() / .to(dtype) convert every float buffer; quantization parameters stay float32
        # (the ops read them so); the bias and the recorded dtype follow the model.
        for name in ("weight_scale", "weight_offset", "smooth_scales"):
            t = self._buffers.get(name)
            if t is not None and t.dtype != torch.float32:
                self._buffers[name] = t.to(torch.float32)
        self.dtype = fn(torch.empty(0, dtype=self.dtype)).dtype  # the float dtype the model now has
        return result


class _Int8WeightLinear(QuantizedLinear):
    """int8 per-output-channel symmetric weights (values in [-127, 127]) and optional smooth scales."""

    supports_smoothing = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        smooth: bool = False,
    ):
        super().__init__(in_features, out_features, bias, dtype)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.zeros(out_features, dtype=torch.float32))
        # Multiplies activations inside the dynamic quantization op (1 / SmoothQuant factor).
        self.register_buffer("smooth_scales", torch.ones(in_features, dtype=torch.float32) if smooth else None)

    def _quantize_from(self, weight: torch.Tensor, smooth_scales: torch.Tensor | None) -> None:
        if smooth_scales is not None:
            s = smooth_scales.to(device=weight.device, dtype=torch.float32)
            weight = weight * s
            self.smooth_scales.copy_(torch.reciprocal(s))
        q, scale = quantize_weight_int8(weight)  # the library's one per-channel int8 rule
        self.weight.copy_(q)
        self.weight_scale.copy_(scale)

    def options(self) -> dict[str, Any]:
        return {"smooth": self.smooth_scales is not None}


class W8A8Linear(_Int8WeightLinear):
    """``w8a8``: per-token asymmetric int8 activations x per-channel symmetric int8 weights.

    ``q, s, o = npu_dynamic_quant_asymmetric(x, smooth_scales=...)`` (so ``x ≈ (q - o) * s``), then the
    exact int8 GEMM ``acc = q @ W.T`` with the correction fused:
    ``out = (acc - o * colsum(W)) * s * weight_scale (+ bias)``, cast to x's dtype.
    """

    scheme = "w8a8"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers  # read on every call (never cached), without Module.__getattr__ (~2 us each)
        return _linear_w8a8(x, b["weight"], b["weight_scale"], b["smooth_scales"], b["bias"])


class W8A8SymLinear(_Int8WeightLinear):
    """``w8a8-sym``: ``npu_dynamic_quant`` (symmetric per token) + ``npu_quant_matmul`` with ``pertoken_scale``.

    ``out = acc * weight_scale * scale_token (+ bias)`` in float32, one cast to x's dtype. The public op's
    per-token mode only offers float16/bfloat16 outputs; the layer asks its dispatch point for
    x's dtype directly (float32 activations skip a float16 rounding and its ±65504 range).
    """

    scheme = "w8a8-sym"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers
        return _linear_w8a8_sym(x, b["weight"], b["weight_scale"], b["smooth_scales"], b["bias"])


class _Int4WeightLinear(QuantizedLinear):
    """int4 weights per group of ``group_size`` input channels, asymmetric (``w = (v + offset) * scale``),
    packed 8 per int32 along K (SPEC §2) into ``weight`` ``(out_features, K/8)``; K = in_features rounded up
    to a multiple of ``group_size`` (the padding columns are never used). ``weight_scale`` and
    ``weight_offset`` are float32 ``(out_features, K / group_size)``, or ``(K / group_size, out_features)``
    when the subclass sets ``per_group_rows`` (its kernel loads one group's parameters for many outputs)."""

    per_group_rows = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        group_size: int = 128,
    ):
        super().__init__(in_features, out_features, bias, dtype)
        if group_size <= 0 or group_size % 8:
            raise ValueError(f"group_size must be a positive multiple of 8, got {group_size}")
        self.group_size = int(group_size)
        groups = math.ceil(in_features / group_size)
        self.padded_in_features = groups * group_size
        shape = (groups, out_features) if self.per_group_rows else (out_features, groups)
        self.register_buffer("weight", torch.zeros(out_features, self.padded_in_features // 8, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.zeros(shape, dtype=torch.float32))
        self.register_buffer("weight_offset", torch.zeros(shape, dtype=torch.float32))

    def options(self) -> dict[str, Any]:
        return {"group_size": self.group_size}

    def _quantize_from(self, weight: torch.Tensor, smooth_scales: torch.Tensor | None) -> None:
        pad = self.padded_in_features - self.in_features
        if pad:
            # Repeat the last column: padding stays inside the last group's [min, max].
            weight = F.pad(weight.unsqueeze(0), (0, pad), mode="replicate").squeeze(0)
        groups = weight.reshape(-1, self.group_size).contiguous()
        # Per-group asymmetric int4 (scale = (max - min) / 15, y = round(w / scale + o)): w ≈ (y - o) * scale.
        q, scale, offset = npu_dynamic_quant_asymmetric(groups, dst_type=torch.quint4x2)
        scale, offset = scale.reshape(self.out_features, -1), offset.neg().reshape(self.out_features, -1)
        self.weight.copy_(q.reshape(self.out_features, -1))
        self.weight_scale.copy_(scale.t() if self.per_group_rows else scale)
        self.weight_offset.copy_(offset.t() if self.per_group_rows else offset)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole float weight ``(out_features, in_features)`` (for inspection; forward never builds it)."""
        scale, offset = self.weight_scale, self.weight_offset
        if self.per_group_rows:
            scale, offset = scale.t().contiguous(), offset.t().contiguous()
        return dequant_int4_grouped(self.weight, scale, offset, dtype)[:, : self.in_features]


class W4A16Linear(_Int4WeightLinear):
    """``w4a16``: int4 weights, one scale and offset per group of ``group_size`` input channels.

    Buffers: ``weight`` int32 ``(out_features, K/8)`` with K = in_features rounded up to a multiple
    of ``group_size`` (8 int4 per word along K, SPEC §2; the padding columns are never used),
    ``weight_scale`` and ``weight_offset`` float32 ``(out_features, K / group_size)``:
    ``w = (v + offset) * scale`` as in ``npu_anti_quant``. The forward pass anti-quantizes
    ``tile_rows`` output rows at a time (never the whole weight) and multiplies them in x's dtype.
    """

    scheme = "w4a16"
    # Dequantized elements per tile (4 MiB of float32), written into one buffer per thread that
    # every layer reuses (csrc/torch_ops.cpp), so the matmul reads it back from the cache. Measured on SmolLM2-135M (2-core Zen4
    # VM, group 32): 1M elements decoded fastest; 256K-element tiles, small enough for L2, were
    # ~15% slower (4x the per-tile calls, and the GEMV gained nothing from L2 over L3); 2M spilled.
    TILE_ELEMENTS = 1 << 20

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        group_size: int = 128,
    ):
        super().__init__(in_features, out_features, bias, dtype, group_size)
        self.tile_rows = max(1, min(out_features, self.TILE_ELEMENTS // self.padded_in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers
        return _linear_w4a16(
            x, b["weight"], b["weight_scale"], b["weight_offset"], b["bias"], self.in_features, self.tile_rows
        )


class W4A8Linear(_Int4WeightLinear):
    """``w4a8``: int4 per-group weights x int8 per-token activations, exact integer accumulation.

    Weights are quantized as :class:`W4A16Linear`'s (per group of ``group_size`` input channels,
    asymmetric: ``w = (v + offset) * scale``, the same packed int32 ``weight`` (out_features, K/8)),
    but ``weight_scale`` and ``weight_offset`` are float32 ``(K / group_size, out_features)``: the
    per-group layout of torch_npu's ``antiquant_scale``, one contiguous vector per group for the
    kernel's epilogue. Activations: ``npu_dynamic_quant`` per row (symmetric int8, scale ``s_x``).
    Per group g the integers ``a_g = sum x_q * v`` and ``s_g = sum x_q`` are exact; the output is
    ``(sum_g (a_g + offset_g * s_g) * scale_g) * s_x (+ bias)`` in float32 in that order (see
    csrc/gemm_s4.c), cast to x's dtype. One operator call per forward (``torch.ops.npuquant.linear_w4a8``).
    """

    scheme = "w4a8"
    per_group_rows = True  # parameters (K / group_size, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b = self._buffers
        return _linear_w4a8(x, b["weight"], b["weight_scale"], b["weight_offset"], b["bias"])


SCHEMES: dict[str, type[QuantizedLinear]] = {
    W8A8Linear.scheme: W8A8Linear,
    W8A8SymLinear.scheme: W8A8SymLinear,
    W4A16Linear.scheme: W4A16Linear,
    W4A8Linear.scheme: W4A8Linear,
}
