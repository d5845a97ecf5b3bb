# Seed 002, torch_npu.npu_dynamic_quant_asymmetric, 调用示例 "图模式调用" (lines 1-28).
# Reconstructed from the seed text, which flattens the code onto one line: the original statements,
# unchanged, one per line (indentation restored). Nothing is added (the prints are the document's own;
# its inputs are random, so the document shows no values; tests/test_seed_examples.py checks the
# results). 'npu:4' is the CPU here.
# Run it on any machine: npuquant run examples/seeds/seed002_dynamic_quant_asymmetric_graph.py
import torch
import torch_npu
import torchair as tng
from torchair.configs.compiler_config import CompilerConfig
torch_npu.npu.set_compile_mode(jit_compile=True)
config = CompilerConfig()
npu_backend = tng.get_npu_backend(compiler_config=config)
device=torch.device(f'npu:4')
torch_npu.npu.set_device(device)
class DynamicQuantModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
    def forward(self, input_tensor, smooth_scales=None, group_index=None, dst_type=None):
        out, scale, offset = torch_npu.npu_dynamic_quant_asymmetric(input_tensor, smooth_scales=smooth_scales, group_index=group_index, dst_type=dst_type)
        return out, scale, offset
x = torch.randn((2, 4, 6),device='npu',dtype=torch.float16).npu()
smooth_scales = torch.randn((6),device='npu',dtype=torch.float16).npu()
dynamic_quant_model = DynamicQuantModel().npu()
dynamic_quant_model = torch.compile(dynamic_quant_model, backend=npu_backend, dynamic=True)
out, scale, offset = dynamic_quant_model(x, smooth_scales=smooth_scales)
print(out)
print(scale)
print(offset)
