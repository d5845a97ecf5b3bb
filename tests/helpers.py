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


# Up to this many rows W4A16Linear runs the fused int4 GEMV (csrc/gemv_int4.c), whose float32 sums
# follow their own fixed order: it agrees with the tiled reference to rounding, not bit for bit.
W4A16_GEMV_MAX_ROWS = 8


def assert_matches_reference(actual: torch.Tensor, expected: torch.Tensor, w4a16_gemv: bool = False) -> None:
    """Native against reference: bit for bit, or (the w4a16 GEMV) within float32 / one-ulp rounding."""
    if not w4a16_gemv:
        assert_same_bits(actual, expected)
        return
    tol = {"rtol": 1e-5, "atol": 1e-5} if actual.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(actual, expected, **tol)


def is_w4a16_gemv(layer_or_op: object, x: torch.Tensor) -> bool:
    """Whether a W4A16Linear (or the linear_w4a16 operator) runs x through the fused GEMV."""
    name = getattr(layer_or_op, "scheme", None) or str(layer_or_op)
    rows = x.numel() // max(x.shape[-1], 1) if x.dim() else 1
    return "w4a16" in name and rows <= W4A16_GEMV_MAX_ROWS
