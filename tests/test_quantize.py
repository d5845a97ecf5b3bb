"""npu_quantize (torch_npu docs; SPEC §2): doc examples, the OP-TEST goldens, both modes, int4
packing, saturation and special values, every error rule, torch.compile and opcheck; property
tests against an independent numpy formula."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant

RANGES = {torch.int8: (-128, 127), torch.uint8: (0, 255), torch.int32: (-(2**31), 2**31 - 1)}


def np_pack_int4(values: np.ndarray) -> np.ndarray:
    groups = (values.reshape(*values.shape[:-1], -1, 8).astype(np.int64) & 0xF) << (4 * np.arange(8))
    words = groups.sum(-1)
    return np.where(words >= 2**31, words - 2**32, words).astype(np.int32)


def np_quantize(x, scales, zero_points, div_mode, lo, hi, shape):
    """Doc formula in float32, RNE, NaN -> 0, saturate; scales/zero_points reshaped to ``shape``."""
    v = x.float().numpy()
    s = scales.float().numpy().reshape(shape)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = (v / s if div_mode else v * s).astype(np.float32)
        if zero_points is not None:
            v = (v + zero_points.float().numpy().reshape(shape)).astype(np.float32)
    v = np.where(np.isnan(v), np.float32(0), v)
    return np.clip(np.rint(v).astype(np.float64), lo, hi)


# ---------------------------------------------------------------- doc examples and goldens


def test_doc_example_310p():
    x = torch.tensor(
        [
            [
                -7.7834e-01,
                -1.0473e00,
                -1.1155e00,
                1.2233e00,
                -1.2271e00,
                -2.5612e00,
                -1.8274e-01,
                2.8293e00,
                1.9029e-01,
                -1.9333e00,
                -4.9270e-01,
                -1.0650e00,
            ],
            [
                -8.9416e-01,
                3.1869e-02,
                -5.8144e-01,
                -4.9477e-01,
                9.7323e-02,
                -3.8681e-01,
                2.1969e-03,
                -6.3244e-01,
                7.1591e-01,
                -1.8587e-01,
                -1.3381e00,
                -2.6253e-01,
            ],
        ]
    )
    out = npuquant.npu_quantize(x, torch.tensor([3.0] * 12), None, torch.qint8, -1, False)
    assert out.dtype == torch.int8
    assert out.tolist() == [
        [-2, -3, -3, 4, -4, -8, -1, 8, 1, -6, -1, -3],
        [-3, 0, -2, -1, 0, -1, 0, -2, 2, -1, -4, -1],
    ]


def test_doc_example_bf16_small_values_round_to_zero():
    x = torch.tensor(
        [[[0.9609, 1.3281, -0.6172, 0.5469, -1.1797, -1.1719, -0.7422, 0.9727, -0.9062, -0.0815, -0.8047, 1.0703]]]
    ).bfloat16()
    out = npuquant.npu_quantize(x, torch.tensor([0.1] * 12).bfloat16(), None, torch.qint8, -1, False)
    assert out.tolist() == [[[0] * 12]]


@pytest.mark.parametrize(
    "x_shape, s_shape, axis",
    [((16, 128), (128,), 1), ((16, 128), (16, 1), -2), ((16, 128), (1,), -1), ((2, 16, 128), (1, 16, 1), -2)],
)
def test_op_test_ascend_quant_v2_golden(x_shape, s_shape, axis):
    """OP-TEST cpu_op_exec_ascend_quant_v2: float32 x * scale + zp, np.round, clip to int8."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, x_shape).astype(np.float16)
    s = rng.uniform(-1, 1, s_shape).astype(np.float16)
    zp = rng.uniform(-1, 1, s_shape).astype(np.float16)
    golden = np.clip(np.round(x.astype(np.float32) * s.astype(np.float32) + zp.astype(np.float32)), -128, 127)
    out = npuquant.npu_quantize(
        torch.from_numpy(x), torch.from_numpy(s), torch.from_numpy(zp), torch.qint8, axis, div_mode=False
    )
    assert np.array_equal(out.numpy(), golden.astype(np.int8))


