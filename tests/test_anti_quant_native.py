"""Native anti-quant kernels (csrc/anti_quant.c) against the pure-torch reference, bit for bit,
for every kernel variant (scalar / AVX2 / AVX-512) and thread count; edge values, layouts,
bounds checks, dispatch, and the group-wise int4 dequant helper."""

from __future__ import annotations

import ctypes

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from npuquant import _native
from npuquant.ops import anti_quant as aq
from npuquant.ops.anti_quant import native, reference

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native library missing: {_native.load_error}")

OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
BITS_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal shape, dtype and bit patterns (NaN payloads included)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert actual.is_contiguous()
    a, e = actual.view(BITS_VIEW[actual.dtype]), expected.contiguous().view(BITS_VIEW[expected.dtype])
    mismatch = (a != e).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.shape[0]} mismatches, first at {mismatch[0].tolist()}"


def both(x, scale, offset, dst, sqrt_mode=False):
    out = native.anti_quant(x, scale, offset, dst, sqrt_mode)
    assert_same_bits(out, reference.anti_quant(x, scale, offset, dst, sqrt_mode))
    return out


def f32_from_bits(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


def random_words(*shape: int) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31, shape, dtype=torch.int64).to(torch.int32)


def random_int8(*shape: int) -> torch.Tensor:
    return torch.randint(-128, 128, shape, dtype=torch.int8)


# ---------------------------------------------------------------- every variant vs reference

SHAPES = [(1, 1), (1, 7), (3, 8), (2, 15), (5, 16), (4, 33), (3, 64), (2, 100), (9, 1), (2, 3, 17)]


@pytest.mark.parametrize("packed", [False, True], ids=["int8", "int4"])
@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_random_all_modes(isa, packed, dst):
    for shape in SHAPES:
        x = random_words(*shape) if packed else random_int8(*shape)
        last = shape[-1] * (8 if packed else 1)
        for n in {1, last}:
            scale = torch.randn(n) * 0.05
            for offset in (None, torch.randn(n) * 4):
                for sqrt_mode in (False, True):
                    both(x, scale, offset, dst, sqrt_mode)


@pytest.mark.parametrize("packed", [False, True], ids=["int8", "int4"])
def test_threaded_splits(isa, threads, packed):
    # Large enough that every thread gets work, with ranges that start and end mid-row.
    x = random_words(301, 37) if packed else random_int8(233, 301)
    last = x.shape[-1] * (8 if packed else 1)
    for dst in (torch.float16, torch.bfloat16):
        both(x, torch.rand(last), torch.randn(last), dst)
        both(x, torch.rand(1), None, dst)


def test_thread_count_does_not_change_bits(isa):
    x = random_int8(257, 513)
    scale, offset = torch.randn(513), torch.randn(513)
    previous = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(native.anti_quant(x, scale, offset, torch.bfloat16))
    finally:
        torch.set_num_threads(previous)
    for r in results[1:]:
        assert_same_bits(r, results[0])


# ---------------------------------------------------------------- edge values

EDGE_SCALE_BITS = [
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFA00000, 0x7FC12345, 0xFF812345,  # NaNs: signs, payloads, signalling
    0x7F800000, 0xFF800000,  # +-inf
    0x00000001, 0x80000001, 0x007FFFFF, 0x00400000,  # float32 denormals
    0x00000000, 0x80000000,  # +-0
    0x7F7FFFFF, 0x477FE000, 0x477FF000, 0x33800000, 0x33000000, 0x387FC000,  # fp16 max / overflow / denormal edges
    0x3F808000, 0x3F818000, 0x3F80C000,  # bf16 ties (even / odd) and above
    0x3A800000, 0x2F800000, 0x4B000000,  # tiny and huge ordinary scales
]  # fmt: skip


@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_edge_scales_and_values(isa, dst):
    x = torch.tensor([-128, -127, -1, 0, 1, 2, 3, 127, -8, 7, 100, -100, 5], dtype=torch.int8)
    scales = f32_from_bits(EDGE_SCALE_BITS)
    for s in scales:
        both(x, s.reshape(1), None, dst)
        both(x, s.reshape(1), torch.tensor([0.5]), dst)
    # per channel: every scale against every value, plus offsets that cancel x exactly (0 * inf = NaN)
    xs = x.repeat_interleave(len(scales)).reshape(len(x), len(scales))
    both(xs, scales, None, dst)
    both(xs, scales, scales.flip(0), dst)
    both(x, torch.full((13,), float("inf")), -x.float(), dst)
    both(x, torch.full((13,), 1e-40), x.float(), dst, sqrt_mode=True)


