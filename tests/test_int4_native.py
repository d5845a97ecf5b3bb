"""Native int4 pack / unpack kernels (csrc/int4.c, operators ``torch.ops.npuquant.pack_int4`` /
``unpack_int4``) against the pure-torch reference for every kernel variant and thread count: odd
sizes, strides, dtypes, range errors, dispatch, the operators' checks and the C entry points'
bounds checks."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import npuquant
from helpers import random_words, shrink_storage
from npuquant import _native
from npuquant.ops import int4
from npuquant.ops.int4 import native, reference


def random_values(*shape: int, dtype: torch.dtype = torch.int8) -> torch.Tensor:
    low = 0 if dtype == torch.uint8 else -8
    return torch.randint(low, 8, shape, dtype=dtype)


def check_unpack(packed: torch.Tensor) -> torch.Tensor:
    out = native.unpack_int4(packed)
    expected = reference.unpack_int4(packed)
    assert out.is_contiguous() and out.dtype == torch.int8 and torch.equal(out, expected)
    return out


def check_pack(values: torch.Tensor) -> torch.Tensor:
    out = native.pack_int4(values)
    assert out.is_contiguous() and out.dtype == torch.int32 and torch.equal(out, reference.pack_int4(values))
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
    with pytest.raises(RuntimeError) as operator_error:
        native.pack_int4(values)
    assert str(operator_error.value) == message  # the kernel's own check, the reference's words
    with pytest.raises(RuntimeError, match=r"^scales must hold int4 values in \[-8, 7\]"):
        native.pack_int4(values, "scales")  # the name argument goes into the message
    if values.dtype == torch.int32 and values.numel() % 8 == 0:
        with pytest.raises(RuntimeError, match=r"weight must hold int4 values in \[-8, 7\]"):
            npuquant.npu_convert_weight_to_int4pack(values.reshape(1, -1))


class OpLog(TorchDispatchMode):
    """Records the operators called from Python (not the ones a kernel runs inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# Positions of one bad value: first, a vector tail, the last, and inside later threads' chunks
# (the kernel splits 96 * 8192 values = 98304 words in chunks of 32768 words).
WHERE = [(0, torch.int8), (69, torch.int8), (96 * 8192 - 1, torch.int16), (8 * 40000 + 5, torch.int32),
         (8 * 70000 + 3, torch.int64), (8 * 98303 + 7, torch.uint8)]  # fmt: skip


@pytest.mark.parametrize(("where", "dtype"), WHERE, ids=[f"{w}-{d}" for w, d in WHERE])
def test_range_found_anywhere(isa, threads, where, dtype):
    # The kernel's min / max pass: one bad value in the vector body, a tail or another thread's share.
    values = random_values(96, 8192, dtype=dtype)
    info = torch.iinfo(dtype)
    for bad in (8, -9, info.max, info.min):
        if not info.min <= bad <= info.max or -8 <= bad <= 7:  # uint8: no -9, and its min 0 is fine
            continue
        v = values.clone()
        v.view(-1)[where] = bad
        lo, hi = min(bad, int(values.min())), max(bad, int(values.max()))
        with pytest.raises(RuntimeError, match=rf"found values in \[{lo}, {hi}\]$"):
            native.pack_int4(v)


def test_range_looks_at_the_viewed_elements_only(isa):
    base = torch.full((6, 40), 100, dtype=torch.int16)  # out of range everywhere but in the view
    base[1::2, 8:32] = random_values(3, 24, dtype=torch.int16)
    check_pack(base[1::2, 8:32])
    base[3, 31] = -9
    with pytest.raises(RuntimeError, match=r"found values in \[-9, "):
        native.pack_int4(base[1::2, 8:32])
    base[3, 31] = 7
    columns = base.t().contiguous()  # the same values column-major: the view has element stride 6
    view = columns[8:32, 1::2].t()
    assert view.stride() == (2, 6) and torch.equal(view, base[1::2, 8:32])
    check_pack(view)
    columns[31, 3] = 8
    with pytest.raises(RuntimeError, match=r", 8\]$"):
        native.pack_int4(view)


@pytest.fixture
def native_dispatch():
    """CPU calls take the native path, whatever NPUQUANT_FORCE_REFERENCE said at import."""
    with _native.force_reference(False):
        yield


def test_dispatch(native_dispatch):
    values = random_values(2, 16)
    weight = random_values(4, 8, dtype=torch.int32)

    def public_calls():
        packed = npuquant.pack_int4(values)
        return packed, npuquant.unpack_int4(packed), npuquant.npu_convert_weight_to_int4pack(weight)

    with OpLog() as log:  # CPU: the operators (native kernels), nothing else
        packed, unpacked, converted = public_calls()
    assert log.ops == ["npuquant.pack_int4.default", "npuquant.unpack_int4.default", "npuquant.pack_int4.default"]
    assert torch.equal(unpacked, values) and torch.equal(converted, reference.pack_int4(weight))
    with _native.force_reference(), OpLog() as log:  # the reference's torch ops, not the operators
        results = public_calls()
    assert log.ops and not any(op.startswith("npuquant") for op in log.ops)
    assert all(torch.equal(a, b) for a, b in zip(results, (packed, unpacked, converted)))
    if hasattr(torch, "uint16"):  # a dtype the kernel does not read: the reference, range check included
        with OpLog() as log:
            got = npuquant.pack_int4(values.to(torch.uint16) & 7)
        assert log.ops and not any(op.startswith("npuquant") for op in log.ops)
        assert torch.equal(got, reference.pack_int4(values & 7))
        with pytest.raises(RuntimeError, match=r"found values in \[0, 9\]"):
            npuquant.pack_int4(torch.tensor([9] + [0] * 7, dtype=torch.uint16))
    meta = int4._unpack(packed.to("meta"))  # the fake kernel
    assert meta.device.type == "meta" and meta.shape == (2, 16) and meta.dtype == torch.int8
    meta = int4._pack(values.to("meta"), "values")
    assert meta.device.type == "meta" and meta.shape == (2, 2) and meta.dtype == torch.int32


def test_reference_operator_matches_kernel():
    # What other devices run (the CompositeExplicitAutograd reference), range check included.
    values = random_values(3, 24, dtype=torch.int64)
    assert torch.equal(int4._pack_reference(values), native.pack_int4(values))
    with pytest.raises(
        RuntimeError, match=r"^weight must hold int4 values in \[-8, 7\], but found values in \[-8, 8\]$"
    ):
        int4._pack_reference(torch.tensor([8, -8] + [0] * 6), "weight")


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


# ---------------------------------------------------------------- the operators' own checks


def test_operator_argument_errors():
    with pytest.raises(RuntimeError, match="npuquant::unpack_int4: packed must be int32, but got int8"):
        native.unpack_int4(torch.zeros(8, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="npuquant::unpack_int4: packed must have at least 1 dimension"):
        native.unpack_int4(torch.tensor(1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="npuquant::pack_int4: values must be int8 or uint8 or int16 or int32"):
        native.pack_int4(torch.zeros(8))
    with pytest.raises(RuntimeError, match="npuquant::pack_int4: weight must be int8 or uint8 .* but got float32"):
        native.pack_int4(torch.zeros(8), "weight")
    with pytest.raises(RuntimeError, match="npuquant::pack_int4: values must have at least 1 dimension"):
        native.pack_int4(torch.tensor(1, dtype=torch.int8))
    with pytest.raises(
        RuntimeError, match="npuquant::pack_int4: the last dim of w must be a multiple of 8, but it is 12"
    ):
        native.pack_int4(torch.zeros(2, 12, dtype=torch.int8), "w")


@pytest.mark.parametrize("op", ["pack", "unpack"])
def test_operators_refuse_tensors_outside_their_storage(op):
    if op == "pack":
        t, call, name = random_values(16, 64), native.pack_int4, "values"
    else:
        t, call, name = random_words(16, 64), native.unpack_int4, "packed"
    strided = t[::3, 8:40]
    shrink_storage(t, t.element_size() * (15 * 64 + 39))  # one element short of the view's last one
    with pytest.raises(
        RuntimeError, match=f"npuquant::{op}_int4: {name} of shape \\[6, 32\\] reaches outside its storage"
    ):
        call(strided)
    with pytest.raises(RuntimeError, match=f"{name} of shape \\[16, 64\\] reaches outside its storage"):
        call(t)


def test_results_are_fresh_tensors():
    words = random_words(3, 4)
    first, second = native.unpack_int4(words), native.unpack_int4(words)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    first.zero_()
    assert torch.equal(second, reference.unpack_int4(words))
    values = random_values(3, 32, dtype=torch.int32)
    packed = native.pack_int4(values)  # int32 in, int32 out: still a new tensor
    assert packed.untyped_storage().data_ptr() != values.untyped_storage().data_ptr()
    packed.zero_()
    assert torch.equal(native.pack_int4(values), reference.pack_int4(values))


# ---------------------------------------------------------------- the C entry points refuse bad layouts

_I64P = ctypes.POINTER(ctypes.c_int64)
I64x1 = ctypes.c_int64 * 1
NPQ_F32, NPQ_I8, NPQ_I32 = 0, 3, 6  # dtype codes of csrc/npq.h


def c_library() -> ctypes.CDLL:
    """The C kernels' own entry points (exported by the operator library), below the C++ checks."""
    lib = ctypes.CDLL(str(Path(_native.__file__).with_name("_C.abi3.so")))
    lib.npq_unpack_int4.restype = ctypes.c_int
    lib.npq_unpack_int4.argtypes = [
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, _I64P, _I64P, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    lib.npq_pack_int4.restype = ctypes.c_int
    lib.npq_pack_int4.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, _I64P, _I64P, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_void_p, _I64P, _I64P, ctypes.c_int,
    ]  # fmt: skip
    return lib


def test_kernel_bounds_checks():
    lib = c_library()
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

    assert pack(NPQ_I8, 63, 1, 0, 64, 1) == -2
    assert pack(NPQ_I8, 64, 2, 32, 33, 1) == -1  # inner not a multiple of 8
    assert pack(9, 64, 1, 0, 64, 1) == -1 and pack(NPQ_F32, 64, 1, 0, 64, 1) == -1  # not an integer dtype code
    assert pack(NPQ_I32, 16, 1, 0, 64, 1) == -2  # the same bytes read as int32 hold 16 values, not 64
    assert (packed == 3).all()
    assert pack(NPQ_I8, 64, 2, 32, 32, 1) == 0 and torch.equal(packed[:8], reference.pack_int4(values))
    assert (lo.value, hi.value) == (int(values.min()), int(values.max()))  # the range the operator checks
