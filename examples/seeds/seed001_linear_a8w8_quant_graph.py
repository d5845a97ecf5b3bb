# Seed 001, torch_npu.contrib.module.LinearA8W8Quant, 调用示例 "图模式调用".
# The seed's rendering of the example is garbled ("[object Object]"); this is the example it stands
# for, from the vendor's document of the same API (Ascend/op-plugin,
# docs/context/torch_npu-contrib-module-LinearA8W8Quant.md), statements unchanged. Nothing is added
# (the document shows no output; tests/test_seed_examples.py checks `output`). The <term> markup in
# the document's one comment is dropped.
# Run it on any machine: npuquant run examples/seeds/seed001_linear_a8w8_quant_graph.py
import torch
import torch_npu
import torchair as tng
from torchair.ge_concrete_graph import ge_apis as ge
from torchair.configs.compiler_config import CompilerConfig
from torch_npu.contrib.module import LinearA8W8Quant
import logging
from torchair.core.utils import logger
logger.setLevel(logging.DEBUG)
import os
import numpy as np
os.environ["ENABLE_ACLNN"] = "true"
config = CompilerConfig()
npu_backend = tng.get_npu_backend(compiler_config=config)
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
if output_dtype != torch.bfloat16:
    # 包含npu_trans_quant_param功能，Atlas 推理系列产品还包含使能高带宽的x2数据排布功能
    tng.experimental.inference.use_internal_format_weight(model)
model.bias.data = bias
model = torch.compile(model, backend=npu_backend, dynamic=False)
output = model(x1)