@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_conversion_of_every_kind_of_float(isa, dst):
    # x = 1, no offset: the output is cast(scale), so random float32 bit patterns (NaN payloads,
    # denormals, overflow, ties) exercise the kernels' conversions against torch's.
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(-(2**31), 2**31, (40_000,), dtype=torch.int64, generator=gen).to(torch.int32)
    scale = bits.view(torch.float32)
    both(torch.ones(40_000, dtype=torch.int8), scale, None, dst)
    # values near the fp16 / bf16 rounding boundaries, where RNE decides
    near = (torch.arange(-3000, 3000, dtype=torch.float32) * 0.25 + 2048).repeat(3) * torch.tensor(
        [1.0, 2.0**-24, 2.0**100]
    ).repeat_interleave(6000)
    both(torch.ones(18_000, dtype=torch.int8), near, None, dst)


def test_nan_payloads_from_offset_and_scale(isa):
    # Both NaN: x86 keeps the first operand's payload ((x + offset) * scale -> offset's).
    x = torch.tensor([1, 2, 3, 4], dtype=torch.int8)
    offset = f32_from_bits([0x7FC11111, 0xFFC22222, 0x7FC00000, 0x3F800000])
    scale = f32_from_bits([0xFFC33333, 0x7FC44444, 0xFFC00000, 0x7FC55555])
    for dst in OUT_DTYPES:
        both(x, scale, offset, dst)


def test_packed_edge_words(isa):
    words = torch.tensor([0, -1, 0x76543210, -1985229329, -2021161081, 0x7FFFFFFF, -(2**31), 0x08080808],
                         dtype=torch.int64).to(torch.int32)  # fmt: skip
    for dst in OUT_DTYPES:
        out = both(words.reshape(1, -1), torch.tensor([1.0]), None, dst)
        assert out.float().min() == -8 and out.float().max() == 7
        both(words.reshape(2, 4), torch.randn(32), torch.randn(32), dst)


def test_bf16_nan_pattern_is_torch_vectorized_cast():
    probe = torch.full((5,), float("nan")).to(torch.bfloat16).view(torch.int16)[0].item() & 0xFFFF
    assert native.BF16_NAN_BITS == probe
    out = native.anti_quant(torch.ones(3, dtype=torch.int8), torch.tensor([float("nan")]), None, torch.bfloat16)
    assert (out.view(torch.int16).to(torch.int32) & 0xFFFF).tolist() == [probe] * 3


def test_bf16_nan_pattern_is_one_runtime_setting(isa):
    # Every variant (SIMD body and tail) writes whatever pattern the runtime holds.
    x, scale = torch.ones(40, dtype=torch.int8), torch.full((40,), float("nan"))
    try:
        for bits in (0x7FC0, 0xFFFF):
            _native.lib.npq_set_bf16_nan(bits)
            out = native.anti_quant(x, scale, None, torch.bfloat16)
            assert (out.view(torch.int16).to(torch.int32) & 0xFFFF).tolist() == [bits] * 40
    finally:
        _native.lib.npq_set_bf16_nan(_native.BF16_NAN_BITS)


# ---------------------------------------------------------------- layouts


def test_row_strided_views(isa):
    base = random_int8(40, 300)
    x = base[3:37:2, 5:250]  # rows with a row stride, a column offset
    assert not x.is_contiguous() and x.stride(-1) == 1
    for n in (1, 245):
        both(x, torch.rand(n), torch.randn(n), torch.float16)
    words = random_words(30, 50)[1:29, 3:40]
    both(words, torch.rand(37 * 8), None, torch.bfloat16)
    both(words, torch.rand(1), torch.rand(1), torch.float16)


def test_general_strides(isa):
    x = random_int8(6, 5, 40).permute(2, 0, 1)  # inner stride 200
    both(x, torch.rand(5), torch.randn(5), torch.float16)
    both(x, torch.rand(1), None, torch.bfloat16)
    big = random_int8(300, 600).t()  # long rows, gathered in chunks
    both(big, torch.rand(300), None, torch.float16)
    words = random_words(9, 7, 3).transpose(0, 2)  # (3, 7, 9) words, inner stride 21
    both(words, torch.rand(72), torch.randn(72), torch.bfloat16)
    both(torch.tensor(-3, dtype=torch.int8), torch.tensor([2.0]), None, torch.float16)  # 0-dim
    both(random_int8(4, 1).expand(4, 9), torch.rand(9), None, torch.float16)  # stride 0
    both(random_int8(2, 3, 4, 5)[:, 1:, ::2, 1:4], torch.rand(3), None, torch.float32)
    both(random_int8(1, 1, 1, 1, 1, 1, 2, 3)[..., ::2], torch.rand(2), None, torch.float16)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0,), (2, 0, 5)])
def test_empty(isa, shape):
    for packed in (False, True):
        x = torch.empty(shape, dtype=torch.int32 if packed else torch.int8)
        both(x, torch.rand(1), None, torch.float16)


