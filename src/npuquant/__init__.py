"""npuquant: Ascend's quantization operators (torch_npu, CANN aclnn, PyPTO) for ordinary PyTorch.

Same APIs and numerics as on the NPU; native kernels on CPU, a pure-torch reference on any
other device. See SPEC Part I for the public names.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ops.anti_quant import npu_anti_quant
from .ops.int4 import npu_convert_weight_to_int4pack, pack_int4, unpack_int4

__all__ = [
    "__version__",
    "npu_anti_quant",
    "npu_convert_weight_to_int4pack",
    "pack_int4",
    "unpack_int4",
]
