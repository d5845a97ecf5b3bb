"""Per-call cost of small calls: ``npuquant bench overhead``.

At decode, a quantized model calls ~200 layers back to back on one row each, so what a call
costs besides its arithmetic decides the speed. Each row times npuquant as users call it against
the float peer a user would otherwise run, in the same process (``x eager`` > 1: npuquant is faster):

* ``layer w8a8`` / ``w8a8-sym`` / ``w4a16``: a ``quantize_model`` layer (one operator call:
  activation quantization + exact integer GEMV + epilogue) against ``nn.Linear`` in float32.
* ``npu_anti_quant``: one row against the eager composition ``((x.float() + offset) * scale).half()``.

Run it with ``--threads 1`` for the per-call cost alone, and with the default threads for what a
model sees.
"""

from __future__ import annotations

import torch
from torch import nn

import npuquant
from npuquant.nn import SCHEMES

from .harness import Case, Options, Workload, register

# (tokens, in_features, out_features): the toy layer, SmolLM2-135M's q/o projection and its MLP.
LAYER_SHAPES: list[tuple[int, ...]] = [(1, 64, 64), (1, 576, 192), (1, 576, 1536), (1, 1536, 576)]
QUICK_LAYER_SHAPES: list[tuple[int, ...]] = [(1, 64, 64)]
ANTI_QUANT_SHAPES: list[tuple[int, ...]] = [(1, 4096)]


def _layer(scheme: str, shape: tuple[int, ...]) -> Workload:
    m, k, n = shape
    torch.manual_seed(k * 31 + n)
    linear = nn.Linear(k, n)
    options = {"group_size": 32} if scheme == "w4a16" else {}
    layer = SCHEMES[scheme].from_linear(linear, **options)
    x = torch.randn(m, k)

    def run() -> torch.Tensor:
        with torch.no_grad():
            return layer(x)

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return linear(x)

    return Workload(
        run=run,
        eager=eager,
        bytes=x.nbytes + layer.weight.nbytes + m * n * 4,
        elements=m * n,
        flops=2 * m * k * n,
        note="x eager = speed-up over float32 nn.Linear",
    )


def _anti_quant(shape: tuple[int, ...]) -> Workload:
    rows, cols = shape
    x = torch.randint(-128, 128, (rows, cols), dtype=torch.int8)
    scale, offset = torch.rand(cols) * 0.02, torch.randn(cols)
    return Workload(
        run=lambda: npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.float16),
        eager=lambda: ((x.float() + offset) * scale).half(),
        bytes=x.nbytes + rows * cols * 2 + scale.nbytes + offset.nbytes,
        elements=rows * cols,
        note="x eager = speed-up over ((x.float() + offset) * scale).half()",
    )


@register("overhead")
def cases(opts: Options) -> list[Case]:
    out: list[Case] = []
    layer_shapes = opts.shapes or (QUICK_LAYER_SHAPES if opts.quick else LAYER_SHAPES)
    for shape in layer_shapes:
        if len(shape) != 3:
            continue
        for scheme in SCHEMES:
            out.append(Case("overhead", "layer", scheme, shape, lambda s=shape, sc=scheme: _layer(sc, s)))
    for shape in ANTI_QUANT_SHAPES if not opts.shapes else [s for s in opts.shapes if len(s) == 2]:
        out.append(Case("overhead", "npu_anti_quant", "int8->float16 +offset", shape, lambda s=shape: _anti_quant(s)))
    return out