@pytest.mark.parametrize("dtype", [torch.qint8, torch.quint8, torch.qint32])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_div_mode_matches_torch_quantize_per_channel_off_ties(dtype, axis):
    """OP-TEST's golden is torch.quantize_per_channel; away from exact ties the results agree."""
    x = torch.randn(6, 5) * 3
    size = x.shape[axis]
    scales = torch.rand(size) * 0.1 + 0.01
    zp = torch.randint(-20, 20, (size,), dtype=torch.int32) if dtype != torch.quint8 else torch.randint(0, 50, (size,))
    out = npuquant.npu_quantize(x, scales, zp.int(), dtype, axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized dtypes are deprecated in torch
        golden = torch.quantize_per_channel(x, scales.double(), zp.long(), axis % 2, dtype).int_repr()
    assert out.dtype == golden.dtype
    assert (out.long() - golden.long()).abs().max() <= 1
    assert (out == golden).float().mean() > 0.95


def test_div_mode_tie_adds_zero_point_before_rounding():
    # Doc formula round(x / s + zp): 2.5 + 1 = 3.5 -> 4 (torch.quantize_per_channel would give round(2.5) + 1 = 3).
    out = npuquant.npu_quantize(
        torch.tensor([[2.5]]), torch.tensor([1.0]), torch.tensor([1], dtype=torch.int32), torch.qint8, 1
    )
    assert out.item() == 4


# ---------------------------------------------------------------- semantics


@pytest.mark.parametrize(
    "dtype, expected_dtype",
    [
        (torch.qint8, torch.int8),
        (torch.int8, torch.int8),
        (torch.quint8, torch.uint8),
        (torch.uint8, torch.uint8),
        (torch.qint32, torch.int32),
        (torch.int32, torch.int32),
        (12, torch.int8),
        (13, torch.uint8),
        (14, torch.int32),
    ],
)
def test_div_mode_dtypes_and_saturation(dtype, expected_dtype):
    x = torch.tensor([[-1e12, -300.0, -2.5, -0.5, 0.5, 1.5, 254.6, 1e12, float("nan"), float("inf")]])
    out = npuquant.npu_quantize(x, torch.tensor([1.0]), None, dtype, -1)
    lo, hi = RANGES[expected_dtype]
    assert out.dtype == expected_dtype
    expected = np.clip(np.nan_to_num(np.rint(x.numpy()), nan=0.0, posinf=np.inf).astype(np.float64), lo, hi)
    assert np.array_equal(out.numpy().astype(np.float64), expected)


@pytest.mark.parametrize("zp_dtype", [torch.int8, torch.uint8, torch.int32, torch.bfloat16])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_div_mode_input_dtypes(x_dtype, scale_dtype, zp_dtype):
    x = (torch.randn(3, 4, 5) * 4).to(x_dtype)
    scales = (torch.rand(4) + 0.05).to(scale_dtype)
    zp = torch.randint(0, 20, (4,)).to(zp_dtype)
    out = npuquant.npu_quantize(x, scales, zp, torch.qint8, 1)
    assert np.array_equal(out.numpy(), np_quantize(x, scales, zp, True, -128, 127, (1, 4, 1)).astype(np.int8))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mul_mode_input_dtypes(x_dtype):
    x = (torch.randn(3, 4, 16) * 4).to(x_dtype)
    scales, zp = (torch.rand(16) * 9).to(x_dtype), (torch.randn(16) * 3).to(x_dtype)
    out = npuquant.npu_quantize(x, scales, zp, torch.int8, 2, False)
    assert np.array_equal(out.numpy(), np_quantize(x, scales, zp, False, -128, 127, (1, 1, 16)).astype(np.int8))


def test_mul_mode_quint4x2_packs():
    x = torch.arange(-10, 14, dtype=torch.float32).reshape(1, 3, 8)  # saturates to [-8, 7]
    out = npuquant.npu_quantize(x, torch.tensor([1.0]), None, torch.quint4x2, -1, False)
    assert out.dtype == torch.int32 and out.shape == (1, 3, 1)
    assert torch.equal(npuquant.unpack_int4(out), x.clamp(-8, 7).to(torch.int8))
    out = npuquant.npu_quantize(x, torch.tensor([0.5]), torch.tensor([0.25]), 16, 1, False)
    expected = np_pack_int4(np_quantize(x, torch.tensor([0.5]), torch.tensor([0.25]), False, -8, 7, (1,)))
    assert np.array_equal(out.numpy(), expected)


@pytest.mark.parametrize("axis", [-1, 0, 1, 3])
def test_mul_mode_axis_above_minus_2_means_last(axis):
    x = torch.randn(2, 3, 6, 8)
    scales = torch.rand(8) + 0.5
    out = npuquant.npu_quantize(x, scales, None, torch.qint8, axis, False)
    assert np.array_equal(out.numpy(), np_quantize(x, scales, None, False, -128, 127, (8,)).astype(np.int8))


def test_mul_mode_axis_minus_2():
    x = torch.randn(2, 6, 8) * 10
    scales, zp = torch.rand(6) + 0.5, torch.randn(6)
    out = npuquant.npu_quantize(x, scales, zp, torch.qint8, -2, False)
    assert np.array_equal(out.numpy(), np_quantize(x, scales, zp, False, -128, 127, (6, 1)).astype(np.int8))


def test_non_contiguous_and_empty():
    x = (torch.randn(8, 10) * 50)[::2, 1::3]
    scales = torch.rand(9)[::3] + 0.1
    out = npuquant.npu_quantize(x, scales, None, torch.qint8, -1, False)
    assert out.is_contiguous()
    assert np.array_equal(out.numpy(), np_quantize(x, scales, None, False, -128, 127, (3,)).astype(np.int8))
    out = npuquant.npu_quantize(x.t(), scales, None, torch.quint8, 0)
    assert np.array_equal(out.numpy(), np_quantize(x.t(), scales, None, True, 0, 255, (3, 1)).astype(np.uint8))
    empty = npuquant.npu_quantize(torch.empty(0, 8), torch.tensor([1.0]), None, torch.quint4x2, -1, False)
    assert empty.shape == (0, 1) and empty.dtype == torch.int32
    assert npuquant.npu_quantize(torch.empty(0, 3), torch.ones(3), None, torch.qint8, 1).shape == (0, 3)


def test_special_values_mul_mode():
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 0.5, -0.5, 1.5, 126.5, 127.5, -128.5, 1e30]])
    out = npuquant.npu_quantize(x, torch.tensor([1.0]), None, torch.qint8, -1, False)
    assert out.tolist() == [[0, 127, -128, 0, 0, 2, 126, 127, -128, 127]]
    out = npuquant.npu_quantize(torch.ones(1, 2), torch.tensor([0.0]), None, torch.qint8, -1)  # 1 / 0 = inf
    assert out.tolist() == [[127, 127]]


