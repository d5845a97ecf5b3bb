"""Anti-quantization's native path (the shape adapters over ``torch.ops.npuquant.dequant_affine``,
csrc/dequant.c) against the reference path, bit for bit, on what is particular to anti-quant: edge
values and NaN payloads, bfloat16's NaN pattern, layouts, storage bounds, dispatch, and the
group-wise int4 tiles. The kernel x granularity x encoder x ISA x threads table is
test_dequant_affine.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits, bits, random_int8, random_words, shrink_storage
from npuquant import _native
from npuquant.ops import anti_quant as aq

OUT_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def reference_anti_quant(x, scale, offset, dst, sqrt_mode=False):
    with _native.force_reference():
        return aq.anti_quant(x, scale, offset, dst, sqrt_mode)


def reference_grouped(packed, scale, offset=None, dst=torch.float32):
    with _native.force_reference():
        return aq.dequant_int4_grouped(packed, scale, offset, dst)


def both(x, scale, offset, dst, sqrt_mode=False):
    """The native result equals the reference's, bit for bit."""
    out = aq.anti_quant(x, scale, offset, dst, sqrt_mode)
    assert_same_bits(out, reference_anti_quant(x, scale, offset, dst, sqrt_mode))
    return out


def f32_from_bits(words: list[int]) -> torch.Tensor:
    return torch.tensor(words, dtype=torch.int64).to(torch.int32).view(torch.float32)


def bf16_bits(t: torch.Tensor) -> list[int]:
    """Unsigned 16-bit patterns of a bfloat16 tensor, flattened."""
    return (bits(t).to(torch.int32) & 0xFFFF).reshape(-1).tolist()


# ---------------------------------------------------------------- every variant vs reference

SHAPES = [(1, 1), (1, 7), (3, 8), (2, 15), (5, 16), (4, 33), (3, 64), (2, 100), (9, 1), (2, 3, 17)]


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
    both(xs, scales, scales.flip(0), dst, sqrt_mode=True)  # NaN / inf / denormal scales squared
    both(x, torch.full((13,), float("inf")), -x.float(), dst)
    both(x, torch.full((13,), 1e-40), x.float(), dst, sqrt_mode=True)


@pytest.mark.parametrize("dst", OUT_DTYPES, ids=str)
def test_conversion_of_every_kind_of_float(isa, dst):
    # x = 1, no offset: the output is cast(scale), so random float32 bit patterns (NaN payloads,
    # denormals, overflow, ties) exercise the kernels' conversions against torch's.
    gen = torch.Generator().manual_seed(1)
    scale = random_words(40_000, generator=gen).view(torch.float32)
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
    probe = bf16_bits(torch.full((5,), float("nan")).to(torch.bfloat16))[0]
    assert _native.BF16_NAN_BITS == probe
    out = aq.anti_quant(torch.ones(3, dtype=torch.int8), torch.tensor([float("nan")]), None, torch.bfloat16)
    assert bf16_bits(out) == [probe] * 3


def test_bf16_nan_pattern_is_one_runtime_setting(isa):
    # Every variant (SIMD body and tail) writes whatever pattern the runtime holds.
    x, scale = torch.ones(40, dtype=torch.int8), torch.full((40,), float("nan"))
    try:
        for pattern in (0x7FC0, 0xFFFF, 0x7FAB):
            torch.ops.npuquant.set_bf16_nan(pattern)
            assert bf16_bits(aq.anti_quant(x, scale, None, torch.bfloat16)) == [pattern] * 40
            assert bf16_bits(aq.anti_quant(x[:1], scale[:1], None, torch.bfloat16)) == [pattern]
    finally:
        torch.ops.npuquant.set_bf16_nan(_native.BF16_NAN_BITS)
    assert bf16_bits(aq.anti_quant(x, scale, None, torch.bfloat16)) == [_native.BF16_NAN_BITS] * 40


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


def test_strided_and_bf16_parameters(isa):
    # scale / offset need not be contiguous nor float32: the wrapper converts them first.
    x = random_int8(5, 12)
    scale, offset = torch.rand(36)[::3], torch.randn(24)[1::2]
    both(x, scale, offset, torch.float16)
    both(x, scale.bfloat16(), offset.bfloat16(), torch.bfloat16, sqrt_mode=True)
    both(random_words(3, 2), torch.rand(32)[::2], None, torch.float32)


