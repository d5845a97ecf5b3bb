"""Benchmark cases for the grouped int8 GEMM (MoE experts): ``npuquant bench grouped_gemm``.

Shapes are ``M x K x N x E`` (``--shapes 2048x1024x1024x8``): M token rows split evenly over E
experts, each expert an ``(N, K)`` int8 weight used as ``w.t()`` (one ``(E, K, N)`` view), per-channel
bfloat16 scales, per-token float32 scales, bfloat16 output — vllm-ascend's W8A8 MoE call of
``npu_grouped_matmul`` (``split_item=2``, ``group_type=0``, counts as ``group_list``).

Row ``grouped_gemm`` / ``a8w8 bf16 pertoken``: GOP/s counts 2*M*K*N; ``kernel`` is the operator
``torch.ops.npuquant.grouped_matmul_s8`` without the public function's checks; ``x eager`` is the
speed relative to the *dense* ``npu_quant_matmul`` of the same total M x K x N (one weight, same
epilogue): 1.0x means the grouped GEMM runs as fast per operation as one dense GEMM.
"""

from __future__ import annotations

import torch

import npuquant
from npuquant.ops.grouped_matmul import native

from .harness import Case, Options, Workload, register

DEFAULT_SHAPES: list[tuple[int, ...]] = [(512, 1024, 1024, 8), (2048, 1024, 1024, 8), (2048, 2048, 768, 16)]
QUICK_SHAPES: list[tuple[int, ...]] = [(16, 64, 48, 4)]


def _workload(m: int, k: int, n: int, experts: int) -> Workload:
    gen = torch.Generator().manual_seed(m * 7919 + k * 31 + n + experts)
    x = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (experts, n, k), generator=gen, dtype=torch.int8).transpose(1, 2)
    scale = (torch.rand(experts, n, generator=gen) / 1000).to(torch.bfloat16)
    pertoken = torch.rand(m, generator=gen)
    counts = torch.full((experts,), m // experts, dtype=torch.int64)
    counts[: m % experts] += 1
    dense_w, dense_scale = w[0], scale[0].float()
    flat_scale = scale.reshape(-1).float()

    def run():
        return npuquant.npu_grouped_matmul(
            [x], [w], scale=[scale], per_token_scale=[pertoken], group_list=counts, group_list_type=1,
            group_type=0, split_item=2, output_dtype=torch.bfloat16,
        )

    return Workload(
        run=run,
        kernel=lambda: native.grouped_matmul_s8([x], [w], counts, flat_scale, None, pertoken, None, torch.bfloat16,
                                                True),
        eager=lambda: npuquant.npu_quant_matmul(x, dense_w, dense_scale, pertoken_scale=pertoken,
                                                output_dtype=torch.bfloat16),
        bytes=x.nbytes + experts * k * n + scale.nbytes + pertoken.nbytes + m * n * 2,
        elements=m * n,
        flops=2 * m * n * k,
        note="x eager = speed relative to the dense npu_quant_matmul of the same M x K x N",
    )


@register("grouped_gemm")
def cases(opts: Options) -> list[Case]:
    shapes = opts.shapes or (QUICK_SHAPES if opts.quick else DEFAULT_SHAPES)
    out = []
    for shape in shapes:
        if len(shape) != 4:
            continue  # M x K x N x E only
        m, k, n, e = shape
        out.append(Case("grouped_gemm", "grouped_gemm", f"a8w8 bf16 pertoken, {e} experts", (m, k, n, e),
                        lambda m=m, k=k, n=n, e=e: _workload(m, k, n, e)))
    return out
