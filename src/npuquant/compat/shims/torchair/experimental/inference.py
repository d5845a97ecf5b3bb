"""``torchair.experimental.inference`` stand-in."""

from __future__ import annotations

import torch


def use_internal_format_weight(model: torch.nn.Module) -> None:
    """No-op: on the NPU this re-lays weights out (and pre-converts quant scales); on the CPU weights stay
    ND and the quantized modules convert scales in forward, with identical results."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"use_internal_format_weight: expected a torch.nn.Module, got {type(model).__name__}")