def test_leading_dims_that_do_not_merge(isa):
    # More irregular leading dims than the kernel's layout holds (NPQ_MAX_LEAD = 8): the wrapper
    # copies x first. The operator takes any rank; the 8-dim limit is npu_anti_quant's rule.
    x = random_int8(*[3] * 10)[::2, :, ::2, :, ::2, :, ::2, :, ::2, :]
    both(x, torch.rand(3), torch.randn(3), torch.bfloat16)
    both(x.permute(*range(9, -1, -1)), torch.rand(2), None, torch.float16)
    words = random_words(*[2] * 9, 3)[..., ::2]
    both(words, torch.rand(16), None, torch.float32)


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0,), (2, 0, 5)])
def test_empty(isa, shape):
    for packed in (False, True):
        x = torch.empty(shape, dtype=torch.int32 if packed else torch.int8)
        for dst in OUT_DTYPES:
            both(x, torch.rand(1), None, dst)
            both(x, torch.rand(1), torch.rand(1), dst, sqrt_mode=True)


def test_results_are_fresh_tensors():
    # No out= any more: every call returns a new contiguous tensor that aliases nothing.
    x, scale = random_int8(4, 6), torch.rand(6)
    first, second = (aq.anti_quant(x, scale, None, torch.bfloat16) for _ in range(2))
    assert first.is_contiguous() and first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    assert_same_bits(first, second)
    with pytest.raises((TypeError, RuntimeError)):
        aq.anti_quant(x, scale, None, torch.bfloat16, out=torch.empty(4, 6, dtype=torch.bfloat16))


# ---------------------------------------------------------------- the C++ wrapper refuses what reaches outside


def _need(t: torch.Tensor) -> int:
    """Elements of storage t's view needs: storage offset + its farthest element + 1."""
    return t.storage_offset() + sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1


@pytest.mark.parametrize(
    ("dtype", "size", "stride", "offset"),
    [
        (torch.int8, (10, 10), (10, 1), 0),
        (torch.int8, (10, 11), (10, 1), 0),  # rows overlapping the next one
        (torch.int8, (1, 4), (0, 33), 0),  # a single row with a wide inner stride
        (torch.int8, (4,), (33,), 1),  # storage offset
        (torch.int8, (4, 9), (1, 0), 5),  # stride 0
        (torch.int8, (3, 2, 5), (1, 3, 7), 2),  # general strides
        (torch.int32, (5, 5), (5, 1), 0),
        (torch.int32, (3, 4), (1, 3), 1),  # packed, transposed
    ],
)
def test_x_reaching_outside_its_storage_is_refused(dtype, size, stride, offset):
    base = random_int8(256) if dtype == torch.int8 else random_words(64)
    x = base.as_strided(size, stride, offset)
    need, es = _need(x), x.element_size()
    last = x.shape[-1] * (8 if dtype == torch.int32 else 1)
    scale, off = torch.rand(last), torch.randn(last)
    expected = reference_anti_quant(x.clone(), scale, off, torch.float16)
    exact = base.clone().as_strided(size, stride, offset)
    assert_same_bits(aq.anti_quant(shrink_storage(exact, need * es), scale, off, torch.float16), expected)
    short = shrink_storage(base.clone().as_strided(size, stride, offset), (need - 1) * es)
    shape = ", ".join(map(str, size))
    message = rf"npuquant::dequant_affine: x of shape \[{shape}\] reaches outside its storage"
    with pytest.raises(RuntimeError, match=message):
        aq.anti_quant(short, scale, off, torch.float16)
    with pytest.raises(RuntimeError, match=message):  # the public op goes through the same check
        npuquant.npu_anti_quant(short, scale, offset=off)


