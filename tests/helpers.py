"""Test helpers shared by every test module: bit-exact comparison and random raw data."""

from __future__ import annotations

import torch

# Integer views of float dtypes, so NaN payloads and signed zeros compare exactly.
BITS_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor (integer tensors as they are), so NaNs compare equal to themselves."""
    view = BITS_VIEW.get(t.dtype)
    return t if view is None else t.contiguous().view(view)


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, nan_any: torch.Tensor | None = None) -> None:
    """Equal shape, dtype and bit patterns (NaN payloads included); ``actual`` contiguous.

    Where ``nan_any`` is set both results must be NaN but the payload may differ (torch itself
    returns either operand's payload when both are NaN, depending on which of its loops ran).
    """
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (
        actual.shape,
        expected.shape,
        actual.dtype,
        expected.dtype,
    )
    assert actual.is_contiguous()
    differ = bits(actual) != bits(expected)
    if nan_any is not None:
        assert (actual[nan_any].isnan() & expected[nan_any].isnan()).all()
        differ &= ~nan_any
    mismatch = differ.nonzero()
    assert mismatch.numel() == 0, f"{mismatch.shape[0]} mismatches, first at {mismatch[0].tolist()}"


def random_words(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int32 words with every bit pattern equally likely (8 random int4 each)."""
    return torch.randint(-(2**31), 2**31, shape, dtype=torch.int64, generator=generator).to(torch.int32)


def random_int8(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """int8 values over the whole range, -128 included."""
    return torch.randint(-128, 128, shape, dtype=torch.int8, generator=generator)


def shrink_storage(t: torch.Tensor, nbytes: int = 16) -> torch.Tensor:
    """``t`` with its storage cut to ``nbytes`` behind its back: its sizes now reach outside it."""
    t.untyped_storage().resize_(nbytes)
    return t
