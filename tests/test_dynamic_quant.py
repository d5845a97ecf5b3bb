"""npu_dynamic_quant_asymmetric / npu_dynamic_quant (SPEC §3): worked examples, smoothing and MoE
against an independent numpy formula, int4 packing, constant rows, the reconstruction property,
every error rule, torch.compile and opcheck of the operator ``torch.ops.npuquant.dynamic_quant``.
Native-vs-reference tests: test_dynamic_quant_native.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from npuquant import _native
from npuquant.ops.dynamic_quant import reference

F32 = np.float32


def np_pack_int4(values: np.ndarray) -> np.ndarray:
    """Independent packing: nibble pairs into little-endian bytes, low nibble first, viewed as int32."""
    nib = (values.astype(np.int16) & 0xF).astype(np.uint8).reshape(*values.shape[:-1], -1, 2)
    raw = np.ascontiguousarray(nib[..., 0] | (nib[..., 1] << 4))
    return raw.view("<i4")


def np_smooth_rows(smooth: np.ndarray, group_index: list[int] | None, rows: int) -> np.ndarray:
    """Smooth factor per row, by walking the groups (no searchsorted): rows [start, end) use group i."""
    if group_index is None:
        return np.broadcast_to(smooth, (rows, smooth.shape[-1]))
    out = np.full((rows, smooth.shape[-1]), np.nan, dtype=F32)
    start = 0
    for i, end in enumerate(group_index):
        out[start:end] = smooth[i]
        start = end
    return out


def np_dynamic_quant(x, smooth=None, group_index=None, int4=False, asym=True):
    """Independent float32 formula (SPEC §3.4/§3.5, op order as documented in reference.py)."""
    lead, h = x.shape[:-1], x.shape[-1]
    xs = x.reshape(-1, h).astype(F32)
    if smooth is not None:
        xs = (xs * np_smooth_rows(smooth.astype(F32), group_index, xs.shape[0])).astype(F32)
    dmin, dmax = (-8, 7) if int4 else (-128, 127)
    mx, mn = xs.max(-1), xs.min(-1)
    with np.errstate(all="ignore"):
        if asym:
            scale = np.maximum((mx - mn) / F32(dmax - dmin), F32(1e-12)).astype(F32)
            offset = (F32(dmax) - mx / scale).astype(F32)
            v = xs * (F32(1) / scale)[:, None] + offset[:, None]
        else:
            scale = (np.abs(xs).max(-1) / F32(dmax)).astype(F32)
            offset = None
            inv = np.where(scale == 0, F32(0), F32(1) / np.where(scale == 0, F32(1), scale)).astype(F32)
            v = xs * inv[:, None]
        y = np.rint(v.astype(F32))
        y = np.clip(np.where(np.isnan(y), 0, y), dmin, dmax).astype(np.int8)
    if int4:
        y = np_pack_int4(y)
    y = y.reshape(*lead, y.shape[-1])
    return y, scale.reshape(lead), None if offset is None else offset.reshape(lead)


def run(x, asym=True, **kwargs):
    """The public op; returns (y, scale, offset) for both flavours (offset None when symmetric)."""
    if asym:
        return npuquant.npu_dynamic_quant_asymmetric(x, **kwargs)
    y, scale = npuquant.npu_dynamic_quant(x, **kwargs)
    return y, scale, None


def assert_matches_np(out, expected):
    for got, want in zip(out, expected):
        if want is None:
            assert got is None
            continue
        np.testing.assert_array_equal(got.numpy(), want)


# ---------------------------------------------------------------- worked examples (SPEC §3.8, §10)


def test_symmetric_doc_example():
    x = torch.tensor([[0.7261, 0.3726, 0.9126], [0.9023, 0.9990, 0.1279], [0.8628, 0.6240, 0.9028]]).half()
    y, scale = npuquant.npu_dynamic_quant(x)
    assert y.dtype == torch.int8 and y.tolist() == [[101, 52, 127], [115, 127, 16], [121, 88, 127]]
    assert scale.dtype == torch.float32 and scale.shape == (3,)
    torch.testing.assert_close(scale, torch.tensor([0.0071858, 0.0078663, 0.0071089]), rtol=1e-4, atol=0)
    assert torch.equal(scale, x.float().abs().amax(-1) / 127)  # scale = max|x| / 127, exactly


def test_symmetric_doc_example_with_smooth():
    x = torch.tensor([[0.6680, 0.9492, 0.0845], [0.1924, 0.5278, 0.1484], [0.6631, 0.9497, 0.0957]]).half()
    smooth = torch.tensor([0.8042, 0.0884, 0.8901]).half()
    y, scale = npuquant.npu_dynamic_quant(x, smooth_scales=smooth)
    assert y.tolist() == [[127, 20, 18], [127, 38, 108], [127, 20, 20]]
    torch.testing.assert_close(scale, torch.tensor([0.0042298, 0.0012182, 0.0041988]), rtol=1e-4, atol=0)


ASYM_X = [list(range(8)), list(range(-4, 4))]


def test_asymmetric_int8_example():
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(torch.tensor(ASYM_X, dtype=torch.float16))
    assert y.dtype == torch.int8 and y.tolist() == [[-128, -92, -55, -19, 18, 54, 91, 127]] * 2
    assert torch.equal(scale, torch.full((2,), 7 / 255, dtype=torch.float32))
    # offset = 127 - max / scale with a true division: exactly -128 (a 1/scale product would give -127.99998).
    assert torch.equal(offset, torch.tensor([-128.0, 17.714287]))


def test_asymmetric_int4_example():
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(
        torch.tensor(ASYM_X, dtype=torch.float16), dst_type=torch.quint4x2
    )
    assert y.dtype == torch.int32 and y.tolist() == [[1966206120], [1966206120]]
    assert npuquant.unpack_int4(y).tolist() == [[-8, -6, -4, -2, 1, 3, 5, 7]] * 2
    assert torch.equal(scale, torch.full((2,), 7 / 15, dtype=torch.float32))
    assert torch.equal(offset, torch.tensor([-8.0, 0.5714288]))


def test_moe_example():
    x = (torch.arange(24).reshape(3, 8) / 10).to(torch.float16)
    smooth = torch.tensor([[1.0] * 8, [2.0] * 8], dtype=torch.float16)
    group_index = torch.tensor([1, 3], dtype=torch.int32)
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(x, smooth_scales=smooth, group_index=group_index)
    assert y.tolist() == [
        [-128, -92, -55, -19, 18, 54, 91, 127],
        [-128, -92, -55, -19, 18, 54, 91, 127],
        [-128, -91, -55, -19, 18, 54, 90, 127],
    ]
    torch.testing.assert_close(scale, torch.tensor([0.00274586, 0.00549173, 0.00549939]), rtol=2e-6, atol=0)
    torch.testing.assert_close(offset, torch.tensor([-128.0, -419.27612, -709.74097]), rtol=1e-7, atol=0)


def test_output_shapes():
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(torch.randn(2, 4, 6).half())
    assert (y.shape, y.dtype, scale.shape, offset.shape) == ((2, 4, 6), torch.int8, (2, 4), (2, 4))
    assert scale.dtype == offset.dtype == torch.float32
    y, scale = npuquant.npu_dynamic_quant(torch.randn(3, 8).bfloat16(), dst_type=torch.quint4x2)
    assert (y.shape, y.dtype, scale.shape) == ((3, 1), torch.int32, (3,))
    assert all(t.is_contiguous() for t in (y, scale))


@pytest.mark.parametrize("code", [None, torch.int8, 1])
def test_dst_type_int8_spellings(code):
    x = torch.tensor(ASYM_X, dtype=torch.float16)
    assert (
        npuquant.npu_dynamic_quant_asymmetric(x, dst_type=code)[0].tolist()
        == [[-128, -92, -55, -19, 18, 54, 91, 127]] * 2
    )


@pytest.mark.parametrize("code", [torch.quint4x2, 16, 285])
def test_dst_type_int4_spellings(code):
    x = torch.tensor(ASYM_X, dtype=torch.float16)
    assert npuquant.npu_dynamic_quant_asymmetric(x, dst_type=code)[0].tolist() == [[1966206120]] * 2


# ---------------------------------------------------------------- smoothing, MoE, int4 vs numpy


@pytest.mark.parametrize("asym", [True, False])
@pytest.mark.parametrize("int4", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_smooth_against_numpy(asym, int4, dtype):
    x = (torch.randn(3, 5, 16) * 4).to(dtype)
    smooth = (torch.rand(16) * 2).to(dtype)
    dst = torch.quint4x2 if int4 else None
    out = run(x, asym, smooth_scales=smooth, dst_type=dst)
    assert_matches_np(out, np_dynamic_quant(x.float().numpy(), smooth.float().numpy(), None, int4, asym))


@pytest.mark.parametrize("asym", [True, False])
@pytest.mark.parametrize("int4", [False, True])
@pytest.mark.parametrize("groups", [[3, 3, 7, 10], [0, 0, 10], [10], [0, 4, 4, 4, 10, 10]])
def test_moe_with_empty_groups_against_numpy(asym, int4, groups):
    x = (torch.randn(2, 5, 24) * 3).half()  # 10 rows after flattening
    smooth = (torch.rand(len(groups), 24) + 0.25).half()
    gi = torch.tensor(groups, dtype=torch.int32)
    out = run(x, asym, smooth_scales=smooth, group_index=gi, dst_type=torch.quint4x2 if int4 else None)
    assert_matches_np(out, np_dynamic_quant(x.float().numpy(), smooth.float().numpy(), groups, int4, asym))


def test_moe_rows_use_their_expert():
    x = torch.ones(4, 8, dtype=torch.float16) * torch.arange(1, 9, dtype=torch.float16)
    smooth = torch.stack([torch.full((8,), v, dtype=torch.float16) for v in (1.0, 2.0, 4.0)])
    _, scale = npuquant.npu_dynamic_quant(x, smooth_scales=smooth, group_index=torch.tensor([1, 1, 4]).int())
    assert torch.equal(scale, torch.tensor([8.0, 32.0, 32.0, 32.0]) / 127)  # group 1 is empty


def test_int4_packing_order():
    # Row values chosen so y is [-8, -7, ..., 7] after quantization with scale 1, offset 0 (symmetric: 7/7).
    x = torch.tensor([list(range(-7, 8)) + [7]], dtype=torch.float32)
    y, scale = npuquant.npu_dynamic_quant(x, dst_type=torch.quint4x2)
    assert scale.item() == 1.0
    assert y.tolist() == [
        [int(np_pack_int4(np.arange(-7, 1))[0]), int(np_pack_int4(np.array([1, 2, 3, 4, 5, 6, 7, 7]))[0])]
    ]
    assert npuquant.unpack_int4(y).tolist() == [list(range(-7, 8)) + [7]]


@given(
    rows=st.integers(1, 6),
    h8=st.integers(1, 6),
    dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
    asym=st.booleans(),
    int4=st.booleans(),
    smooth=st.booleans(),
    mag=st.sampled_from([1e-3, 1.0, 100.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_reference_against_numpy(rows, h8, dtype, asym, int4, smooth, mag, seed):
    g = torch.Generator().manual_seed(seed)
    h = 8 * h8 + (0 if int4 else seed % 5)
    x = (torch.randn(rows, h, generator=g) * mag + torch.randn(rows, 1, generator=g) * mag).to(dtype)
    s = (torch.rand(h, generator=g) * 2).to(dtype) if smooth else None
    out = reference.dynamic_quant(x, s, None, int4, asym)
    expected = np_dynamic_quant(x.float().numpy(), None if s is None else s.float().numpy(), None, int4, asym)
    assert_matches_np(out, expected)


# ---------------------------------------------------------------- edge rows


@pytest.mark.parametrize("int4", [False, True])
def test_constant_and_zero_rows_asymmetric(int4):
    x = torch.tensor([[0.0] * 8, [1.0] * 8, [-3.5] * 8, [65504.0] * 8], dtype=torch.float16)
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(x, dst_type=torch.quint4x2 if int4 else None)
    assert torch.isfinite(scale).all() and torch.isfinite(offset).all()
    assert torch.equal(scale, torch.full((4,), 1e-12, dtype=torch.float32))  # floored (SPEC §3.4)
    dmax = 7 if int4 else 127
    values = npuquant.unpack_int4(y) if int4 else y
    assert offset[0].item() == dmax and values[0].tolist() == [dmax] * 8  # all-zero row
    assert values[1].tolist() == [0] * 8  # c = 1: offset absorbs 127, y = rint(c/scale - c/scale) = 0
    assert_matches_np((y, scale, offset), np_dynamic_quant(x.float().numpy(), int4=int4, asym=True))


@pytest.mark.parametrize("int4", [False, True])
def test_zero_and_constant_rows_symmetric(int4):
    x = torch.tensor([[0.0] * 8, [-0.0] * 8, [2.0] * 8], dtype=torch.bfloat16)
    y, scale = npuquant.npu_dynamic_quant(x, dst_type=torch.quint4x2 if int4 else None)
    assert scale[:2].tolist() == [0.0, 0.0] and not torch.signbit(scale).any()
    assert (npuquant.unpack_int4(y) if int4 else y).tolist() == [[0] * 8, [0] * 8, [7 if int4 else 127] * 8]


def test_non_finite_rows_follow_the_formula():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, nan, 2.0, 3.0], [1.0, inf, 2.0, 3.0], [1.0, -inf, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(x.half())
    assert torch.isnan(scale[0]) and torch.isnan(offset[0]) and y[0].tolist() == [0] * 4
    assert scale[1].item() == inf and torch.isnan(offset[1]) and y[1].tolist() == [0] * 4
    assert scale[2].item() == inf and offset[2].item() == 127 and y[2].tolist() == [127, 0, 127, 127]
    assert torch.isfinite(scale[3]) and y[3].tolist() == [-128, -43, 42, 127]
    # NaN results are the canonical quiet NaN, whatever the input NaN's payload.
    assert (
        scale[:1].view(torch.int32).item() == 0x7FC00000 and offset[:2].view(torch.int32).tolist() == [0x7FC00000] * 2
    )
    ys, ss = npuquant.npu_dynamic_quant(x.half())
    assert torch.isnan(ss[0]) and ss[1].item() == inf and ys[:3].abs().sum().item() == 0


def test_empty_tensors():
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(torch.empty(0, 8, dtype=torch.float16))
    assert y.shape == (0, 8) and scale.shape == offset.shape == (0,)
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(torch.empty(3, 0, dtype=torch.float16))
    assert y.shape == (3, 0) and torch.equal(scale, torch.full((3,), 1e-12))
    assert offset.tolist() == [127.0] * 3  # an empty row counts as all zeros
    y, scale = npuquant.npu_dynamic_quant(torch.empty(2, 0, 8, dtype=torch.bfloat16), dst_type=torch.quint4x2)
    assert y.shape == (2, 0, 1) and scale.shape == (2, 0)
    y, scale = npuquant.npu_dynamic_quant(torch.empty(2, 0, dtype=torch.bfloat16))
    assert y.shape == (2, 0) and scale.tolist() == [0.0, 0.0]


def test_non_contiguous_input():
    base = torch.randn(6, 32).half()
    for x in (base[:, ::2], base.t(), base[1:5, 3:27], base.reshape(2, 3, 32).transpose(0, 1)):
        assert_matches_np(run(x), np_dynamic_quant(x.float().numpy()))
        assert_matches_np(run(x, False), np_dynamic_quant(x.float().numpy(), asym=False))


# ---------------------------------------------------------------- reconstruction property


@given(
    rows=st.integers(1, 8),
    h=st.integers(1, 80),
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    shift=st.sampled_from([0.0, 3.0, -50.0]),
    smooth=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_reconstruction_within_half_a_step(rows, h, dtype, shift, smooth, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, h, generator=g) * torch.rand(rows, 1, generator=g) * 10 + shift).to(dtype)
    s = (torch.rand(h, generator=g) + 0.5).to(dtype) if smooth else None
    xs = x.double() * (1.0 if s is None else s.double())
    y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(x, smooth_scales=s)
    sc, off = scale.double()[:, None], offset.double()[:, None]
    # Half a quantization step, plus the float32 rounding of xs * (1/scale) + offset (|offset| can be large).
    tol = sc * (0.5 + 4 * 2.0**-24 * (off.abs() + 256))
    assert ((y.double() - off) * sc - xs).abs().le(tol).all()
    ys, ss = npuquant.npu_dynamic_quant(x, smooth_scales=s)
    ss = ss.double()[:, None]
    assert (ys.double() * ss - xs).abs().le(ss * (0.5 + 4 * 2.0**-24 * 256)).all()


# ---------------------------------------------------------------- errors (SPEC §3.2 / §3.6)


X = torch.randn(3, 8).half()


@pytest.mark.parametrize(
    ("fn", "text"),
    [
        (npuquant.npu_dynamic_quant_asymmetric, "dtype must be torch.int8 for int8 or torch.quint4x2 for int4 when"),
        (npuquant.npu_dynamic_quant, "dtype must be torch.int8 for int8 or torch.quint4x2 for int4"),
    ],
)
@pytest.mark.parametrize("dst", [torch.float16, torch.int32, -10, 999, "int8"])
def test_bad_dst_type(fn, text, dst):
    with pytest.raises(RuntimeError, match=text):
        fn(X, dst_type=dst)


@pytest.mark.parametrize("fn", [npuquant.npu_dynamic_quant_asymmetric, npuquant.npu_dynamic_quant])
@pytest.mark.parametrize("x", [torch.randn(8).half(), torch.tensor(1.0).half()])
def test_dim_must_exceed_one(fn, x):
    with pytest.raises(RuntimeError, match="Input shape dim should be greater than 1"):
        fn(x)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32, torch.float64])
def test_x_dtype(dtype):
    with pytest.raises(RuntimeError, match="Input x must be float16, bfloat16 or float32"):
        npuquant.npu_dynamic_quant_asymmetric(torch.zeros(2, 8, dtype=dtype))


@pytest.mark.parametrize("fn", [npuquant.npu_dynamic_quant_asymmetric, npuquant.npu_dynamic_quant])
def test_int4_last_dim(fn):
    with pytest.raises(RuntimeError, match="input shape last dim must be divded by 8"):
        fn(torch.randn(3, 6).half(), dst_type=torch.quint4x2)


def _gi(*values):
    return torch.tensor(values, dtype=torch.int32)


SMOOTH = torch.ones(8).half()


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"group_index": _gi(3)}, "group_index is only supported together with smooth_scales"),
        ({"smooth_scales": torch.ones(8)}, "smooth_scales dtype must be the same as x dtype"),
        ({"smooth_scales": torch.ones(8, device="meta").half()}, "smooth_scales must be on x's device"),
        ({"smooth_scales": torch.ones(1, 8).half()}, "The shape dim of smooth_scales must be 1"),
        ({"smooth_scales": torch.ones(7).half()}, "last dim of x and smooth_scales must be equal"),
        ({"smooth_scales": torch.ones(1, 8).half(), "group_index": _gi(3).long()}, "group_index dtype must be int32"),
        ({"smooth_scales": torch.ones(1, 8).half(), "group_index": _gi(3).reshape(1, 1)}, "group_index must be 1-D"),
        ({"smooth_scales": torch.ones(0, 8).half(), "group_index": _gi()}, "group_index must hold at least one"),
        (
            {"smooth_scales": torch.ones(1025, 8).half(), "group_index": torch.full((1025,), 3, dtype=torch.int32)},
            "The value of groupNum must be less than or equal to 1024",
        ),
        (
            {"smooth_scales": SMOOTH, "group_index": _gi(3)},
            "When groupNum is more than 0, the shape dim of smooth_scales must be equal to 2",
        ),
        (
            {"smooth_scales": torch.ones(2, 8).half(), "group_index": _gi(3)},
            "The value of smooth_scales first dim and group_num must be the same",
        ),
        (
            {"smooth_scales": torch.ones(2, 4).half(), "group_index": _gi(1, 3)},
            "last dim of x and smooth_scales must be equal",
        ),
        ({"smooth_scales": torch.ones(2, 8).half(), "group_index": _gi(2, 1)}, "must be non-decreasing"),
        ({"smooth_scales": torch.ones(2, 8).half(), "group_index": _gi(-1, 3)}, "within \\[0, 3\\]"),
        ({"smooth_scales": torch.ones(2, 8).half(), "group_index": _gi(1, 2)}, "end at 3"),
        ({"smooth_scales": torch.ones(2, 8).half(), "group_index": _gi(1, 4)}, "end at 3"),
    ],
)
@pytest.mark.parametrize("fn", [npuquant.npu_dynamic_quant_asymmetric, npuquant.npu_dynamic_quant])
def test_smooth_and_group_errors(fn, kwargs, text):
    with pytest.raises(RuntimeError, match=text):
        fn(X, **kwargs)


@pytest.mark.parametrize("fn", [npuquant.npu_dynamic_quant_asymmetric, npuquant.npu_dynamic_quant])
@pytest.mark.parametrize("name", ["smooth_scales", "group_index"])
def test_optional_arguments_must_be_tensors(fn, name):
    kwargs = {"smooth_scales": torch.ones(1, 8).half(), "group_index": _gi(3)}
    kwargs[name] = [1.0] * 8
    message = f"{fn.__name__}\\(\\): argument '{name}' must be a torch.Tensor or None, but got list"
    with pytest.raises(TypeError, match=message):
        fn(X, **kwargs)


def test_errors_on_reference_path_too():
    with _native.force_reference(), pytest.raises(RuntimeError, match="end at 3"):
        npuquant.npu_dynamic_quant(X, smooth_scales=torch.ones(2, 8).half(), group_index=_gi(1, 2))


def test_reference_path_matches_dispatch():
    x, s, gi = torch.randn(5, 16).bfloat16(), torch.rand(2, 16).bfloat16(), _gi(2, 5)
    with _native.force_reference():
        expected = npuquant.npu_dynamic_quant_asymmetric(x, smooth_scales=s, group_index=gi, dst_type=torch.quint4x2)
    got = npuquant.npu_dynamic_quant_asymmetric(x, smooth_scales=s, group_index=gi, dst_type=torch.quint4x2)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


# ---------------------------------------------------------------- torch.compile / opcheck


@pytest.mark.parametrize("dynamic", [True, False])
def test_compile_fullgraph(dynamic):
    def fn(x, s, gi):
        y, scale, offset = npuquant.npu_dynamic_quant_asymmetric(x, smooth_scales=s, group_index=gi)
        y4, scale4 = npuquant.npu_dynamic_quant(x, dst_type=torch.quint4x2)
        return y, scale, offset, y4, scale4

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for rows, h in ((4, 16), (6, 24), (9, 40)):
        x, s, gi = torch.randn(rows, h).half(), torch.rand(2, h).half(), _gi(1, rows)
        for got, want in zip(compiled(x, s, gi), fn(x, s, gi)):
            assert torch.equal(got, want) and got.shape == want.shape


def test_compile_inductor():
    def fn(x, s):
        return npuquant.npu_dynamic_quant(x * 2, smooth_scales=s)

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for rows in (3, 7):
        x, s = torch.randn(2, rows, 32).bfloat16(), torch.rand(32).bfloat16()
        assert all(torch.equal(a, b) for a, b in zip(compiled(x, s), fn(x, s)))


def test_compile_reports_validation_errors():
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x: npuquant.npu_dynamic_quant_asymmetric(x, dst_type=torch.quint4x2), fullgraph=True, backend="aot_eager"
    )
    with pytest.raises(Exception, match="input shape last dim must be divded by 8"):
        compiled(torch.randn(3, 6).half())


OPCHECK_CASES = [  # (x, smooth_scales, group_index, int4)
    (torch.randn(4, 16).half(), None, None, False),
    (torch.randn(2, 3, 16).bfloat16(), torch.rand(16).bfloat16(), None, True),
    (torch.randn(6, 8).half(), torch.rand(3, 8).half(), _gi(2, 2, 6), False),
    (torch.randn(8, 5).float().t(), None, None, True),
    (torch.empty(0, 8).half(), torch.rand(8).half(), None, True),
]


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=["plain", "smooth-int4", "moe", "strided-f32-int4", "empty"])
@pytest.mark.parametrize("asymmetric", [True, False], ids=["asymmetric", "symmetric"])
def test_opcheck(asymmetric, case):
    x, smooth, group_index, int4 = case
    torch.library.opcheck(torch.ops.npuquant.dynamic_quant.default, (x, smooth, group_index, asymmetric, int4))


@pytest.mark.parametrize("asymmetric", [True, False])
@pytest.mark.parametrize("dst", [None, torch.quint4x2])
def test_public_ops_return_the_operator_results(asymmetric, dst):
    x, s, gi = torch.randn(2, 3, 16).half(), torch.rand(2, 16).half(), _gi(4, 6)
    got = run(x, asymmetric, smooth_scales=s, group_index=gi, dst_type=dst)
    y, scale, offset = torch.ops.npuquant.dynamic_quant(x, s, gi, asymmetric, dst is not None)
    assert torch.equal(got[0], y) and torch.equal(got[1], scale)
    if asymmetric:
        assert torch.equal(got[2], offset)
    else:  # the operator's symmetric offset is empty; the public op returns (y, scale) only
        assert got[2] is None and offset.shape == (0,)
