"""``torch_npu.contrib.module`` stand-in: the quantized linear modules of :mod:`npuquant.contrib.module`."""

from __future__ import annotations

from npuquant.contrib.module import LinearA8W8Quant, LinearQuant

__all__ = ["LinearA8W8Quant", "LinearQuant"]
