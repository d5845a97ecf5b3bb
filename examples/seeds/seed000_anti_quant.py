# Seed 000, torch_npu.npu_anti_quant, 调用示例 "单算子模式调用" (lines 1-6).
# Reconstructed from the seed text, which flattens the code onto one line: the original statements,
# unchanged, one per line. Nothing is added (the document shows no output; the result `out` is
# [6., 8., 10., 12.] float16, which tests/test_seed_examples.py checks).
# Run it on any machine: npuquant run examples/seeds/seed000_anti_quant.py
import torch
import torch_npu
x_tensor = torch.tensor([1,2,3,4], dtype=torch.int8).npu()
scale = torch.tensor([2.0], dtype=torch.float).npu()
offset = torch.tensor([2.0], dtype=torch.float).npu()
out = torch_npu.npu_anti_quant(x_tensor, scale, offset=offset, dst_dtype=torch.float16)