# ---------------------------------------------------------------- property tests


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    div_mode=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
    choice=st.integers(0, 100),
)
def test_property_against_numpy(shape, div_mode, seed, choice):
    gen = torch.Generator().manual_seed(seed)
    ndim = len(shape)
    x_dtype = [torch.float32, torch.float16, torch.bfloat16][choice % 3]
    x = (torch.randn(shape, generator=gen) * 200).to(x_dtype)
    if div_mode:
        axis = choice % ndim - (ndim if choice % 2 else 0)
        length = 1 if choice % 5 == 0 else shape[axis]
        scales = (torch.rand(length, generator=gen) + 0.01).to([torch.float32, torch.bfloat16][choice % 2])
        zp_dtype = [None, torch.int8, torch.uint8, torch.int32, torch.bfloat16][choice % 5]
        zp = None if zp_dtype is None else torch.randint(0, 100, (length,), generator=gen).to(zp_dtype)
        dtype = [torch.qint8, torch.quint8, torch.qint32][choice % 3]
        view = [1] * ndim
        view[axis] = length
        lo, hi = RANGES[{torch.qint8: torch.int8, torch.quint8: torch.uint8, torch.qint32: torch.int32}[dtype]]
    else:
        axis = -2 if ndim >= 2 and choice % 2 else choice % ndim
        q = ndim - 2 if axis == -2 else ndim - 1
        length = 1 if choice % 7 == 0 else shape[q]
        view = [1] * ndim
        view[q] = length
        s_shape = view if choice % 3 == 0 else [length]
        scales = (torch.randn(s_shape, generator=gen)).to(x_dtype)
        zp = None if choice % 4 == 0 else (torch.randn(s_shape, generator=gen) * 5).to(x_dtype)
        dtype, lo, hi = torch.qint8, -128, 127
    out = npuquant.npu_quantize(x, scales, zp, dtype, axis, div_mode)
    expected = np_quantize(x, scales, zp, div_mode, lo, hi, view)
    assert np.array_equal(out.numpy().astype(np.float64), expected)


