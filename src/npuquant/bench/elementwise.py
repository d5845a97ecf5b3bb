"""Benchmark cases for the memory-bound element-wise ops: anti-quant (int8 and packed int4),
int4 pack / unpack and per-token dynamic quantization.

Each case times the public op as users call it (output allocated per call), the native
operator alone (``kernel``: no argument checks, still allocating its output), and the eager torch
composition of the same maths.
"""

from __future__ import annotations

import torch

import npuquant
from npuquant.ops.dequant_affine import reference as affine_reference
from npuquant.ops.dynamic_quant import native as dq_native
from npuquant.ops.int4 import native as int4_native
from npuquant.ops.int4 import reference as int4_reference

from .harness import Case, Options, Workload, register

# LLM-typical shapes: a decode row, SmolLM2-135M's MLP (576 x 1536), a 4096^2 projection,
# and the 8192 x 4096 shape the targets are quoted at.
DEFAULT_SHAPES: list[tuple[int, ...]] = [(1, 4096), (576, 1536), (4096, 4096), (8192, 4096)]
QUICK_SHAPES: list[tuple[int, ...]] = [(4, 64)]

_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _shapes(opts: Options) -> list[tuple[int, ...]]:
    return opts.shapes or (QUICK_SHAPES if opts.quick else DEFAULT_SHAPES)


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    cols = shape[-1]
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return rows, cols


def _anti_quant(shape: tuple[int, ...], packed: bool, dst: torch.dtype) -> Workload:
    rows, cols = _rows_cols(shape)
    if packed:
        x = torch.randint(-(2**31), 2**31, (rows, cols // 8), dtype=torch.int64).to(torch.int32)
    else:
        x = torch.randint(-128, 128, (rows, cols), dtype=torch.int8)
    scale, offset = torch.rand(cols) * 0.02, torch.randn(cols)
    buf = torch.empty(rows, cols, dtype=dst)
    return Workload(
        run=lambda: npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=dst),
        kernel=lambda: torch.ops.npuquant.dequant_affine.default(x, scale, offset, dst),
        # the reference path is the eager composition: ((float(x) + offset) * scale).to(dst), int4 unpacked first
        eager=lambda: affine_reference.dequant_affine(x, scale, offset, dst),
        bytes=x.nbytes + buf.nbytes + scale.nbytes + offset.nbytes,
        elements=rows * cols,
    )


def _dequantize(shape: tuple[int, ...], axis: int) -> Workload:
    """pypto.dequantize's math: int8 -> float32 with one scale and zero point per row (axis -1) or column."""
    rows, cols = _rows_cols(shape)
    x = torch.randint(-128, 128, (rows, cols), dtype=torch.int8)
    n = rows if axis == -1 else cols
    scale, zp = torch.rand(n) * 0.02, torch.randn(n)
    s, z = scale.unsqueeze(axis), zp.unsqueeze(axis)  # (rows, 1) or (1, cols): also the operator's block shapes
    return Workload(
        run=lambda: npuquant.dequantize_per_row_col(x, scale, zero_points=zp, axis=axis),
        kernel=lambda: torch.ops.npuquant.dequant_affine.default(x, s, z, torch.float32),
        eager=lambda: (x.float() + z) * s,
        bytes=x.nbytes + rows * cols * 4 + 2 * scale.nbytes,
        elements=rows * cols,
    )


def _unpack(shape: tuple[int, ...]) -> Workload:
    rows, cols = _rows_cols(shape)
    packed = torch.randint(-(2**31), 2**31, (rows, cols // 8), dtype=torch.int64).to(torch.int32)
    buf = torch.empty(rows, cols, dtype=torch.int8)
    return Workload(
        run=lambda: npuquant.unpack_int4(packed),
        kernel=lambda: int4_native.unpack_int4(packed),
        eager=lambda: int4_reference.unpack_int4(packed),
        bytes=packed.nbytes + buf.nbytes,
        elements=rows * cols,
    )


def _pack(shape: tuple[int, ...]) -> Workload:
    rows, cols = _rows_cols(shape)
    values = torch.randint(-8, 8, (rows, cols), dtype=torch.int8)
    buf = torch.empty(rows, cols // 8, dtype=torch.int32)

    def eager() -> torch.Tensor:
        # the op's contract includes rejecting values outside [-8, 7]
        assert int(values.min()) >= -8 and int(values.max()) <= 7
        return int4_reference.pack_int4(values)

    return Workload(
        run=lambda: npuquant.pack_int4(values),
        kernel=lambda: int4_native.pack_int4(values),
        eager=eager,
        bytes=values.nbytes + buf.nbytes,
        elements=rows * cols,
    )


def _dynamic_quant(shape: tuple[int, ...], dtype: torch.dtype) -> Workload | None:
    fn = getattr(npuquant, "npu_dynamic_quant_asymmetric", None)
    if fn is None:
        return None
    rows, cols = _rows_cols(shape)
    x = torch.randn(rows, cols).to(dtype)
    s = (torch.rand(cols) + 0.5).to(dtype)

    def eager() -> torch.Tensor:
        xs = x.float() * s
        mx = xs.amax(-1, keepdim=True)
        mn = xs.amin(-1, keepdim=True)
        sc = ((mx - mn) / 255).clamp_min(1e-12)
        off = 127 - mx / sc
        return torch.round(xs / sc + off).clamp(-128, 127).to(torch.int8)

    return Workload(
        run=lambda: fn(x, smooth_scales=s),
        kernel=lambda: dq_native.dynamic_quant(x, s, None, True, False),
        eager=eager,
        bytes=x.nbytes + s.nbytes + rows * cols + rows * 8,  # y int8, scale and offset float32 per row
        elements=rows * cols,
    )


@register("elementwise")
def cases(opts: Options) -> list[Case]:
    out: list[Case] = []
    for shape in _shapes(opts):
        _, cols = _rows_cols(shape)
        int4_ok = cols % 8 == 0
        int4_skip = "" if int4_ok else f"last dim {cols} is not a multiple of 8"
        for dst, name in _DTYPE_NAMES.items():
            out.append(
                Case(
                    "elementwise", "anti_quant", f"int8->{name}", shape, lambda s=shape, d=dst: _anti_quant(s, False, d)
                )
            )
        for dst, name in _DTYPE_NAMES.items():
            out.append(
                Case(
                    "elementwise",
                    "anti_quant",
                    f"int4->{name}",
                    shape,
                    (lambda s=shape, d=dst: _anti_quant(s, True, d)) if int4_ok else (lambda: None),
                    int4_skip,
                )  # fmt: skip
            )
        for axis, name in ((-1, "per-row"), (-2, "per-column")):
            out.append(Case("elementwise", "dequantize", f"int8->float32 {name}", shape,
                            lambda s=shape, a=axis: _dequantize(s, a)))  # fmt: skip
        out.append(Case("elementwise", "unpack_int4", "int32->int8", shape,
                        (lambda s=shape: _unpack(s)) if int4_ok else (lambda: None), int4_skip))  # fmt: skip
        out.append(Case("elementwise", "pack_int4", "int8->int32", shape,
                        (lambda s=shape: _pack(s)) if int4_ok else (lambda: None), int4_skip))  # fmt: skip
        out.append(
            Case(
                "elementwise",
                "dynamic_quant",
                "bfloat16->int8 +smooth",
                shape,
                lambda s=shape: _dynamic_quant(s, torch.bfloat16),
                "npuquant.npu_dynamic_quant_asymmetric is not available",
            )  # fmt: skip
        )
    return out
