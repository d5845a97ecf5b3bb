"""Quantized layers used by :func:`npuquant.quantize_model` (drop-in replacements for ``nn.Linear``)."""

from __future__ import annotations

from .linear import SCHEMES, QuantizedLinear, W4A8Linear, W4A16Linear, W8A8Linear, W8A8SymLinear

__all__ = ["SCHEMES", "QuantizedLinear", "W4A8Linear", "W4A16Linear", "W8A8Linear", "W8A8SymLinear"]
