"""npuquant: Ascend's quantization operators (torch_npu, CANN aclnn, PyPTO) for ordinary PyTorch.

Same APIs and numerics as on the NPU; native kernels on CPU, a pure-torch reference on any
other device. See SPEC Part I for the public names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ops.anti_quant import npu_anti_quant
from .ops.dequantize import dequantize_per_row_col
from .ops.dynamic_quant import npu_dynamic_quant, npu_dynamic_quant_asymmetric
from .ops.grouped_matmul import npu_grouped_matmul
from .ops.int4 import npu_convert_weight_to_int4pack, pack_int4, unpack_int4
from .ops.quant_matmul import npu_quant_matmul, npu_trans_quant_param
from .ops.quant_matmul.asymmetric import quant_matmul_asymmetric
from .ops.quantize import npu_quantize
from .ops.weight_quant_matmul import npu_weight_quant_batchmatmul
from .quantize import load_quantized, quantize_model, save_quantized

__all__ = [
    "quantize_model",
    "save_quantized",
    "load_quantized",
    "npu_quant_matmul",
    "npu_weight_quant_batchmatmul",
    "npu_grouped_matmul",
    "quant_matmul_asymmetric",
    "npu_trans_quant_param",
    "npu_quantize",
    "__version__",
    "npu_dynamic_quant",
    "npu_dynamic_quant_asymmetric",
    "npu_anti_quant",
    "dequantize_per_row_col",
    "npu_convert_weight_to_int4pack",
    "pack_int4",
    "unpack_int4",
]
