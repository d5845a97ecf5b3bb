"""Fuzz: every native operator on random views (odd and zero strides, storage offsets, overlapping
rows, empty and expanded dims, shrunk storage) against the pure-torch reference: equal bits, or
a clean exception. Run under AddressSanitizer + UBSan by scripts/sanitize.sh."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_same_bits
from npuquant import _native
from npuquant.nn import linear
from npuquant.ops import anti_quant, dequantize, dynamic_quant, int4
from npuquant.ops import quant_matmul as qm

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@st.composite
def views(draw, dtype: torch.dtype, min_dims: int = 1, max_dims: int = 4, last: int | None = None, lo=-128, hi=127):
    """A strided view into a random base tensor: any sizes (0 included), strides >= 0 (0 and
    overlapping included), a storage offset; every element inside the base storage."""
    dims = draw(st.integers(min_dims, max_dims))
    shape = [draw(st.integers(0, 5)) for _ in range(dims)]
    if last is not None and dims:
        shape[-1] = last * draw(st.integers(0, 3))
    strides = [draw(st.sampled_from([0, 1, 2, 3, 7, 16, 33])) for _ in range(dims)]
    offset = draw(st.integers(0, 9))
    need = offset + sum((s - 1) * t for s, t in zip(shape, strides) if s > 0) + 1
    if dtype.is_floating_point:
        base = torch.randn(need + 3, dtype=torch.float32) * draw(st.sampled_from([1e-3, 1.0, 1e4]))
        if draw(st.booleans()):
            base[draw(st.integers(0, need + 2))] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        base = base.to(dtype)
    else:
        base = torch.randint(lo, hi + 1, (need + 3,), dtype=torch.int64).to(dtype)
    return base.as_strided(shape, strides, offset)


def both(call, *args):
    """The operator on the native path and on the reference: the same bits or the same exception type."""
    try:
        got = call(*args)
    except RuntimeError as exc:
        with _native.force_reference(), pytest.raises((RuntimeError, IndexError, ValueError)):
            call(*args)
        return exc
    with _native.force_reference():
        want = call(*args)
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert_same_bits(g, w.contiguous())
    return None


@given(views(torch.int8), st.sampled_from([torch.float16, torch.bfloat16, torch.float32]), st.booleans())
def test_anti_quant_int8(x, dst, with_offset):
    n = x.shape[-1] if x.dim() else 1
    scale = torch.rand(n) if n else torch.rand(0)
    offset = torch.randn(scale.shape) if with_offset else None
    if scale.numel() == 0 and x.numel():
        scale, offset = torch.rand(1), None
    both(anti_quant.anti_quant, x, scale, offset, dst)


@given(views(torch.int32, lo=-(2**31), hi=2**31 - 1), st.sampled_from([torch.float16, torch.bfloat16]))
def test_anti_quant_int4(x, dst):
    both(anti_quant.anti_quant, x, torch.rand(1), torch.randn(1), dst)


@given(views(torch.int32, lo=-(2**31), hi=2**31 - 1))
def test_unpack_int4(packed):
    both(int4._unpack, packed)


@given(views(torch.int8, last=8, lo=-8, hi=7))
def test_pack_int4(values):
    both(int4._pack, values, "values")


@given(views(torch.int16, last=8, lo=-20, hi=20))
def test_pack_int4_out_of_range_is_a_clean_error(values):
    both(int4._pack, values, "values")


@given(
    views(torch.bfloat16, min_dims=1),
    st.booleans(),
    st.booleans(),
    st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
)
def test_dynamic_quant(x, asymmetric, smooth, dtype):
    x = x.to(dtype) if x.dtype != dtype else x
    cols = x.shape[-1]
    s = (torch.rand(cols) + 0.5).to(dtype) if smooth else None
    both(dynamic_quant._dynamic_quant, x, s, None, asymmetric, False)


@given(views(torch.int8, min_dims=2), st.sampled_from([-1, -2]), st.booleans())
def test_dequantize(x, axis, zp):
    shape = x.shape[:-1] if axis == -1 else x.shape[:-2] + x.shape[-1:]
    scale = torch.rand(shape)
    zero = torch.randn(shape) if zp else None
    both(dequantize._dequantize, x, scale, zero, axis)


@given(
    views(torch.int8, min_dims=2, max_dims=2),
    st.integers(1, 40),
    st.sampled_from(["t", "kn", "strided"]),
    st.sampled_from([torch.int32, torch.int8, torch.float16, torch.bfloat16]),
)
def test_quant_matmul(x1, n, layout, out_dtype):
    m, k = x1.shape
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    x2 = {
        "t": w.t(),
        "kn": w.t().contiguous(),
        "strided": torch.randint(-128, 128, (k, 2 * n), dtype=torch.int8)[:, ::2],
    }
    x2 = x2[layout]
    scale = torch.rand(n)
    pertoken = torch.rand(m) if out_dtype in (torch.float16, torch.bfloat16) else None
    both(qm._compute, x1.unsqueeze(0), x2.unsqueeze(0), scale, None, pertoken, None, out_dtype)


@given(views(torch.float32, min_dims=1, max_dims=3), st.integers(1, 24), st.booleans())
def test_linear_w8a8(x, n, bias):
    k = x.shape[-1]
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    b = torch.randn(n) if bias else None
    both(linear._linear_w8a8, x, w, torch.rand(n) / 100, None, b)


@given(views(torch.int8, min_dims=1), st.sampled_from(["anti_quant", "unpack", "dequantize"]))
def test_shrunk_storage_is_refused(x, op):
    if x.numel() == 0:
        return
    x = x.to(torch.int32) if op == "unpack" else x
    last = x.storage_offset() + sum((s - 1) * t for s, t in zip(x.shape, x.stride()))
    x.untyped_storage().resize_((last + 1) * x.element_size() - 1)  # one byte short of the last element
    with pytest.raises(RuntimeError, match="reaches outside its storage|must have|must be"):
        if op == "anti_quant":
            torch.ops.npuquant.dequant_affine(x, torch.rand(1), None, torch.float16)
        elif op == "unpack":
            torch.ops.npuquant.unpack_int4(x)
        else:
            torch.ops.npuquant.dequant_affine(x, torch.rand(x.shape[:-1]).reshape(-1, 1), None, torch.float32)
