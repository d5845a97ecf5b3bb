"""Benchmark cases for the int4-weight matmuls: ``npuquant bench int4_matmul`` (or one op by name).

Shapes are ``M x K x N`` as in :mod:`.gemm` (``K x N`` means M = 1); defaults: M in {1, 8, 512} for
SmolLM2-135M's projections (576x576, 576x1536, 1536x576). int4 weights in groups of 32 along K
(SmolLM2's own Q4_1 block), packed by ``npu_convert_weight_to_int4pack``. Rows:

* ``weight_quant_matmul`` / ``w4a16 fp16 g32``: ``npu_weight_quant_batchmatmul`` (float16 x,
  int4 weight (k, n/8), per-group antiquant scale and offset).
* ``quant_matmul_a8w4`` / ``a8w4 bf16 g32``: ``npu_quant_matmul`` with int8 x1 and an int32-packed
  int4 x2 (the vendor's split-activation numerics, pure torch on every device).
* ``linear_w4a8`` / ``layer g32`` and ``layer w8a8``: the ``w4a8`` layer (one operator call:
  ``npu_dynamic_quant`` + the exact int4 x int8 product, csrc/gemm_s4.c) beside the ``w8a8``
  layer on the same float32 input, as ``npuquant eval`` runs them; ``layer fbgemm (inexact)``: the
  PyTorch peer, torch.ao's dynamic int8 Linear (fbgemm), on the same input.

GOP/s counts 2*M*N*K operations; ``x eager`` is the speed-up over torch's float32 matmul of the
same shape (timed in the same process into a preallocated output).
"""

from __future__ import annotations

import torch

import npuquant
from npuquant.nn.linear import W4A8Linear, W8A8Linear

from .gemm import _fbgemm, _fp32_matmul
from .harness import Case, Options, Workload, register

GROUP = 32
M_VALUES = (1, 8, 512)
SMOLLM2_KN = ((576, 576), (576, 1536), (1536, 576))
DEFAULT_SHAPES = [(m, k, n) for k, n in SMOLLM2_KN for m in M_VALUES]
QUICK_SHAPES = [(4, 64, 48)]


def _shapes(opts: Options) -> list[tuple[int, int, int]]:
    out = []
    for shape in opts.shapes or (QUICK_SHAPES if opts.quick else DEFAULT_SHAPES):
        if len(shape) == 3:
            out.append(shape)
        elif len(shape) == 2:
            out.append((1, *shape))
    return [s for s in out if s[1] % GROUP == 0 and s[2] % 8 == 0]


def _int4_weight(k: int, n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randint(-8, 8, (k, n), dtype=torch.int32, generator=gen)
    scale = torch.rand(k // GROUP, n, generator=gen) / 100
    return npuquant.npu_convert_weight_to_int4pack(w), scale, gen


def _wqbmm(m: int, k: int, n: int) -> Workload:
    packed, scale, gen = _int4_weight(k, n, m * 7919 + k * 31 + n)
    x = torch.randn(m, k, generator=gen).half()
    s, o = scale.half(), torch.randn(k // GROUP, n, generator=gen).half()
    return Workload(
        run=lambda: npuquant.npu_weight_quant_batchmatmul(x, packed, s, o, antiquant_group_size=GROUP),
        eager=_fp32_matmul(m, k, n),
        bytes=x.nbytes + packed.nbytes + s.nbytes + o.nbytes + m * n * 2,
        elements=m * n,
        flops=2 * m * n * k,
        note="w4a16: anti-quant fused with the matmul; x eager = speed-up over torch float32 matmul",
    )


def _a8w4(m: int, k: int, n: int) -> Workload:
    packed, scale, gen = _int4_weight(k, n, m * 7919 + k * 31 + n + 1)
    x1 = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    pertoken = torch.rand(m, 1, generator=gen)
    offset = torch.randn(n, generator=gen)
    return Workload(
        run=lambda: npuquant.npu_quant_matmul(
            x1, packed, scale, offset=offset, pertoken_scale=pertoken, output_dtype=torch.bfloat16,
            group_sizes=[0, 0, GROUP],
        ),
        eager=_fp32_matmul(m, k, n),
        bytes=x1.nbytes + packed.nbytes + scale.nbytes + offset.nbytes + pertoken.nbytes + m * n * 2,
        elements=m * n,
        flops=2 * m * n * k,
        note="A8W4 (op-plugin's split-activation golden, pure torch)",
    )


def _layer(m: int, k: int, n: int, scheme: str) -> Workload:
    torch.manual_seed(m * 7919 + k * 31 + n)
    linear = torch.nn.Linear(k, n)
    layer = W4A8Linear.from_linear(linear, group_size=GROUP) if scheme == "w4a8" else W8A8Linear.from_linear(linear)
    x = torch.randn(m, k)
    weight_bytes = sum(b.nbytes for b in layer.buffers())
    return Workload(
        run=lambda: layer(x),
        eager=_fp32_matmul(m, k, n),
        bytes=x.nbytes + weight_bytes + m * n * 4,
        elements=m * n,
        flops=2 * m * n * k,
        note=f"the {scheme} layer (dynamic int8 activations + exact integer product), float32 in and out",
    )


@register("int4_matmul")
def cases(opts: Options) -> list[Case]:
    out = []
    for m, k, n in _shapes(opts):
        shape = (m, k, n)
        out.append(Case("int4_matmul", "weight_quant_matmul", "w4a16 fp16 g32", shape,
                        lambda m=m, k=k, n=n: _wqbmm(m, k, n)))
        out.append(Case("int4_matmul", "quant_matmul_a8w4", "a8w4 bf16 g32", shape,
                        lambda m=m, k=k, n=n: _a8w4(m, k, n)))
        out.append(Case("int4_matmul", "linear_w4a8", "layer g32", shape,
                        lambda m=m, k=k, n=n: _layer(m, k, n, "w4a8")))
        out.append(Case("int4_matmul", "linear_w4a8", "layer w8a8", shape,
                        lambda m=m, k=k, n=n: _layer(m, k, n, "w8a8")))
        out.append(Case("int4_matmul", "linear_w4a8", "layer fbgemm (inexact)", shape,
                        lambda m=m, k=k, n=n: _fbgemm(m, k, n),
                        skip_reason="torch has no fbgemm quantized engine here"))
    return out
