"""Pure-torch int4 packing (SPEC §2): element j of each group of 8 lives in bits 4j..4j+3
of an int32 word, as a signed two's-complement nibble. Works on any device."""

from __future__ import annotations

import torch

_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    shifts = _SHIFTS_CACHE.get(device)
    if shifts is None:
        shifts = _SHIFTS_CACHE[device] = torch.arange(0, 32, 4, dtype=torch.int32, device=device)
    return shifts


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 (..., n) -> int8 (..., 8n), values in [-8, 7]."""
    nibbles = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 0xF
    signed = (nibbles ^ 8) - 8  # sign-extend the 4-bit value
    return signed.to(torch.int8).reshape(*packed.shape[:-1], packed.shape[-1] * 8)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Integer (..., 8n) with values in [-8, 7] -> int32 (..., n). Bits above the nibble are dropped."""
    groups = values.reshape(*values.shape[:-1], values.shape[-1] // 8, 8).to(torch.int64) & 0xF
    word = (groups << _shifts(values.device).to(torch.int64)).sum(-1)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)
