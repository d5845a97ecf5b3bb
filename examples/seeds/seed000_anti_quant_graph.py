# Seed 000, torch_npu.npu_anti_quant, 调用示例 "图模式调用" (lines 1-20).
# Reconstructed from the seed text, which flattens the code onto one line: the original statements,
# unchanged, one per line (indentation restored). Nothing is added (the document shows no output;
# `output` is [6., 8., 10., 12.] float16, which tests/test_seed_examples.py checks).
# Run it on any machine: npuquant run examples/seeds/seed000_anti_quant_graph.py
import torch
import torch_npu
import torchair as tng
from torchair.ge_concrete_graph import ge_apis as ge
from torchair.configs.compiler_config import CompilerConfig
config = CompilerConfig()
config.debug.graph_dump.type = 'pbtxt'
npu_backend = tng.get_npu_backend(compiler_config=config)
x_tensor = torch.tensor([1,2,3,4], dtype=torch.int8).npu()
scale = torch.tensor([2.0], dtype=torch.float).npu()
offset = torch.tensor([2.0], dtype=torch.float).npu()
class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self,x,scale,offset):
        return torch_npu.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.float16)
cpu_model = Model()
model = torch.compile(cpu_model, backend=npu_backend, dynamic=False, fullgraph=True)
output = model(x_tensor,scale,offset)
