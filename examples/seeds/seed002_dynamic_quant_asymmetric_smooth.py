# Seed 002, torch_npu.npu_dynamic_quant_asymmetric, 调用示例 "单算子模式调用": 使用smooth_scales输入，非MOE场景（不使用group_index），进行INT8量化 (lines 1-6).
# Reconstructed from the seed text, which flattens the code onto one line: the original statements,
# unchanged, one per line. Nothing is added (the print is the document's own; its inputs are random,
# so the document shows no values; tests/test_seed_examples.py checks the results against the formula).
# Run it on any machine: npuquant run examples/seeds/seed002_dynamic_quant_asymmetric_smooth.py
import torch
import torch_npu
x = torch.rand((3, 8), dtype=torch.half).npu()
smooth_scales = torch.rand((8,), dtype=torch.half).npu()
y, scale, offset = torch_npu.npu_dynamic_quant_asymmetric(x, smooth_scales=smooth_scales)
print(y, scale, offset)