def test_parameters_reaching_outside_their_storage_are_refused():
    x = random_int8(3, 16)
    with pytest.raises(RuntimeError, match=r"npuquant::dequant_affine: scale of shape \[16\] reaches outside"):
        aq.anti_quant(x, shrink_storage(torch.rand(16), 60), None, torch.float16)
    with pytest.raises(RuntimeError, match=r"npuquant::dequant_affine: offset of shape \[16\] reaches outside"):
        aq.anti_quant(x, torch.rand(16), shrink_storage(torch.rand(16), 32), torch.float16)
    strided = shrink_storage(torch.rand(64)[1::4], 4 * 61)  # (16,) stride 4 from element 1: needs 62
    with pytest.raises(RuntimeError, match=r"scale of shape \[16\] reaches outside its storage"):
        aq.anti_quant(x, strided, None, torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"npuquant::dequant_affine: x of shape \[3, 16\] reaches outside"):
        aq.anti_quant(shrink_storage(random_int8(3, 16), 47), torch.rand(1), None, torch.float32, sqrt_mode=True)


# ---------------------------------------------------------------- dispatch


def test_dispatch_cpu_native_else_reference():
    # The kernels write the runtime's bf16 NaN pattern, torch's cast its own: a distinct
    # pattern tells which one ran.
    marker = 0x7FAB
    assert marker != _native.BF16_NAN_BITS
    x, s = random_int8(3, 4), torch.full((4,), float("nan"))
    torch.ops.npuquant.set_bf16_nan(marker)
    try:
        runs = {
            "npu_anti_quant": lambda: npuquant.npu_anti_quant(x, s, dst_dtype=torch.bfloat16),
            "anti_quant": lambda: aq.anti_quant(x, s, None, torch.bfloat16),
            "anti_quant_sqrt": lambda: aq.anti_quant(x, s, None, torch.bfloat16, sqrt_mode=True),
        }
        for name, run in runs.items():
            assert bf16_bits(run()) == [marker] * 12, name
        with _native.force_reference():
            assert _native.reference_forced()
            for name, run in runs.items():
                out = run()
                assert bf16_bits(out) != [marker] * 12, name
                assert_same_bits(out, reference_anti_quant(x, s, None, torch.bfloat16))
                # the operator itself has no fallback: CPU tensors always run the kernel
                direct = torch.ops.npuquant.dequant_affine(x, s, None, torch.bfloat16)
                assert bf16_bits(direct) == [marker] * 12
        assert not _native.reference_forced()
    finally:
        torch.ops.npuquant.set_bf16_nan(_native.BF16_NAN_BITS)
    # another device: the fake kernel (meta) gives shape and dtype, int4 last dim x8
    for fn in (aq.anti_quant,):
        meta = fn(x.to("meta"), s.to("meta"), None, torch.float16)
        assert meta.device.type == "meta" and meta.shape == (3, 4) and meta.dtype == torch.float16
        meta = fn(random_words(3, 2).to("meta"), s[:1].to("meta"), None, torch.bfloat16)
        assert meta.shape == (3, 16) and meta.dtype == torch.bfloat16
    # float32 output (internal use) is native too
    assert_same_bits(aq.anti_quant(x, s, None, torch.float32), reference_anti_quant(x, s, None, torch.float32))


def test_force_reference_environment_variable():
    # NPUQUANT_FORCE_REFERENCE=1 at import sends CPU calls to the reference.
    code = (
        "import torch, npuquant\n"
        "from npuquant import _native\n"
        "torch.ops.npuquant.set_bf16_nan(0x7FAB)\n"
        "out = npuquant.npu_anti_quant(torch.ones(4, dtype=torch.int8), torch.full((4,), float('nan')),"
        " dst_dtype=torch.bfloat16)\n"
        "print(_native.reference_forced(), int(out.view(torch.int16)[0]) & 0xFFFF)\n"
    )
    env = {**os.environ, "NPUQUANT_FORCE_REFERENCE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    forced, pattern = done.stdout.split()
    assert forced == "True" and int(pattern) == _native.BF16_NAN_BITS != 0x7FAB


def test_public_op_bf16_scale_and_sqrt_mode(isa):
    x = random_words(6, 5)
    scale, offset = torch.rand(40).bfloat16(), torch.randn(40).bfloat16()
    out = npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.bfloat16)
    with _native.force_reference():
        assert_same_bits(out, npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.bfloat16))
    both(x, scale, offset, torch.float16, sqrt_mode=True)