# ---------------------------------------------------------------- errors


def _x(*shape, dtype=torch.float32):
    return torch.zeros(shape, dtype=dtype)


ERRORS = [
    (
        (_x(2, 3, dtype=torch.int8), torch.ones(3), None, torch.qint8, 1, True),
        "input's type supported for float32, float16 and bfloat16",
    ),
    (
        (_x(2, 3), torch.ones(3), None, torch.float16, 1, True),
        "dtype must be torch.qint8, torch.quint8 or torch.qint32 when div_mode is True",
    ),
    (
        (_x(2, 3), torch.ones(3), None, torch.quint4x2, 1, True),
        "dtype must be torch.qint8, torch.quint8 or torch.qint32 when div_mode is True",
    ),
    ((torch.tensor(1.0), torch.ones(1), None, torch.qint8, 0, True), "input must have at least 1 dimension"),
    ((_x(2, 3), torch.ones(3), None, torch.qint8, 2, True), "Unexpected value of axis."),
    ((_x(2, 3), torch.ones(3), None, torch.qint8, -3, True), "Unexpected value of axis."),
    ((_x(2, 3), torch.ones(1, 3), None, torch.qint8, 1, True), "Scales' dim should be equal to 1."),
    (
        (_x(2, 3), torch.ones(3, dtype=torch.float16), None, torch.qint8, 1, True),
        "scales' type supported for float32 and bfloat16 when div_mode is True",
    ),
    (
        (_x(2, 3), torch.ones(3), torch.ones(1, 3, dtype=torch.int32), torch.qint8, 1, True),
        "Zero points' dim should be equal to 1.",
    ),
    (
        (_x(2, 3), torch.ones(3), torch.ones(2, dtype=torch.int32), torch.qint8, 1, True),
        "Scales' size should be equal to zero points' size.",
    ),
    (
        (_x(2, 3), torch.ones(3), torch.ones(3, dtype=torch.float16), torch.qint8, 1, True),
        "zero_points' type supported for int8, uint8, int32 and bfloat16 when div_mode is True",
    ),
    ((_x(2, 3), torch.ones(2), None, torch.qint8, 1, True), "length of scales must equal to the specified dimension."),
    ((_x(2, 8), torch.ones(8), None, torch.quint8, -1, False), "dtype must be Int8 or Int4"),
    ((_x(2, 8), torch.ones(8), None, torch.qint32, -1, False), "dtype must be Int8 or Int4"),
    ((_x(2, 8), torch.ones(8), None, torch.qint8, -3, False), "axis must be in [-2, 1]"),
    ((_x(2, 8), torch.ones(8), None, torch.qint8, 2, False), "axis must be in [-2, 1]"),
    ((_x(8), torch.ones(8), None, torch.qint8, -2, False), "-2 needs a 2-D input"),
    (
        (_x(2, 8), torch.ones(8, dtype=torch.float16), None, torch.qint8, -1, False),
        "scales' type must be the same as input's type when div_mode is False",
    ),
    (
        (_x(2, 8), torch.ones(8), torch.ones(1), torch.qint8, -1, False),
        "zero_points' type and shape must be the same as scales'",
    ),
    (
        (_x(2, 8), torch.ones(8), torch.ones(8, dtype=torch.float16), torch.qint8, -1, False),
        "zero_points' type and shape must be the same as scales'",
    ),
    ((_x(2, 8), torch.ones(4), None, torch.qint8, -1, False), "the length of 1-D scales must be 1 or input's dim 1"),
    ((_x(2, 8), torch.ones(2, 8), None, torch.qint8, -1, False), "must have input's 2 dims, all 1 except dim 1"),
    ((_x(2, 8), torch.ones(1, 1, 8), None, torch.qint8, -1, False), "must have input's 2 dims, all 1 except dim 1"),
    ((_x(2, 6), torch.ones(6), None, torch.quint4x2, -1, False), "input shape last dim must be divded by 8"),
    (
        (_x(2, 6), torch.ones(6), None, torch.quint4x2, -1, False),
        "If dtype is quint4x2, the last dim of input must be divided by 8",
    ),
    (
        (_x(2, 3), torch.ones(3, device="meta"), None, torch.qint8, 1, True),
        "scales must be on the same device as input",
    ),
    ((_x(2, 3), torch.ones(3), None, 999, 1, True), "dtype must be a valid ScalarType"),
    ((_x(2, 3), torch.ones(3), None, None, 1, True), "dtype must be given"),
]


