"""Grouped int4 dequantization (the w4a16 weight tiles; a shape adapter over
``torch.ops.npuquant.dequant_affine``) against the reference path, bit for bit: group sizes 8..128
(powers of two and not), strided rows, NaN/inf parameters, storage checks, row slices (the tiles
the layer dequantizes), and the W4A16 layer's tiled forward (``torch.ops.npuquant.linear_w4a16``)
against its reference. The kernel x granularity x encoder x ISA x threads table is
test_dequant_affine.py."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from helpers import assert_same_bits, bits, random_words, shrink_storage
from npuquant import _native
from npuquant.nn import W4A16Linear
from npuquant.ops import anti_quant as aq

OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GROUP_SIZES = [8, 16, 24, 32, 64, 128]  # 24: three words per group, the non-power-of-two loop


def params(rows: int, groups: int, with_offset: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    scale = torch.rand(rows, groups) * 0.1 + 1e-3
    return scale, (torch.randn(rows, groups) * 4 if with_offset else None)


def reference_grouped(packed, scale, offset=None, dst=torch.float32) -> torch.Tensor:
    with _native.force_reference():
        return aq.dequant_int4_grouped(packed, scale, offset, dst)


def check(packed, scale, offset, dst, nan_any: torch.Tensor | None = None) -> torch.Tensor:
    result = aq.dequant_int4_grouped(packed, scale, offset, dst)
    assert_same_bits(result, reference_grouped(packed, scale, offset, dst), nan_any)
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
    check(packed, scale.bfloat16(), None, torch.bfloat16)


def test_strided_parameters(isa):
    # scale / offset of any strides (the wrapper makes float32 contiguous copies).
    packed = random_words(6, 8)
    scale = torch.rand(4, 6).t()  # (6, 4) column-major
    offset = torch.randn(6, 8)[:, ::2]
    check(packed, scale, offset, torch.float16)
    check(packed, scale.bfloat16(), offset.bfloat16(), torch.float32)


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


def test_nan_payloads(isa):
    # NaN parameters with payloads and signs (quiet and signalling): the kernels keep what float32
    # math and torch's casts give. Where offset and scale are both NaN, torch's broadcast multiply
    # keeps either payload depending on its loop, so there the result need only be NaN.
    nans = torch.tensor([0x7FC12345, 0xFFC00001, 0x7F800001, 0xFFA54321], dtype=torch.int64).to(torch.int32)
    scale = nans.view(torch.float32).reshape(4, 1).repeat(1, 2)
    offset = nans.flip(0).view(torch.float32).reshape(4, 1).repeat(1, 2)
    packed = random_words(4, 4)
    both_nan = torch.ones(4, 32, dtype=torch.bool)
    for dst in OUT_DTYPES:
        out = check(packed, scale, offset, dst, nan_any=both_nan)
        assert out.isnan().all()
        check(packed, scale, torch.ones(4, 2), dst)
        check(packed, torch.ones(4, 2), offset, dst)
        ragged = torch.ones(4, 2)
        ragged[1, 0], ragged[3, 1] = float("inf"), float("-inf")
        check(packed, scale.roll(1, 0)[:, :1].repeat(1, 2) * ragged, None, dst)


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
    out = aq.dequant_int4_grouped(packed, scale, offset, torch.float32)
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
    check(random_words(3, 1).expand(3, 16), *params(3, 2), torch.float32)  # word stride 0
    check(random_words(1, 16).expand(5, 16), *params(5, 4), torch.float32)  # row stride 0


def test_empty_shapes(isa):
    for dst in OUT_DTYPES:
        for packed, scale in (
            (torch.empty(0, 4, dtype=torch.int32), torch.empty(0, 2)),
            (torch.empty(3, 0, dtype=torch.int32), torch.ones(3, 1)),
        ):
            out = check(packed, scale, None, dst)
            assert out.shape == (packed.shape[0], packed.shape[1] * 8)
            check(packed, scale, scale.clone(), dst)


# ---------------------------------------------------------------- the C++ wrapper's checks


def _need(t: torch.Tensor) -> int:
    """Elements of storage t's view needs: storage offset + its farthest element + 1."""
    return t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1


@pytest.mark.parametrize(
    ("size", "stride", "offset"),
    [
        ((4, 16), (16, 1), 0),
        ((4, 16), (17, 1), 0),  # a row stride past the row
        ((4, 16), (16, 2), 0),  # word stride 2
        ((4, 16), (1, 4), 3),  # transposed, storage offset
        ((4, 16), (0, 1), 5),  # row stride 0
    ],
)
def test_packed_reaching_outside_its_storage_is_refused(size, stride, offset):
    base = random_words(128)
    scale, off = params(4, 4)
    packed = base.as_strided(size, stride, offset)
    need = _need(packed)
    expected = reference_grouped(packed.clone(), scale, off, torch.float32)
    exact = shrink_storage(base.clone().as_strided(size, stride, offset), 4 * need)
    assert_same_bits(aq.dequant_int4_grouped(exact, scale, off, torch.float32), expected)
    short = shrink_storage(base.clone().as_strided(size, stride, offset), 4 * (need - 1))
    message = r"npuquant::dequant_affine: x of shape \[4, 16\] reaches outside its storage"
    with pytest.raises(RuntimeError, match=message):
        aq.dequant_int4_grouped(short, scale, off, torch.float32)
    with pytest.raises(RuntimeError, match=message):  # the public function goes through the same check
        aq.dequant_int4_grouped(short, scale, off, torch.bfloat16)