def test_sqrt_mode_native_equals_forced_reference(isa):
    x = random_int8(7, 33)
    scale = torch.cat([f32_from_bits(EDGE_SCALE_BITS), torch.randn(7)])
    offset = torch.randn(33) * 3
    for dst in OUT_DTYPES:
        out = aq.anti_quant(x, scale, offset, dst, sqrt_mode=True)
        with _native.force_reference():
            assert_same_bits(out, aq.anti_quant(x, scale, offset, dst, sqrt_mode=True))
        # sqrt mode = the plain op on float32(scale) ** 2, squared first
        s32 = scale.float()
        assert_same_bits(out, aq.anti_quant(x, s32 * s32, offset, dst))


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


# ---------------------------------------------------------------- group-wise int4 dequant (w4a16 helper)


def test_grouped_reference_formula_and_layouts(isa):
    packed = torch.tensor([[0x76543210, -1985229329]], dtype=torch.int32)  # 0..7, -1..-8
    scale, offset = torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, -1.0]])
    expected = [(v + 1) * 0.5 for v in range(8)] + [(-v - 1) * 2.0 for v in range(1, 9)]
    assert reference_grouped(packed, scale, offset).tolist() == [expected]
    assert aq.dequant_int4_grouped(packed, scale, offset, torch.float32).tolist() == [expected]
    assert aq.dequant_int4_grouped(packed, scale, offset).tolist() == [expected]  # float32 by default
    wide = random_words(20, 40)
    for view in (wide[2:18:3, 4:36], wide.t()[:16, 2:10]):
        scale = torch.rand(view.shape[0], 4)
        assert_same_bits(aq.dequant_int4_grouped(view, scale, None, torch.bfloat16),
                         reference_grouped(view, scale, None, torch.bfloat16))  # fmt: skip
    scale = torch.rand(2, 16).t()  # column-major (16, 2) scale, strided offset
    offset = torch.randn(4, 16).t()[:, ::2]
    assert_same_bits(aq.dequant_int4_grouped(wide[:16, :8], scale, offset, torch.float16),
                     reference_grouped(wide[:16, :8], scale, offset, torch.float16))  # fmt: skip
    for dst in OUT_DTYPES:
        empty = aq.dequant_int4_grouped(torch.empty(0, 4, dtype=torch.int32), torch.empty(0, 2), None, dst)
        assert empty.shape == (0, 32) and empty.dtype == dst
        no_words = aq.dequant_int4_grouped(torch.empty(3, 0, dtype=torch.int32), torch.ones(3, 1), None, dst)
        assert_same_bits(no_words, reference_grouped(torch.empty(3, 0, dtype=torch.int32),
                                                                  torch.ones(3, 1), None, dst))  # fmt: skip


I32 = torch.int32


@pytest.mark.parametrize(
    ("args", "message", "op_message"),
    [
        ((torch.ones(2, 4, dtype=torch.int8), torch.ones(2, 1)), "packed must be a 2-D int32 tensor",
         "packed must be int32, but got int8"),
        ((torch.ones(4, dtype=I32), torch.ones(1, 1)), "packed must be a 2-D int32 tensor",
         r"packed must be 2-D \(rows, K/8\), but has shape \[4\]"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2, 1).half()), "scale must be a 2-D float32 or bfloat16",
         "scale must be float32 or bfloat16, but got float16"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2)), "scale must be a 2-D float32 or bfloat16",
         r"scale must be \(rows, groups\) with groups dividing K/8 = 4, but has shape \[2\]"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2, 3)), "into groups", r"but has shape \[2, 3\]"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(3, 2)), "into groups", r"but has shape \[3, 2\]"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2, 0)), "into groups", r"but has shape \[2, 0\]"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2, 2), torch.ones(2, 1)), "offset must have the same shape",
         r"offset must have scale's shape \[2, 2\]"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2, 2), torch.ones(2, 2, dtype=I32)), "same shape and dtype",
         "offset must have scale.s dtype \\(float32\\), but got int32"),
        ((torch.ones(2, 4, dtype=I32), torch.ones(2, 2), None, torch.int8), "out_dtype must be a float type",
         "out_dtype must be float32, float16 or bfloat16, but got int8"),
    ],
)  # fmt: skip
def test_grouped_errors(args, message, op_message):
    for fn in (aq.dequant_int4_grouped, reference_grouped):
        for forced in (False, True):
            with _native.force_reference(forced), pytest.raises(RuntimeError, match=message):
                fn(*args)
    del op_message