@pytest.mark.parametrize("args, message", ERRORS)
def test_errors(args, message):
    with pytest.raises(RuntimeError) as err:
        npuquant.npu_quantize(*args)
    assert message in str(err.value)


def test_errors_in_fake_mode_too():
    with torch._subclasses.FakeTensorMode() as mode:
        x = mode.from_tensor(torch.zeros(2, 6))
        with pytest.raises(RuntimeError, match="divded by 8"):
            npuquant.npu_quantize(x, mode.from_tensor(torch.ones(6)), None, torch.quint4x2, -1, False)


# ---------------------------------------------------------------- torch.compile / opcheck


def test_compile_fullgraph_dynamic():
    def fn(x, s, zp):
        return npuquant.npu_quantize(x, s, zp, torch.quint4x2, -1, False), npuquant.npu_quantize(x, s, None, 12, -1)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (2, 5):
        x, s, zp = torch.randn(rows, 16) * 9, torch.rand(16) + 0.2, torch.randn(16)
        for got, want in zip(compiled(x, s, zp), fn(x, s, zp)):
            assert torch.equal(got, want)


@pytest.mark.parametrize(
    "args",
    [
        (
            torch.randn(3, 4) * 50,
            torch.rand(4) + 0.1,
            torch.randint(0, 9, (4,), dtype=torch.int32),
            torch.qint8,
            1,
            True,
        ),
        (torch.randn(3, 4) * 50, torch.rand(3) + 0.1, None, torch.quint8, 0, True),
        (torch.randn(3, 16).half() * 5, torch.rand(16).half(), torch.randn(16).half(), torch.quint4x2, -1, False),
        (torch.randn(2, 6, 4).bfloat16(), torch.rand(1, 6, 1).bfloat16(), None, torch.int8, -2, False),
    ],
)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.npuquant.npu_quantize.default, args)
