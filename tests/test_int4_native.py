"""Native int4 pack / unpack kernels (csrc/int4.c) against the pure-torch reference for every
kernel variant and thread count: odd sizes, strides, dtypes, range errors, bounds checks."""

from __future__ import annotations

import ctypes

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from npuquant import _native
from npuquant.ops import int4
from npuquant.ops.int4 import native, reference

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native library missing: {_native.load_error}")


def random_words(*shape: int) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31, shape, dtype=torch.int64).to(torch.int32)


def random_values(*shape: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    low = 0 if dtype == torch.uint8 else -8
    return torch.randint(low, 8, shape, dtype=dtype)


def check_unpack(packed: torch.Tensor) -> torch.Tensor:
    out = native.unpack_int4(packed)
    expected = reference.unpack_int4(packed)
    assert out.is_contiguous() and out.dtype == torch.int8 and torch.equal(out, expected)
    return out


def check_pack(values: torch.Tensor) -> torch.Tensor:
    out, lo, hi = native.pack_int4(values)
    assert out.is_contiguous() and out.dtype == torch.int32 and torch.equal(out, reference.pack_int4(values))
    if values.numel():
        assert (lo, hi) == (int(values.min()), int(values.max()))
    else:
        assert (lo, hi) == (None, None)
    return out


# Word counts around the 8-word vector step: tails of every length.
WORDS = [1, 2, 7, 8, 9, 15, 16, 17, 33]


def test_unpack_sizes(isa):
    for n in WORDS:
        for rows in (1, 3):
            check_unpack(random_words(rows, n))
    edge = torch.tensor([0, -1, 0x76543210, -1985229329, 0x7FFFFFFF, -(2**31), 0x08080808, -2021161081, 0x11111111],
                        dtype=torch.int64).to(torch.int32)  # fmt: skip
    assert check_unpack(edge)[:16].tolist() == [0] * 8 + [-1] * 8


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64], ids=str)
def test_pack_sizes_and_dtypes(isa, dtype):
    for n in WORDS:
        for rows in (1, 3):
            check_pack(random_values(rows, n * 8, dtype=dtype))
    extremes = torch.tensor([-8, 7, 0, -1, 1, -8, 7, -8] * 9, dtype=dtype) if dtype != torch.uint8 else None
    if extremes is not None:
        check_pack(extremes)


def test_threads(isa, threads):
    check_unpack(random_words(300, 129))
    check_unpack(random_words(64 * 1024 + 5))  # one long row split across threads
    check_pack(random_values(301, 8 * 129))
    check_pack(random_values(300, 8 * 129, dtype=torch.int32))


def test_strided(isa):
    words = random_words(20, 40)
    check_unpack(words[2:17:2, 3:30])  # row stride
    check_unpack(words.t())  # element stride
    check_unpack(random_words(3, 4, 5).permute(2, 0, 1)[:, 1:, :])
    check_unpack(random_words(5, 1).expand(5, 9))  # stride 0
    values = random_values(30, 200)
    check_pack(values[1:29:3, 8:192])
    check_pack(values.t()[:, :16])  # element stride 200
    check_pack(random_values(4, 16, 6, dtype=torch.int32).transpose(1, 2))
    check_pack(random_values(2, 3, 2, 8, dtype=torch.int16)[:, ::2])