def test_out_argument():
    x, scale = random_int8(4, 6), torch.rand(6)
    buf = torch.empty(4, 6, dtype=torch.bfloat16)
    assert native.anti_quant(x, scale, None, torch.bfloat16, out=buf) is buf
    assert_same_bits(buf, reference.anti_quant(x, scale, None, torch.bfloat16))
    for bad in (
        torch.empty(4, 5, dtype=torch.bfloat16),
        torch.empty(4, 6),
        torch.empty(6, 4, dtype=torch.bfloat16).t(),
    ):
        with pytest.raises(RuntimeError, match="out must be a contiguous CPU tensor of shape"):
            native.anti_quant(x, scale, None, torch.bfloat16, out=bad)


# ---------------------------------------------------------------- the C entry point refuses bad layouts

I64x1 = ctypes.c_int64 * 1


def call_kernel(buf: torch.Tensor, extent: int, rows: int, row_stride: int, inner: int, inner_stride: int,
                kind: int = 0, n_scale: int = 1, out_dtype: int = 1, nd: int = 1) -> int:  # fmt: skip
    out = torch.full((max(rows * inner * (8 if kind else 1), 1) + 64,), 7, dtype=torch.int16)
    scale = torch.ones(max(n_scale, 1))
    rc = _native.lib.npq_anti_quant(
        buf.data_ptr(), kind, extent, nd, I64x1(rows), I64x1(row_stride), inner, inner_stride, scale.data_ptr(),
        n_scale, None, out.data_ptr(), out_dtype, 1,
    )  # fmt: skip
    if rc != 0:
        assert (out == 7).all(), "a refused call must not write"
    return rc


def test_kernel_bounds_checks():
    buf = random_int8(100)
    assert call_kernel(buf, 100, rows=10, row_stride=10, inner=10, inner_stride=1) == 0
    assert call_kernel(buf, 99, rows=10, row_stride=10, inner=10, inner_stride=1) == -2  # last byte outside
    assert call_kernel(buf, 100, rows=10, row_stride=10, inner=11, inner_stride=1) == -2
    assert call_kernel(buf, 100, rows=2, row_stride=2**62, inner=1, inner_stride=1) == -2  # offset overflow
    assert call_kernel(buf, 100, rows=1, row_stride=0, inner=4, inner_stride=34) == -2
    assert call_kernel(buf, 100, rows=1, row_stride=0, inner=4, inner_stride=33) == 0
    assert call_kernel(buf, 100, rows=-1, row_stride=1, inner=4, inner_stride=1) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=-1, inner=4, inner_stride=1) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, inner=4, inner_stride=1, n_scale=3) == -1  # not 1 or last
    assert call_kernel(buf, 100, rows=1, row_stride=1, inner=4, inner_stride=1, out_dtype=5) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, inner=4, inner_stride=1, kind=7) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, inner=4, inner_stride=1, nd=9) == -1
    words = random_words(25)
    assert call_kernel(words, 25, rows=5, row_stride=5, inner=5, inner_stride=1, kind=1) == 0
    assert call_kernel(words, 24, rows=5, row_stride=5, inner=5, inner_stride=1, kind=1) == -2


def test_check_status_raises():
    from npuquant.ops.int4.native import check_status

    with pytest.raises(RuntimeError, match="reach outside its storage"):
        check_status(-2, "anti_quant")
    with pytest.raises(RuntimeError, match="invalid sizes or strides"):
        check_status(-1, "anti_quant")


# ---------------------------------------------------------------- dispatch


def test_dispatch_cpu_native_else_reference(monkeypatch):
    monkeypatch.delenv("NPUQUANT_FORCE_REFERENCE", raising=False)
    calls = []
    real = native.anti_quant
    monkeypatch.setattr(native, "anti_quant", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, s = random_int8(3, 4), torch.rand(4)
    npuquant.npu_anti_quant(x, s)
    assert calls == [1]
    with _native.force_reference():
        npuquant.npu_anti_quant(x, s)
    monkeypatch.setenv("NPUQUANT_FORCE_REFERENCE", "1")
    npuquant.npu_anti_quant(x, s)
    monkeypatch.delenv("NPUQUANT_FORCE_REFERENCE")
    meta = aq.anti_quant(x.to("meta"), s.to("meta"), None, torch.float16)  # another device: reference
    assert meta.device.type == "meta" and meta.shape == (3, 4)
    assert calls == [1]
    assert_same_bits(aq.anti_quant(x, s, None, torch.float32), reference.anti_quant(x, s, None, torch.float32))
    assert calls == [1, 1]  # float32 output (internal use) is native too


def test_public_op_bf16_scale_and_sqrt_mode(isa):
    x = random_words(6, 5)
    scale, offset = torch.rand(40).bfloat16(), torch.randn(40).bfloat16()
    out = npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.bfloat16)
    with _native.force_reference():
        assert_same_bits(out, npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.bfloat16))
    both(x, scale, offset, torch.float16, sqrt_mode=True)


