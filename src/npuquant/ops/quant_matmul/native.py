"""Native CPU path of ``npu_quant_matmul``: an exact int8 GEMM with the epilogue fused (csrc/gemm_s8.c),
as torch operators registered by csrc/torch_ops.cpp.

* ``quant_matmul(x1, x2, scale, offset, pertoken_scale, bias, out_dtype)``: the native twin of
  ``reference.quant_matmul`` on normalised arguments (``ops.quant_matmul._compute``), bit for bit.
* ``quant_matmul_asymmetric(x_q, x_scale, x_offset, weight, w_scale, bias, out_dtype)``: the native
  twin of ``asymmetric.reference``.

Nothing is cached between calls, so a result always reflects its inputs' current contents. Up to
8 rows (decode) a GEMV reads the weight where it lies (a ``w.t()`` view of a row-major ``(n, k)``
weight streams each weight row once, column sums computed in the same pass); larger M packs the
weight per call into the GEMM's panel layout (a small fraction of the GEMM itself).

The kernels accumulate in int32 exactly (modulo 2**32, like the reference and the device):
AVX-512 VNNI ``vpdpbusd`` with a -128 * colsum correction, AVX2 int16 ``vpmaddwd`` (never the
saturating ``vpmaddubsw``), or scalar C, chosen at run time by the ISA level in force.
"""

from __future__ import annotations

import torch

__all__ = ["quant_matmul", "quant_matmul_asymmetric"]

quant_matmul = torch.ops.npuquant.quant_matmul.default
quant_matmul_asymmetric = torch.ops.npuquant.quant_matmul_asymmetric.default