def test_parameters_reaching_outside_their_storage_are_refused():
    packed = random_words(4, 16)
    scale, offset = params(4, 4)
    with pytest.raises(RuntimeError, match=r"dequant_affine: scale of shape \[4, 4\] reaches outside"):
        aq.dequant_int4_grouped(packed, shrink_storage(scale.clone(), 60), offset, torch.float32)
    with pytest.raises(RuntimeError, match=r"dequant_affine: offset of shape \[4, 4\] reaches outside"):
        aq.dequant_int4_grouped(packed, scale, shrink_storage(offset.clone(), 4), torch.float16)
    with pytest.raises(RuntimeError, match=r"dequant_affine: offset of shape \[4, 4\] reaches outside"):
        aq.dequant_int4_grouped(packed, scale, shrink_storage(offset.clone(), 32))


# ---------------------------------------------------------------- dispatch and row slices (the layer's tiles)


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_dispatch(force_reference):
    packed = random_words(6, 8)
    scale, offset = params(6, 2)
    expected = reference_grouped(packed, scale, offset, torch.bfloat16)
    with _native.force_reference(force_reference):
        first = aq.dequant_int4_grouped(packed, scale, offset, torch.bfloat16)
        assert_same_bits(first, expected)
        second = aq.dequant_int4_grouped(packed, scale, offset, torch.bfloat16)
        assert second.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()  # a fresh tensor each call
        default = aq.dequant_int4_grouped(packed, scale)  # no offset, float32
        assert_same_bits(default, reference_grouped(packed, scale, None, torch.float32))
        with pytest.raises(RuntimeError, match="into groups"):  # validated with the reference's messages
            aq.dequant_int4_grouped(packed, torch.ones(6, 3))
        meta = aq.dequant_int4_grouped(packed.to("meta"), scale.to("meta"), None, torch.float16)
        assert meta.device.type == "meta" and meta.shape == (6, 64) and meta.dtype == torch.float16
    with pytest.raises(TypeError):
        aq.dequant_int4_grouped(packed, scale, offset, torch.bfloat16, out=torch.empty(6, 64, dtype=torch.bfloat16))


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_row_slices(isa, force_reference):
    # What the layer dequantizes tile by tile: row slices of a strided weight with a storage offset.
    base = random_words(40, 30)
    packed = base[3:26, 2:26]  # 23 rows, row stride 30, storage offset
    scale, offset = params(23, 3)
    scale, offset = scale.bfloat16(), offset.bfloat16()
    expected = reference_grouped(packed, scale, offset, torch.float16)
    bounds = [(r0, min(r0 + 5, 23)) for r0 in range(0, 23, 5)]
    assert bounds[-1] == (20, 23)
    with _native.force_reference(force_reference):
        for r0, r1 in bounds:
            tile = aq.dequant_int4_grouped(packed[r0:r1], scale[r0:r1], offset[r0:r1], torch.float16)
            assert_same_bits(tile, expected[r0:r1])
        with pytest.raises(RuntimeError, match="into groups"):
            aq.dequant_int4_grouped(packed[:5], torch.ones(5, 5), None, torch.float16)
        with pytest.raises(RuntimeError, match="into groups"):  # a slice of scale that does not match the rows
            aq.dequant_int4_grouped(packed[:5], scale[:4], None, torch.float16)
        empty = aq.dequant_int4_grouped(packed[:0], scale[:0], None, torch.float32)
        assert empty.shape == (0, 192) and empty.dtype == torch.float32


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_results_follow_in_place_updates(force_reference):
    # No cache behind the function: each call reads the inputs as they are now.
    packed = random_words(4, 4)
    scale, offset = params(4, 1)
    with _native.force_reference(force_reference):
        before = aq.dequant_int4_grouped(packed, scale, offset)
        packed.copy_(random_words(4, 4))
        scale.mul_(2)
        offset.data[0, 0] = 100.0  # bypasses the version counter
        after = aq.dequant_int4_grouped(packed, scale, offset)
    assert_same_bits(after, reference_grouped(packed, scale, offset))
    assert not torch.equal(bits(before), bits(after))


# ---------------------------------------------------------------- the W4A16 layer's tiles


def _layer(in_features: int, out_features: int, tile_rows: int, dtype: torch.dtype = torch.float32) -> W4A16Linear:
    linear = torch.nn.Linear(in_features, out_features)
    layer = W4A16Linear.from_linear(linear, group_size=32).to(dtype)
    layer.tile_rows = tile_rows
    return layer


