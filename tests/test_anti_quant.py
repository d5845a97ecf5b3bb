"""npu_anti_quant (SPEC §1): examples, every error rule, layouts, torch.compile, opcheck,
and a property test against an independent numpy formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from npuquant import _native
from npuquant.ops import anti_quant as aq


def np_unpack_int4(words: np.ndarray) -> np.ndarray:
    """Independent unpack: little-endian bytes, low nibble first, two's complement."""
    raw = words.astype("<i4").reshape(-1).view(np.uint8)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(-1).astype(np.int16)
    nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)
    return nibbles.reshape(*words.shape[:-1], words.shape[-1] * 8)


def np_to_bf16_bits(f32: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round half to even, NaN -> 0x7FC0."""
    u = f32.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f32), np.uint16(0x7FC0), rounded)


def np_anti_quant(x, scale, offset, dst):
    values = np_unpack_int4(x) if x.dtype == np.int32 else x
    xf = values.astype(np.float32)
    if offset is not None:
        xf = (xf + offset.astype(np.float32)).astype(np.float32)
    out = (xf * scale.astype(np.float32)).astype(np.float32)
    with np.errstate(over="ignore"):  # overflow to ±inf is the expected IEEE result
        return out.astype(np.float16) if dst == torch.float16 else np_to_bf16_bits(out)


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def same_bits(out: torch.Tensor, expected: np.ndarray) -> bool:
    if out.dtype == torch.bfloat16:
        return np.array_equal(out.view(torch.int16).numpy().view(np.uint16), expected)
    return np.array_equal(out.numpy(), expected, equal_nan=True)


# ---------------------------------------------------------------- worked examples


def test_seed_example():
    x = torch.tensor([1, 2, 3, 4], dtype=torch.int8)
    out = npuquant.npu_anti_quant(x, torch.tensor([2.0]), offset=torch.tensor([2.0]), dst_dtype=torch.float16)
    assert out.dtype == torch.float16
    assert out.tolist() == [6.0, 8.0, 10.0, 12.0]


def test_default_dtype_without_offset():
    out = npuquant.npu_anti_quant(torch.tensor([1, 2, 3, 4], dtype=torch.int8), torch.tensor([2.0]))
    assert out.dtype == torch.float16 and out.tolist() == [2.0, 4.0, 6.0, 8.0]


@pytest.mark.parametrize("src", [None, torch.quint4x2, 16, 285])
def test_int32_example(src):
    x = torch.tensor([[1985229328, -1985229329]], dtype=torch.int32)
    out = npuquant.npu_anti_quant(x, torch.tensor([0.5]), offset=torch.tensor([1.0]), src_dtype=src)
    assert out.shape == (1, 16) and out.dtype == torch.float16
    assert out.tolist() == [[0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 0, -0.5, -1, -1.5, -2, -2.5, -3, -3.5]]


def test_dtype_codes_and_bf16_output():
    x = torch.tensor([[-128, 127]], dtype=torch.int8)
    out = npuquant.npu_anti_quant(x, torch.tensor([0.5], dtype=torch.bfloat16), dst_dtype=15, src_dtype=1)
    assert out.dtype == torch.bfloat16 and out.tolist() == [[-64.0, 63.5]]


def test_per_channel_scale_and_offset():
    x = torch.tensor([[1, 2, 3], [-1, -2, -3]], dtype=torch.int8)
    scale = torch.tensor([1.0, 0.5, 0.25])
    offset = torch.tensor([1.0, 2.0, 3.0])
    out = npuquant.npu_anti_quant(x, scale, offset=offset)
    assert out.tolist() == [[2.0, 2.0, 1.5], [0.0, 0.0, 0.0]]


def test_rounding_is_half_to_even():
    # 2049 is exactly half way between the fp16 neighbours 2048 and 2050: RNE gives 2048.
    x = torch.tensor([1], dtype=torch.int8)
    assert npuquant.npu_anti_quant(x, torch.tensor([2049.0])).item() == 2048.0
    assert npuquant.npu_anti_quant(x, torch.tensor([2051.0])).item() == 2052.0
    # bf16: 257 is half way between 256 and 258 -> 256; 259 -> 260.
    assert npuquant.npu_anti_quant(x, torch.tensor([257.0]), dst_dtype=torch.bfloat16).item() == 256.0
    assert npuquant.npu_anti_quant(x, torch.tensor([259.0]), dst_dtype=torch.bfloat16).item() == 260.0


def test_float32_math_then_single_cast():
    # (x + offset) rounded in float32 first, then * scale: 100 + 1e-6 == 100 in float32.
    x = torch.tensor([100], dtype=torch.int8)
    out = npuquant.npu_anti_quant(x, torch.tensor([3.0]), offset=torch.tensor([1e-6]))
    assert out.item() == 300.0


def test_overflow_to_inf_and_nan_scale():
    x = torch.tensor([127, 0, -128], dtype=torch.int8)
    out = npuquant.npu_anti_quant(x, torch.tensor([1000.0]))
    assert out[0].item() == float("inf") and out[1].item() == 0 and out[2].item() == float("-inf")
    assert torch.isnan(npuquant.npu_anti_quant(x, torch.tensor([float("nan")]))).all()


# ---------------------------------------------------------------- layouts


def test_non_contiguous_inputs():
    base = torch.randint(-128, 128, (6, 10), dtype=torch.int8)
    x = base.t()[:, ::2]  # (10, 3), strided both ways
    scale = torch.rand(6)[::2]
    offset = torch.rand(6)[1::2]
    out = npuquant.npu_anti_quant(x, scale, offset=offset)
    expected = ((x.float() + offset) * scale).half()
    assert out.is_contiguous() and torch.equal(out, expected)


def test_non_contiguous_int32():
    words = torch.randint(-(2**31), 2**31 - 1, (4, 6), dtype=torch.int32)
    x = words.t()  # (6, 4) -> (6, 32)
    out = npuquant.npu_anti_quant(x, torch.tensor([0.25]))
    assert torch.equal(out, (npuquant.unpack_int4(x.contiguous()).float() * 0.25).half())


def test_eight_dims():
    x = torch.randint(-128, 128, (2, 1, 2, 1, 2, 1, 2, 3), dtype=torch.int8)
    out = npuquant.npu_anti_quant(x, torch.tensor([0.5, 1.0, 2.0]))
    assert out.shape == x.shape
    assert torch.equal(out, (x.float() * torch.tensor([0.5, 1.0, 2.0])).half())


def test_zero_dim_int8():
    out = npuquant.npu_anti_quant(torch.tensor(-3, dtype=torch.int8), torch.tensor([2.0]))
    assert out.shape == () and out.item() == -6.0


@pytest.mark.parametrize(
    "x",
    [torch.empty(0, 4, dtype=torch.int8), torch.empty(3, 0, dtype=torch.int8), torch.empty(2, 0, dtype=torch.int32)],
)
def test_empty(x):
    out = npuquant.npu_anti_quant(x, torch.tensor([1.0]))
    expected_shape = (*x.shape[:-1], x.shape[-1] * (8 if x.dtype == torch.int32 else 1))
    assert out.shape == expected_shape and out.dtype == torch.float16


def test_empty_scale_allowed_only_for_empty_output():
    out = npuquant.npu_anti_quant(torch.empty(3, 0, dtype=torch.int8), torch.empty(0))
    assert out.shape == (3, 0)
    with pytest.raises(RuntimeError, match=r"must be same as scale and offset\(0\)"):
        npuquant.npu_anti_quant(torch.ones(3, 2, dtype=torch.int8), torch.empty(0))


def test_bf16_scale_and_offset():
    x = torch.randint(-128, 128, (5, 7), dtype=torch.int8)
    scale = torch.rand(7).to(torch.bfloat16)
    offset = (torch.randn(7) * 4).to(torch.bfloat16)
    out = npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.bfloat16)
    assert torch.equal(out, ((x.float() + offset.float()) * scale.float()).bfloat16())


# ---------------------------------------------------------------- errors (SPEC §1.5)

I8 = torch.tensor([1, 2], dtype=torch.int8)
ONE = torch.tensor([1.0])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: npuquant.npu_anti_quant(I8, ONE, src_dtype=torch.quint4x2), "x datatype is Int8, src_dtype must be same to x"),
        (
            lambda: npuquant.npu_anti_quant(torch.ones(2, dtype=torch.int32), ONE, src_dtype=torch.int8),
            "x datatype is Int32, src_dtype must be Int4",
        ),
        (lambda: npuquant.npu_anti_quant(torch.ones(2, dtype=torch.float16), ONE), "Input x must be Int8 or Int32"),
        (lambda: npuquant.npu_anti_quant(torch.ones(2, dtype=torch.uint8), ONE), "Input x must be Int8 or Int32"),
        (lambda: npuquant.npu_anti_quant(I8, ONE, dst_dtype=-10), "Input dst_type must be valid, but got UNKNOWN_SCALAR"),
        (lambda: npuquant.npu_anti_quant(I8, ONE, dst_dtype=9999), "Input dst_type must be valid, but got UNKNOWN_SCALAR"),
        (lambda: npuquant.npu_anti_quant(I8, ONE, dst_dtype=torch.float32), "dst_dtype must be float16 or bfloat16"),
        (lambda: npuquant.npu_anti_quant(I8, ONE, dst_dtype=6), "dst_dtype must be float16 or bfloat16"),
        (
            lambda: npuquant.npu_anti_quant(torch.tensor(5, dtype=torch.int32), ONE),
            "No supported for x is scalar when x dtype is int32",
        ),
        (lambda: npuquant.npu_anti_quant(I8, ONE.half()), "scale dtype must be float32 or bfloat16"),
        (
            lambda: npuquant.npu_anti_quant(I8, ONE, offset=ONE.bfloat16()),
            "offset dtype must be the same as scale dtype",
        ),
        (lambda: npuquant.npu_anti_quant(I8, torch.ones(1, 2)), "scale dim num must be 1. scale:2"),
        (lambda: npuquant.npu_anti_quant(I8, torch.tensor(1.0)), "scale dim num must be 1. scale:0"),
        (lambda: npuquant.npu_anti_quant(I8, ONE, offset=torch.ones(1, 1)), "offset dim num must be 1. offset:2"),
        (
            lambda: npuquant.npu_anti_quant(I8, torch.ones(2), offset=ONE),
            "offset shape must be the same as scale shape",
        ),
        (lambda: npuquant.npu_anti_quant(I8, torch.ones(3)), r"the last dim size(2) of out(y) must be same as scale and offset(3)."),
        (
            lambda: npuquant.npu_anti_quant(torch.ones(1, 2, dtype=torch.int32), torch.ones(2)),
            r"the last dim size(16) of out(y) must be same as scale and offset(2).",
        ),
        (lambda: npuquant.npu_anti_quant(torch.ones([1] * 9, dtype=torch.int8), ONE), "x dim num must be no more than 8"),
        (lambda: npuquant.npu_anti_quant(I8, ONE, dst_dtype="float16"), "Input dst_type must be valid"),
    ],
)
def test_errors(call, message):
    with pytest.raises(RuntimeError) as info:
        call()
    assert message in str(info.value)


def test_error_check_order_x_dtype_first():
    # Several rules broken at once: the x dtype rule is reported (torch_npu's order).
    with pytest.raises(RuntimeError, match="Input x must be Int8 or Int32"):
        npuquant.npu_anti_quant(torch.ones(2), torch.ones(1, 2).half(), dst_dtype=torch.float32)


@pytest.mark.parametrize("bad", [None, 3, [1, 2], np.ones(2, dtype=np.int8)], ids=["None", "int", "list", "ndarray"])
def test_non_tensor_arguments_are_type_errors(bad):
    with pytest.raises(TypeError, match="npu_anti_quant\\(\\): argument 'x' must be a torch.Tensor"):
        npuquant.npu_anti_quant(bad, ONE)
    with pytest.raises(TypeError, match="npu_anti_quant\\(\\): argument 'scale' must be a torch.Tensor"):
        npuquant.npu_anti_quant(I8, bad)
    if bad is not None:
        with pytest.raises(TypeError, match="npu_anti_quant\\(\\): argument 'offset' must be a torch.Tensor"):
            npuquant.npu_anti_quant(I8, ONE, offset=bad)


# ---------------------------------------------------------------- compile


@pytest.mark.parametrize("dynamic", [True, False])
def test_compile_fullgraph(dynamic):
    def fn(x, scale, offset):
        return npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.bfloat16) * 2

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for rows in (3, 5):
        x = torch.randint(-128, 128, (rows, 8), dtype=torch.int8)
        s, o = torch.rand(8), torch.rand(8)
        assert torch.equal(compiled(x, s, o), fn(x, s, o))


def test_compile_inductor_int4():
    def fn(x, scale):
        return npuquant.npu_anti_quant(x, scale, src_dtype=torch.quint4x2).float().sum(-1)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    x = torch.randint(-(2**31), 2**31 - 1, (4, 2), dtype=torch.int32)
    s = torch.rand(16)
    assert torch.equal(compiled(x, s), fn(x, s))


def test_compile_reports_validation_errors():
    compiled = torch.compile(lambda x, s: npuquant.npu_anti_quant(x, s), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="scale dim num must be 1"):
        compiled(I8, torch.ones(1, 1))


# ---------------------------------------------------------------- property test


@st.composite
def anti_quant_cases(draw):
    packed = draw(st.booleans())
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim))
    if packed:
        x = torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32)
    else:
        x = torch.randint(-128, 128, shape, dtype=torch.int8)
    if ndim >= 2 and draw(st.booleans()):
        x = x.transpose(0, -1)  # non-contiguous
    out_last = x.shape[-1] * (8 if packed else 1)
    n = draw(st.sampled_from([1, out_last])) if out_last else 1
    sdtype = draw(st.sampled_from([torch.float32, torch.bfloat16]))
    magnitude = draw(st.sampled_from([1e-3, 1.0, 300.0]))
    scale = (torch.randn(2 * n) * magnitude).to(sdtype)[::2]  # strided 1-D scale
    offset = (torch.randn(n) * 8).to(sdtype) if draw(st.booleans()) else None
    dst = draw(st.sampled_from([torch.float16, torch.bfloat16]))
    return x, scale, offset, dst


@given(anti_quant_cases())
def test_property_against_numpy(case):
    x, scale, offset, dst = case
    out = npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=dst)
    expected = np_anti_quant(x.numpy(), as_np(scale), None if offset is None else as_np(offset), dst)
    assert out.shape == expected.shape
    assert same_bits(out, expected)


def test_reference_path_matches_public_op():
    x = torch.randint(-128, 128, (7, 9), dtype=torch.int8)
    s, o = torch.rand(9), torch.rand(9)
    with _native.force_reference():
        expected = npuquant.npu_anti_quant(x, s, offset=o)
    assert torch.equal(expected, npuquant.npu_anti_quant(x, s, offset=o))


@pytest.mark.parametrize("force_reference", [False, True], ids=["native", "reference"])
def test_sqrt_mode_squares_scale(force_reference):
    # sqrt mode lives in ops.anti_quant.anti_quant (the aclnn front-end's entry), not in the operator.
    x = torch.tensor([3], dtype=torch.int8)
    with _native.force_reference(force_reference):
        assert aq.anti_quant(x, torch.tensor([2.0]), None, torch.float16, sqrt_mode=True).item() == 12.0
        assert aq.anti_quant(x, torch.tensor([2.0]), torch.tensor([1.0]), torch.float32, True).item() == 16.0
        assert aq.anti_quant(x, torch.tensor([2.0]), None, torch.float16).item() == 6.0  # off by default
        # the square is taken in float32 before the multiply, also for a bfloat16 scale
        s = torch.tensor([1.0 + 2.0**-7], dtype=torch.bfloat16)
        out = aq.anti_quant(torch.tensor([1], dtype=torch.int8), s, None, torch.float32, sqrt_mode=True)
        assert out.item() == (1.0 + 2.0**-7) ** 2
