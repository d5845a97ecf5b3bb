# Seed 001 companion: torch_npu.npu_quant_matmul, the op LinearA8W8Quant wraps; the vendor document's
# example "单算子调用 / int8类型输入" (Ascend/op-plugin, docs/context/torch_npu-npu_quant_matmul.md; SPEC §10
# item 13). The document writes it as an interactive session: the ">>> " / "... " prompts are removed and
# each bare `npu_out` echo, whose output the document shows, is written as print(npu_out). The output is
# random; the document shows shape (31, 256, 16) int8 and the same tensor from both methods, which
# tests/test_seed_examples.py checks.
# Run it on any machine: npuquant run examples/seeds/seed001_quant_matmul.py
import torch
import torch_npu
import logging
import os

cpu_x1 = torch.randint(-5, 5, (1, 256, 768), dtype=torch.int8)
cpu_x2 = torch.randint(-5, 5, (31, 768, 16), dtype=torch.int8)
scale = torch.randn(16, dtype=torch.float32)
offset = torch.randn(16, dtype=torch.float32)
bias = torch.randint(-5, 5, (31, 1, 16), dtype=torch.int32)
# Method 1：You can directly call npu_quant_matmul
npu_out = torch_npu.npu_quant_matmul(
    cpu_x1.npu(), cpu_x2.npu(), scale.npu(), offset=offset.npu(), bias=bias.npu()
)
print(npu_out)

# Method 2: You can first call npu_trans_quant_param to convert scale and offset from float32 to int64
# when output dtype is not torch.bfloat16 and pertoken_scale is none
scale_1 = torch_npu.npu_trans_quant_param(scale.npu(), offset.npu())
npu_out = torch_npu.npu_quant_matmul(
    cpu_x1.npu(), cpu_x2.npu(), scale_1, bias=bias.npu()
)
print(npu_out)