GEMV_MAX_ROWS = 8  # up to this many rows the operator runs the fused int4 GEMV (csrc/gemv_int4.c)


def _forward_pair(layer: W4A16Linear, x: torch.Tensor) -> torch.Tensor:
    """The layer's native forward against the same forward on the reference: bit for bit from 9
    rows on (the same tiles and F.linear); up to 8 rows the fused GEMV sums in its own order, so
    within float32 rounding of the sum (and one rounding of the output dtype)."""
    out = layer(x)
    with _native.force_reference():
        want = layer(x)
    if x.numel() // max(x.shape[-1], 1) <= GEMV_MAX_ROWS:
        tol = {"rtol": 1e-5, "atol": 1e-5} if x.dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
        torch.testing.assert_close(out, want, **tol)
    else:
        assert_same_bits(out, want)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_layer_native_equals_reference(isa, dtype):
    layer = _layer(72, 11, tile_rows=4, dtype=dtype)  # K padded 72 -> 96; tiles of 4, 4, 3 rows
    x = torch.randn(5, 72).to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    expected = (x.float() @ layer.dequantize().t() + layer.bias.float()).to(dtype)
    for tile_rows in (4, 1, 3, 11, 64):  # 64 > out_features: one tile
        layer.tile_rows = tile_rows
        out = _forward_pair(layer, x)
        torch.testing.assert_close(out, expected, **tol)
        assert out.is_contiguous()  # like F.linear's (a transposed result slows what follows)
        assert _forward_pair(layer, x[:1]).is_contiguous()
        assert _forward_pair(layer, x.reshape(5, 1, 72)).shape == (5, 1, 11)
        torch.testing.assert_close(_forward_pair(layer, torch.cat([x, x], 1)[:, :72]), out, rtol=0, atol=0)
        with torch.inference_mode():  # the shared tile buffer serves both modes
            assert_same_bits(layer(x), out)
    no_bias = W4A16Linear.from_linear(torch.nn.Linear(40, 9, bias=False), group_size=16).to(dtype)
    no_bias.tile_rows = 2
    _forward_pair(no_bias, torch.randn(3, 40).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_layer_column_major_input_native_equals_reference(dtype):
    # A non-contiguous x: the operator multiplies a contiguous copy, the reference must too.
    layer = _layer(72, 11, tile_rows=4, dtype=dtype)
    x = torch.randn(72, 5).to(dtype).t()  # (5, 72), strides (1, 5)
    out = _forward_pair(layer, x)
    assert_same_bits(out, layer(x.contiguous()))


def test_layer_threads(isa, threads):
    layer = _layer(200, 70, tile_rows=16)
    _forward_pair(layer, torch.randn(33, 200))
    _forward_pair(layer, torch.randn(1, 200))  # one token: the GEMV shape


def test_layer_follows_in_place_weight_edits():
    layer = _layer(64, 12, tile_rows=5)
    x = torch.randn(2, 64)
    before = layer(x)
    layer.weight.copy_(random_words(*layer.weight.shape))
    layer.weight_scale.data.mul_(3)
    after = _forward_pair(layer, x)
    torch.testing.assert_close(after, x @ layer.dequantize().t() + layer.bias, rtol=1e-5, atol=1e-5)
    assert not torch.equal(before, after)


def test_layer_operator_refuses_bad_tile_rows():
    layer = _layer(64, 12, tile_rows=5)
    args = (torch.randn(2, 64), layer.weight, layer.weight_scale, layer.weight_offset, layer.bias, 64)
    for bad in (0, -1):
        with pytest.raises(RuntimeError, match="npuquant::linear_w4a16: tile_rows must be positive"):
            torch.ops.npuquant.linear_w4a16(*args, bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_layer_reference_refuses_bad_tile_rows(bad):
    # The reference (every non-CPU device, and force_reference) must refuse what the operator refuses.
    layer = _layer(64, 12, tile_rows=bad)
    with _native.force_reference(), pytest.raises(RuntimeError, match="tile_rows"):
        layer(torch.randn(2, 64))


def test_layers_share_one_tile_buffer_per_thread():
    # Layers of different tile sizes take turns on each thread's tile buffer (grown, then reused
    # smaller); concurrent forwards on several threads each have their own buffer.
    a, b = _layer(64, 40, tile_rows=16), _layer(96, 9, tile_rows=9)
    xa, xb = torch.randn(12, 64), torch.randn(12, 96)  # more than 8 rows: the tiled path
    with _native.force_reference():
        expected_a, expected_b = a(xa), b(xb)
    assert_same_bits(a(xa), expected_a)
    assert_same_bits(b(xb), expected_b)
    assert_same_bits(a(xa), expected_a)
    results: dict[int, bool] = {}

    def worker(i: int) -> None:
        ok = True
        for _ in range(20):
            ok &= torch.equal(bits(a(xa)), bits(expected_a))
            ok &= torch.equal(bits(b(xb)), bits(expected_b))
        results[i] = ok

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert results == {0: True, 1: True, 2: True}
