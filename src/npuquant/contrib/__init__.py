"""Front-ends mirroring ``torch_npu.contrib``: ``npuquant.contrib.module`` holds the quantized linear layers."""

from .module import LinearA8W8Quant, LinearQuant

__all__ = ["LinearA8W8Quant", "LinearQuant"]