# ---------------------------------------------------------------- property: any layout, any mode


@st.composite
def cases(draw):
    packed = draw(st.booleans())
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 9 if packed else 40), min_size=ndim, max_size=ndim))
    pad = draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim))
    big = [s + p for s, p in zip(shape, pad)]
    base = random_words(*big) if packed else random_int8(*big)
    x = base[tuple(slice(p, p + s) for s, p in zip(shape, pad))]
    if ndim >= 2 and draw(st.booleans()):
        x = x.transpose(0, -1)
    last = x.shape[-1] * (8 if packed else 1)
    n = draw(st.sampled_from([1, last]))
    sdtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    scale = (torch.randn(n) * draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e4, 1e36]))).to(sdtype)
    offset = (torch.randn(n) * 100).to(sdtype) if draw(st.booleans()) else None
    return x, scale, offset, draw(st.sampled_from(OUT_DTYPES)), draw(st.booleans())


@given(cases(), st.sampled_from(_native.supported_isas() or ["scalar"]))
def test_property_native_equals_reference(case, isa_name):
    x, scale, offset, dst, sqrt_mode = case
    with _native.isa_limit(isa_name):
        both(x, scale, offset, dst, sqrt_mode)


# ---------------------------------------------------------------- group-wise int4 dequant (w4a16 helper)


@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_grouped_matches_reference(isa, dst):
    for rows, words, groups in [(1, 1, 1), (3, 4, 4), (5, 16, 2), (7, 48, 3), (2, 64, 8), (4, 9, 1), (33, 32, 4)]:
        packed = random_words(rows, words)
        for sdtype in (torch.float32, torch.bfloat16):
            scale = (torch.rand(rows, groups) * 0.1).to(sdtype)
            for offset in (None, torch.randn(rows, groups).to(sdtype)):
                out = native.dequant_int4_grouped(packed, scale, offset, dst)
                assert_same_bits(out, reference.dequant_int4_grouped(packed, scale, offset, dst))
                assert_same_bits(aq.dequant_int4_grouped(packed, scale, offset, dst), out)


def test_grouped_reference_formula_and_layouts(isa):
    packed = torch.tensor([[0x76543210, -1985229329]], dtype=torch.int32)  # 0..7, -1..-8
    scale, offset = torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, -1.0]])
    expected = [(v + 1) * 0.5 for v in range(8)] + [(-v - 1) * 2.0 for v in range(1, 9)]
    assert reference.dequant_int4_grouped(packed, scale, offset).tolist() == [expected]
    assert native.dequant_int4_grouped(packed, scale, offset).tolist() == [expected]
    wide = random_words(20, 40)
    for view in (wide[2:18:3, 4:36], wide.t()[:16, 2:10]):
        scale = torch.rand(view.shape[0], 4)
        assert_same_bits(native.dequant_int4_grouped(view, scale, None, torch.bfloat16),
                         reference.dequant_int4_grouped(view, scale, None, torch.bfloat16))  # fmt: skip
    buf = torch.empty(16, 64, dtype=torch.float16)
    assert native.dequant_int4_grouped(wide[:16, :8], torch.rand(16, 2), None, torch.float16, out=buf) is buf
    empty = native.dequant_int4_grouped(torch.empty(0, 4, dtype=torch.int32), torch.empty(0, 2), None)
    assert empty.shape == (0, 32)


def test_grouped_threads(isa, threads):
    packed = random_words(200, 64)
    scale, offset = torch.rand(200, 16), torch.randn(200, 16)
    assert_same_bits(native.dequant_int4_grouped(packed, scale, offset, torch.float16),
                     reference.dequant_int4_grouped(packed, scale, offset, torch.float16))  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.ones(2, 4, dtype=torch.int8), torch.ones(2, 1)), "packed must be a 2-D int32 tensor"),
        ((torch.ones(4, dtype=torch.int32), torch.ones(1, 1)), "packed must be a 2-D int32 tensor"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 1).half()), "scale must be a 2-D float32 or bfloat16"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2)), "scale must be a 2-D float32 or bfloat16"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 3)), "into groups"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(3, 2)), "into groups"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 0)), "into groups"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 2), torch.ones(2, 1)), "offset must have the same shape"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 2), torch.ones(2, 2).bfloat16()), "same shape and dtype"),
        ((torch.ones(2, 4, dtype=torch.int32), torch.ones(2, 2), None, torch.int8), "out_dtype must be a float type"),
    ],
)
def test_grouped_errors(args, message):
    for fn in (native.dequant_int4_grouped, reference.dequant_int4_grouped):
        with pytest.raises(RuntimeError, match=message):
            fn(*args)
