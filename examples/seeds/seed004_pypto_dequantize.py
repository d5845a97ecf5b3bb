# Seed 004, pypto.dequantize, 调用示例: "TileShape设置示例" then "接口调用示例" (the seed's statements, unchanged).
# `import pypto` gets npuquant.pypto through the compatibility layer. Added, and marked below: the imports,
# the input values the document's "结果示例" prints (pypto.tensor only declares shapes and dtypes; its
# content is uninitialized), and prints of the inputs and results in the document's format, which
# tests/test_seed_examples.py compares line by line with the document.
# Run it on any machine: npuquant run examples/seeds/seed004_pypto_dequantize.py
import torch  # added
import pypto  # added

pypto.set_vec_tile_shapes(4, 16)

x = pypto.tensor([3, 4], pypto.DT_INT8)
scale = pypto.tensor([3, 1], pypto.DT_FP32)
zero_points = pypto.tensor([3, 1], pypto.DT_FP32)

# added: the inputs shown in the document's result block
x.to_torch().copy_(torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]))
scale.to_torch().fill_(1.0)
zero_points.to_torch().fill_(-2.0)

# fp32 -> int8 对称反量化
y1 = pypto.dequantize(x, scale, pypto.DT_FP32, -1, None)
# fp32 -> uint8 非对称反量化
y2 = pypto.dequantize(x, scale, pypto.DT_FP32, -1, zero_points)

# added: print in the document's result format
print(f"Input  x:{x.to_torch().tolist()}")
print(f"Input  scale:{scale.to_torch().flatten().tolist()}")
print(f"Input  zero_points:{zero_points.to_torch().flatten().tolist()}")
print(f"Output y1:{y1.to_torch().tolist()}")
print(f"Output y2:{y2.to_torch().tolist()}")