def test_round_trip_and_empty(isa):
    words = random_words(7, 13)
    assert torch.equal(check_pack(check_unpack(words)), words)
    for shape in [(0, 3), (3, 0), (0,)]:
        assert check_unpack(torch.empty(shape, dtype=torch.int32)).shape == (*shape[:-1], shape[-1] * 8)
    for shape in [(0, 8), (3, 0), (0,)]:
        assert check_pack(torch.empty(shape, dtype=torch.int8)).shape == (*shape[:-1], shape[-1] // 8)


@pytest.mark.parametrize(
    ("values", "found"),
    [
        (torch.tensor([0] * 7 + [8], dtype=torch.int8), "[0, 8]"),
        (torch.tensor([-9] + [0] * 7, dtype=torch.int8), "[-9, 0]"),
        (torch.tensor([-128, 127] * 36, dtype=torch.int8), "[-128, 127]"),
        (torch.tensor([3] * 64 + [200] + [0] * 7, dtype=torch.uint8), "[0, 200]"),
        (torch.tensor([2**40] + [-(2**50)] + [0] * 6, dtype=torch.int64), f"[{-(2**50)}, {2**40}]"),
        (torch.tensor([0] * 63 + [70000], dtype=torch.int32), "[0, 70000]"),
        (torch.tensor([-(2**31)] + [0] * 71, dtype=torch.int32), f"[{-(2**31)}, 0]"),
        (torch.tensor([0] * 15 + [-300], dtype=torch.int16), "[-300, 0]"),
    ],
)
def test_out_of_range_values_rejected_like_reference(isa, values, found):
    message = f"values must hold int4 values in [-8, 7], but found values in {found}"
    with pytest.raises(RuntimeError) as native_error:
        npuquant.pack_int4(values)
    assert message in str(native_error.value)
    with _native.force_reference(), pytest.raises(RuntimeError) as reference_error:
        npuquant.pack_int4(values)
    assert message in str(reference_error.value)
    if values.dtype == torch.int32 and values.numel() % 8 == 0:
        with pytest.raises(RuntimeError, match=r"weight must hold int4 values in \[-8, 7\]"):
            npuquant.npu_convert_weight_to_int4pack(values.reshape(1, -1))


def test_dispatch(monkeypatch):
    monkeypatch.delenv("NPUQUANT_FORCE_REFERENCE", raising=False)
    calls = []
    real_pack, real_unpack = native.pack_int4, native.unpack_int4
    monkeypatch.setattr(native, "pack_int4", lambda v: calls.append("pack") or real_pack(v))
    monkeypatch.setattr(native, "unpack_int4", lambda p: calls.append("unpack") or real_unpack(p))
    values = random_values(2, 16)
    packed = npuquant.pack_int4(values)
    assert torch.equal(npuquant.unpack_int4(packed), values)
    weight = random_values(4, 8, dtype=torch.int32)
    assert torch.equal(npuquant.npu_convert_weight_to_int4pack(weight), reference.pack_int4(weight))
    assert calls == ["pack", "unpack", "pack"]
    with _native.force_reference():
        npuquant.pack_int4(values)
        npuquant.unpack_int4(packed)
    if hasattr(torch, "uint16"):  # a dtype the kernel does not read: reference path
        assert torch.equal(npuquant.pack_int4(values.to(torch.uint16) & 7), reference.pack_int4(values & 7))
    assert calls == ["pack", "unpack", "pack"]
    assert int4._unpack(packed.to("meta")).device.type == "meta"


@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=3),
    st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64]),
    st.booleans(),
    st.sampled_from(_native.supported_isas() or ["scalar"]),
)
def test_property_pack_unpack(shape, dtype, transpose, isa_name):
    words = random_words(*shape)
    values = reference.unpack_int4(words).to(dtype)
    if transpose and len(shape) >= 2:
        words, values = words.transpose(0, -2), values.transpose(0, -2)
    with _native.isa_limit(isa_name):
        check_unpack(words)
        check_pack(values)


# ---------------------------------------------------------------- the C entry points refuse bad layouts

I64x1 = ctypes.c_int64 * 1


def test_kernel_bounds_checks():
    lib = _native.lib
    words = random_words(16)
    out = torch.full((200,), 5, dtype=torch.int8)

    def unpack(extent, rows, row_stride, inner, inner_stride, nd=1):
        return lib.npq_unpack_int4(words.data_ptr(), extent, nd, I64x1(rows), I64x1(row_stride), inner, inner_stride,
                                   out.data_ptr(), 1)  # fmt: skip

    assert unpack(15, 2, 8, 8, 1) == -2 and (out == 5).all()
    assert unpack(16, 2, 8, 9, 1) == -2 and (out == 5).all()
    assert unpack(16, 1, 0, 4, 6) == -2 and (out == 5).all()
    assert unpack(16, -2, 8, 8, 1) == -1 and unpack(16, 2, 8, 8, -1) == -1 and unpack(16, 1, 1, 1, 1, nd=9) == -1
    assert (out == 5).all()
    assert unpack(16, 2, 8, 8, 1) == 0 and torch.equal(out[:128], reference.unpack_int4(words))

    values = random_values(64)
    packed = torch.full((10,), 3, dtype=torch.int32)
    lo, hi = ctypes.c_int64(), ctypes.c_int64()

    def pack(dtype, extent, rows, row_stride, inner, inner_stride):
        return lib.npq_pack_int4(values.data_ptr(), dtype, extent, 1, I64x1(rows), I64x1(row_stride), inner,
                                 inner_stride, packed.data_ptr(), ctypes.byref(lo), ctypes.byref(hi), 1)  # fmt: skip

    assert pack(0, 63, 1, 0, 64, 1) == -2
    assert pack(0, 64, 2, 32, 33, 1) == -1  # inner not a multiple of 8
    assert pack(9, 64, 1, 0, 64, 1) == -1  # unknown dtype
    assert pack(3, 16, 1, 0, 64, 1) == -2  # the same bytes read as int32 hold 16 values, not 64
    assert (packed == 3).all()
    assert pack(0, 64, 2, 32, 32, 1) == 0 and torch.equal(packed[:8], reference.pack_int4(values))


def test_out_argument():
    words, values = random_words(3, 4), random_values(3, 32)
    unpacked, packed = torch.empty(3, 32, dtype=torch.int8), torch.empty(3, 4, dtype=torch.int32)
    assert native.unpack_int4(words, out=unpacked) is unpacked and torch.equal(unpacked, reference.unpack_int4(words))
    result, lo, hi = native.pack_int4(values, out=packed)
    assert result is packed and torch.equal(packed, reference.pack_int4(values))
    for bad in (torch.empty(3, 31, dtype=torch.int8), torch.empty(3, 32), torch.empty(32, 3, dtype=torch.int8).t()):
        with pytest.raises(RuntimeError, match="out must be a contiguous CPU tensor of shape"):
            native.unpack_int4(words, out=bad)
    with pytest.raises(RuntimeError, match=r"shape \(3, 4\) and dtype torch.int32"):
        native.pack_int4(values, out=torch.empty(3, 4, dtype=torch.int64))
