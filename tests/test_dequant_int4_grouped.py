"""Grouped int4 dequantization (the w4a16 weight path): the native row-wise kernels against the
reference, bit for bit, for every kernel variant and thread count; group sizes 8..128 (powers of
two and not), partial blocks, long rows split over work units, strided rows, streaming stores for
huge outputs, NaN/inf parameters; the tile plans and ``out=`` buffers; the W4A16 layer's tiles."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from npuquant import _native
from npuquant.nn import W4A16Linear, _kernels
from npuquant.ops import anti_quant as aq
from npuquant.ops.anti_quant import native, reference

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native library missing: {_native.load_error}")

OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BITS_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}
GROUP_SIZES = [8, 16, 24, 32, 64, 128]  # 24: three words per group, the non-power-of-two loop


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype and actual.is_contiguous()
    a, e = actual.view(BITS_VIEW[actual.dtype]), expected.contiguous().view(BITS_VIEW[expected.dtype])
    mismatch = (a != e).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.shape[0]} mismatches, first at {mismatch[0].tolist()}"


def random_words(*shape: int) -> torch.Tensor:
    return torch.randint(-(2**31), 2**31, shape, dtype=torch.int64).to(torch.int32)


def params(rows: int, groups: int, with_offset: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    scale = torch.rand(rows, groups) * 0.1 + 1e-3
    return scale, (torch.randn(rows, groups) * 4 if with_offset else None)


def check(packed, scale, offset, dst, out=None) -> torch.Tensor:
    result = native.dequant_int4_grouped(packed, scale, offset, dst, out=out)
    assert_same_bits(result, reference.dequant_int4_grouped(packed, scale, offset, dst))
    return result


# ---------------------------------------------------------------- every variant vs reference


@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_group_sizes_and_partial_blocks(isa, dst):
    # Odd row counts; rows of 1..17 words cover the 8-word blocks, word pairs and single-word tails.
    for group in GROUP_SIZES:
        gw = group // 8
        for words in sorted({gw, 2 * gw, 3 * gw, gw * (17 // gw or 1)}):
            rows = 7 if words < 8 else 3
            packed = random_words(rows, words)
            for with_offset in (True, False):
                check(packed, *params(rows, words // gw, with_offset), dst)


def test_bfloat16_parameters(isa):
    packed = random_words(5, 12)
    scale, offset = params(5, 12 // 4)
    check(packed, scale.bfloat16(), offset.bfloat16(), torch.float16)


@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_nan_inf_and_extreme_parameters(isa, dst):
    specials = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-45, 3e38, -7.0, 1e5, 2.0**-140]
    packed = random_words(len(specials), 32)  # 256 columns
    for group in (8, 32, 64, 128):
        groups = 256 // group
        scale = torch.tensor(specials).repeat_interleave(groups).reshape(-1, groups)
        offset = torch.tensor(specials[::-1]).repeat_interleave(groups).reshape(-1, groups)
        check(packed, scale, offset, dst)
        check(packed, scale.roll(1, 1), offset.roll(1, 0), dst)  # specials in the middle of rows
        check(packed, scale, None, dst)


def test_float32_matches_an_independent_formula(isa):
    packed = random_words(9, 40)  # 320 columns, group 32 -> 10 groups
    scale, offset = params(9, 10)
    scale[0, 3], offset[1, 2], scale[2, 0] = float("nan"), float("inf"), float("-inf")
    words = packed.numpy().astype(np.uint32)
    nibbles = (words[:, :, None] >> (4 * np.arange(8, dtype=np.uint32))) & 0xF
    values = (nibbles.astype(np.int32) ^ 8) - 8
    values = values.reshape(9, 10, 32).astype(np.float32)
    with np.errstate(invalid="ignore"):
        expected = ((values + offset.numpy()[:, :, None]) * scale.numpy()[:, :, None]).reshape(9, 320)
    out = native.dequant_int4_grouped(packed, scale, offset, torch.float32)
    np.testing.assert_array_equal(out.numpy().view(np.int32), expected.view(np.int32))


def test_strided_rows_are_gathered(isa):
    # word_stride != 1: rows go through the gather buffer (256 words per step), group edges across steps.
    wide = random_words(600, 41)
    for group in (8, 24, 32):
        gw = group // 8
        words = 300 - 300 % gw  # more than one gather step
        view = wide.t()[1:40, :words]  # (39, words), word stride 41
        assert view.stride(1) != 1
        check(view, *params(39, words // gw), torch.bfloat16)
    rows_skipped = wide[1:40:3, 2:34]  # row stride 123, contiguous words, storage offset
    check(rows_skipped, *params(rows_skipped.shape[0], 4), torch.float16)


# ---------------------------------------------------------------- threads, long rows, streaming

_BIG: dict[str, tuple] = {}


def big_case() -> tuple:
    """2051 x 1024 outputs (> 2 threads' grain): odd rows, group 32; reference computed once."""
    if "case" not in _BIG:
        packed = random_words(2051, 128)
        scale, offset = params(2051, 32)
        _BIG["case"] = packed, scale, offset, reference.dequant_int4_grouped(packed, scale, offset, torch.float16)
    return _BIG["case"]


def test_threads(isa, threads):
    packed, scale, offset, expected = big_case()
    assert_same_bits(native.dequant_int4_grouped(packed, scale, offset, torch.float16), expected)


def test_long_rows_split_into_spans(isa, threads):
    # Rows longer than one work unit (4096 words): units start inside a row, for group sizes whose
    # edges do (24: 4096 % 3 != 0) and do not fall on the unit boundary.
    for group in (8, 24, 32):
        gw = group // 8
        words = gw * (8192 // gw + 5)  # three units per row, the last one partial
        packed = random_words(3, words)
        check(packed, *params(3, words // gw), torch.float32)


def huge_case(dst: torch.dtype) -> tuple:
    """Outputs of at least 32 MiB (the non-temporal stores); reference computed once per dtype."""
    if dst not in _BIG:
        packed = random_words(1025, 1024 if dst == torch.float32 else 2048)
        scale, offset = params(1025, packed.shape[1] // 4, with_offset=dst == torch.float32)
        expected = reference.dequant_int4_grouped(packed, scale, offset, dst)
        assert expected.numel() * expected.element_size() >= 32 << 20
        _BIG[dst] = packed, scale, offset, expected
    return _BIG[dst]


@pytest.mark.parametrize("dst", [torch.float32, torch.bfloat16], ids=str)
def test_huge_output_streams_exactly(isa, dst):
    # out= at a 4-byte offset takes the unaligned fallback of the streaming stores.
    packed, scale, offset, expected = huge_case(dst)
    assert_same_bits(native.dequant_int4_grouped(packed, scale, offset, dst), expected)
    if dst == torch.float32:
        out = torch.empty(expected.numel() + 1)[1:].view(expected.shape)
        assert out.data_ptr() % 64 != 0
        assert native.dequant_int4_grouped(packed, scale, offset, dst, out=out) is out
        assert_same_bits(out, expected)


# ---------------------------------------------------------------- kernel entry point checks


def call_kernel(packed, extent, rows, words, row_stride, word_stride, group_words, out) -> int:
    scale = torch.ones(max(rows, 1), max(words // max(group_words, 1), 1))
    return _native.lib.npq_dequant_int4_grouped(
        packed.data_ptr(), extent, rows, words, row_stride, word_stride, group_words, scale.data_ptr(), None,
        out.data_ptr(), 0, 1,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extent", "rows", "words", "row_stride", "word_stride", "group_words", "code"),
    [
        (64, 4, 16, 16, 1, 0, -1),  # group of zero words
        (64, 4, 16, 16, 1, 3, -1),  # words not a multiple of the group
        (64, -1, 16, 16, 1, 4, -1),
        (64, 4, 16, -16, 1, 4, -1),
        (63, 4, 16, 16, 1, 4, -2),  # last word outside the extent
        (64, 4, 16, 17, 1, 4, -2),
        (64, 4, 16, 16, 2, 4, -2),
    ],
)
def test_kernel_refuses_bad_layouts_without_writing(extent, rows, words, row_stride, word_stride, group_words, code):
    packed = torch.zeros(64, dtype=torch.int32)
    out = torch.full((8 * 16 * 4,), 7.0)
    assert call_kernel(packed, extent, rows, words, row_stride, word_stride, group_words, out) == code
    assert (out == 7.0).all()
    assert call_kernel(packed, 64, 4, 16, 16, 1, 4, out) == 0
    out.fill_(7.0)
    scale, kernel = torch.ones(4, 4), _native.lib.npq_dequant_int4_grouped
    assert kernel(packed.data_ptr(), 64, 4, 16, 16, 1, 4, None, None, out.data_ptr(), 0, 1) == -1  # no scale
    assert kernel(packed.data_ptr(), 64, 4, 16, 16, 1, 4, scale.data_ptr(), None, out.data_ptr(), 3, 1) == -1  # dtype


# ---------------------------------------------------------------- out= and the tile plans


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_dispatch_out_buffer(force_reference):
    packed = random_words(6, 8)
    scale, offset = params(6, 2)
    expected = reference.dequant_int4_grouped(packed, scale, offset, torch.bfloat16)
    buf = torch.empty(6, 64, dtype=torch.bfloat16)
    with _native.force_reference(force_reference):
        assert aq.dequant_int4_grouped(packed, scale, offset, torch.bfloat16, out=buf) is buf
        assert_same_bits(buf, expected)
        for bad in (torch.empty(6, 63, dtype=torch.bfloat16), torch.empty(6, 64), torch.empty(64, 6).t()):
            with pytest.raises(RuntimeError, match="out must be a contiguous"):
                aq.dequant_int4_grouped(packed, scale, offset, torch.bfloat16, out=bad)


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_tile_plans(isa, force_reference):
    base = random_words(40, 30)
    packed = base[3:26, 2:26]  # 23 rows, row stride 30, storage offset: tiles point into the storage
    scale, offset = params(23, 3)
    scale = scale.bfloat16()
    offset = offset.bfloat16()
    expected = reference.dequant_int4_grouped(packed, scale, offset, torch.float16)
    with _native.force_reference(force_reference):
        plan = aq.grouped_int4_tiles(packed, scale, offset, torch.float16, 5)
        assert isinstance(plan, reference.GroupedTiles if force_reference else native.GroupedTiles)
        assert plan.bounds == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
        buf = torch.empty(5, 192, dtype=torch.float16)
        for i, (r0, r1) in enumerate(plan.bounds):
            out = buf[: r1 - r0]
            assert plan.dequant(i, out) is out
            assert_same_bits(out, expected[r0:r1])
        with pytest.raises(RuntimeError, match="out must be a contiguous"):
            plan.dequant(4, buf)  # the last tile has 3 rows
        with pytest.raises(RuntimeError, match="out must be a contiguous"):
            plan.dequant(0, buf.float())
        for bad in (0, -1, 2.0):
            with pytest.raises(RuntimeError, match="tile_rows must be a positive int"):
                aq.grouped_int4_tiles(packed, scale, offset, torch.float16, bad)
        with pytest.raises(RuntimeError, match="into groups"):
            aq.grouped_int4_tiles(packed, torch.ones(23, 5), None, torch.float16, 5)
        assert aq.grouped_int4_tiles(packed[:0], scale[:0], None, torch.float32, 4).bounds == []


def test_tile_plan_sees_in_place_updates():
    packed = random_words(4, 4)
    scale, offset = params(4, 1)
    plan = aq.grouped_int4_tiles(packed, scale, offset, torch.float32, 4)
    packed.copy_(random_words(4, 4))
    scale.mul_(2)
    assert_same_bits(plan.dequant(0, torch.empty(4, 32)), reference.dequant_int4_grouped(packed, scale, offset))


# ---------------------------------------------------------------- the W4A16 layer's tiles


def _layer(in_features: int, out_features: int, tile_rows: int) -> W4A16Linear:
    linear = torch.nn.Linear(in_features, out_features)
    layer = W4A16Linear.from_linear(linear, group_size=32)
    layer.tile_rows = tile_rows
    layer._invalidate()
    return layer


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_layer_tiles_match_the_whole_weight(force_reference):
    layer = _layer(72, 11, tile_rows=4)  # K padded 72 -> 96; tiles of 4, 4, 3 rows
    x = torch.randn(5, 72)
    with _native.force_reference(force_reference):
        layer._invalidate()
        expected = x @ layer.dequantize().t() + layer.bias
        out = layer(x)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert out.is_contiguous()  # like F.linear's (a transposed result slows what follows)
        assert layer(x[:1]).is_contiguous() and layer(x.reshape(5, 1, 72)).is_contiguous()
        with torch.inference_mode():  # the shared tile buffer serves both modes
            torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer._invalidate()


def test_layers_share_one_tile_buffer_per_thread():
    a, b = _layer(64, 40, tile_rows=16), _layer(64, 9, tile_rows=9)
    x = torch.randn(3, 64)
    expected_a, expected_b = x @ a.dequantize().t() + a.bias, x @ b.dequantize().t() + b.bias
    torch.testing.assert_close(a(x), expected_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b(x), expected_b, rtol=1e-5, atol=1e-5)
    assert (
        _kernels.scratch(2, 8, torch.float32, x.device).data_ptr()
        == _kernels.scratch(16, 64, torch.float32, x.device).data_ptr()
    )
    results: dict[int, bool] = {}

    def worker(i: int) -> None:  # concurrent forwards: each thread has its own buffer
        ok = True
        for _ in range(20):
            ok &= torch.allclose(a(x), expected_a, rtol=1e-5, atol=1e-5)
            ok &= torch.allclose(b(x), expected_b, rtol=1e-5, atol=1e-5)
        results[i] = ok

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == {0: True, 1: True, 2: True}
