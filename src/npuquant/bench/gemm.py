"""Benchmark cases for the int8 GEMM: ``npuquant bench gemm``.

Shapes are ``M x K x N`` (``--shapes 1x4096x4096,128x4096x4096``; ``K x N`` means M = 1): activations
``(M, K)`` times a Linear weight ``(N, K)`` used as ``x2 = weight.t()``. ``--isa avx2`` caps the kernel. Defaults: M in {1, 8, 32, 128, 512} for
K = N in {1024, 4096} and for SmolLM2-135M's projections (K x N = 576x576, 576x1536, 1536x576 and
the 576x49152 LM head).

Rows per shape (GOP/s counts 2*M*N*K operations; ``x eager`` is the speed-up over torch's float32
matmul of the same shape, timed in the same process into a preallocated output):

* ``gemm`` / ``a8w8 bf16 pertoken``: ``npu_quant_matmul`` as users call it (exact int32 accumulation,
  per-channel scale x per-token scale epilogue, bfloat16 output; nothing cached between calls:
  M <= 8 reads the weight in place, larger M packs it per call). ``kernel`` = the operator
  ``torch.ops.npuquant.quant_matmul`` without the public function's validation.
* ``gemm_fbgemm`` / ``qlinear_dynamic (inexact)``: PyTorch's dynamically quantized Linear
  (fbgemm engine, int8 weights, activations quantized per call). Not exact on CPUs without VNNI
  (vpmaddubsw saturates int16 pair sums); shown as the speed reference it is. Its ``x eager``
  against ours gives the speed-up over fbgemm.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

import npuquant
from npuquant.ops.quant_matmul import native

from .harness import Case, Options, Workload, register

M_VALUES = (1, 8, 32, 128, 512)
SQUARE_SIZES = (1024, 4096)
SMOLLM2_KN = ((576, 576), (576, 1536), (1536, 576), (576, 49152))
DEFAULT_SHAPES: list[tuple[int, ...]] = [(m, s, s) for s in SQUARE_SIZES for m in M_VALUES] + [
    (m, k, n) for k, n in SMOLLM2_KN for m in M_VALUES
]
QUICK_SHAPES: list[tuple[int, ...]] = [(4, 64, 48)]


def _shapes(opts: Options) -> list[tuple[int, int, int]]:
    shapes = opts.shapes or (QUICK_SHAPES if opts.quick else DEFAULT_SHAPES)
    out = []
    for shape in shapes:
        if len(shape) == 3:
            out.append(shape)
        elif len(shape) == 2:  # K x N: decode row
            out.append((1, *shape))
    return out


def _inputs(m: int, k: int, n: int):
    gen = torch.Generator().manual_seed(m * 7919 + k * 31 + n)
    x = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) / 1000
    pertoken = torch.rand(m, generator=gen)
    return x, w, scale, pertoken


def _fp32_matmul(m: int, k: int, n: int):
    a = torch.randn(m, k)
    b = torch.randn(n, k).t()  # a Linear weight, as torch.nn.functional.linear uses it
    out = torch.empty(m, n)
    return lambda: torch.matmul(a, b, out=out)


def _ours(m: int, k: int, n: int) -> Workload:
    x, w, scale, pertoken = _inputs(m, k, n)
    x1, x2 = x.unsqueeze(0), w.t().unsqueeze(0)
    out_bytes = m * n * 2
    return Workload(
        run=lambda: npuquant.npu_quant_matmul(x, w.t(), scale, pertoken_scale=pertoken, output_dtype=torch.bfloat16),
        kernel=lambda: native.quant_matmul(x1, x2, scale, None, pertoken, None, torch.bfloat16),
        eager=_fp32_matmul(m, k, n),
        bytes=x.nbytes + w.nbytes + scale.nbytes + pertoken.nbytes + out_bytes,
        elements=m * n,
        flops=2 * m * n * k,
        note="exact int32 accumulation; x eager = speed-up over torch float32 matmul",
    )


@contextlib.contextmanager
def _quantized_engine(name: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _fbgemm(m: int, k: int, n: int) -> Workload | None:
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return None
    linear = torch.nn.Linear(k, n, bias=False)
    with warnings.catch_warnings(), _quantized_engine("fbgemm"):
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
        qlinear = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8
        )
    a = torch.randn(m, k)
    return Workload(
        run=lambda: qlinear(a),
        eager=_fp32_matmul(m, k, n),
        bytes=a.nbytes + k * n + m * n * 4,
        elements=m * n,
        flops=2 * m * n * k,
        note="torch.ao dynamic quantized Linear (fbgemm, u8s8 vpmaddubsw: inexact without VNNI)",
    )


@register("gemm")
def cases(opts: Options) -> list[Case]:
    out = []
    for m, k, n in _shapes(opts):
        out.append(Case("gemm", "gemm", "a8w8 bf16 pertoken", (m, k, n), lambda m=m, k=k, n=n: _ours(m, k, n)))
        out.append(
            Case(
                "gemm",
                "gemm_fbgemm",
                "qlinear_dynamic (inexact)",
                (m, k, n),
                lambda m=m, k=k, n=n: _fbgemm(m, k, n),
                skip_reason="torch has no fbgemm quantized engine here",
            )
        )
    return out
