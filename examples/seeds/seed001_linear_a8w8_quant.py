# Seed 001, torch_npu.contrib.module.LinearA8W8Quant, 调用示例 "单算子模式调用".
# The seed's rendering of the example is garbled ("[object Object]"); this is the example it stands
# for, from the vendor's document of the same API (Ascend/op-plugin,
# docs/context/torch_npu-contrib-module-LinearA8W8Quant.md), statements unchanged. Nothing is added
# (the document shows no output; tests/test_seed_examples.py checks `output` against
# npu_quant_matmul, which the module wraps, SPEC §6).
# Run it on any machine: npuquant run examples/seeds/seed001_linear_a8w8_quant.py
# int8类型输入
import torch
import torch_npu
import logging
import os
from torch_npu.contrib.module import LinearA8W8Quant
x1 = torch.randint(-1, 1, (1, 512), dtype=torch.int8).npu()
x2 = torch.randint(-1, 1, (128, 512), dtype=torch.int8).npu()
scale = torch.randn(1, dtype=torch.float32).npu()
offset = torch.randn(128, dtype=torch.float32).npu()
bias = torch.randint(-1,1, (128,), dtype=torch.int32).npu()
in_features = 512
out_features = 128
output_dtype = torch.int8
model = LinearA8W8Quant(in_features, out_features, bias=True, offset=True, output_dtype=output_dtype)
model = model.npu()
model.weight.data = x2
model.scale.data = scale
model.offset.data = offset
model.bias.data = bias
output = model(x1)
