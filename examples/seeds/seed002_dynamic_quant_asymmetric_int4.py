# Seed 002, torch_npu.npu_dynamic_quant_asymmetric, 调用示例 "单算子模式调用": 只有一个输入x，进行INT4量化 (lines 1-5).
# Reconstructed from the seed text, which flattens the code onto one line: the original statements,
# unchanged, one per line. Nothing is added (the print is the document's own; its inputs are random,
# so the document shows no values; tests/test_seed_examples.py checks the results against the formula).
# Run it on any machine: npuquant run examples/seeds/seed002_dynamic_quant_asymmetric_int4.py
import torch
import torch_npu
x = torch.rand((3, 8), dtype=torch.half).npu()
y, scale, offset = torch_npu.npu_dynamic_quant_asymmetric(x, dst_type=torch.quint4x2)
print(y, scale, offset)
