"""npu_quant_matmul (SPEC §4): worked examples, FP19 emulation, saturation, exact int32 accumulation,
batch broadcasting, A4W4 layouts, every dtype combination and validation rule, torch.compile and
opcheck; property tests against an independent numpy formula written from the SPEC."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits, random_int8, random_words
from npuquant import _native
from npuquant.ops import quant_matmul as qm
from npuquant.ops.quant_matmul import reference

X1 = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=torch.int8)
X2 = torch.tensor([[1, 0], [0, 1], [1, 1]], dtype=torch.int8)  # X1 @ X2 = [[4, 5], [10, 11]]


# ---------------------------------------------------------------- independent numpy model


def np_unpack_int4(words: np.ndarray) -> np.ndarray:
    """Little-endian bytes, low nibble first, two's complement (SPEC §2)."""
    raw = np.ascontiguousarray(words.astype("<i4")).reshape(-1).view(np.uint8)
    nibbles = np.stack([raw & 0xF, raw >> 4], axis=-1).reshape(-1).astype(np.int64)
    nibbles = np.where(nibbles >= 8, nibbles - 16, nibbles)
    return nibbles.reshape(*words.shape[:-1], words.shape[-1] * 8)


def np_pack_int4(values: np.ndarray) -> np.ndarray:
    groups = (values.reshape(*values.shape[:-1], -1, 8).astype(np.int64) & 0xF) << (4 * np.arange(8))
    words = groups.sum(-1)
    return np.where(words >= 2**31, words - 2**32, words).astype(np.int32)


def np_bf16_bits(f32: np.ndarray) -> np.ndarray:
    u = f32.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(f32), np.uint16(0x7FC0), rounded)


def wrap32(a: np.ndarray) -> np.ndarray:
    return ((a.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int64)


def np_fp19(scale: np.ndarray) -> np.ndarray:
    return (scale.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def np_decode(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = (q & 0xFFFFE000).astype(np.uint32).view(np.float32)
    o9 = (q >> 37) & 0x1FF
    return scale, np.where(o9 >= 256, o9 - 512, o9).astype(np.float32)


def to_np(t: torch.Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def np_quant_matmul(x1, x2, scale, offset=None, pertoken_scale=None, bias=None, output_dtype=None):
    """What torch_npu + the device compute, re-derived from SPEC §4 in numpy (int64 matmul)."""
    out = torch.int8 if output_dtype is None else output_dtype
    a = to_np(x1).astype(np.int64)
    b = to_np(x2).astype(np.int64)
    if x1.dtype == torch.int32:
        a = np_unpack_int4(a)
        if x1.shape[-1] == x2.shape[-2]:  # x2 packed along k: (k/8, n)
            b = np.swapaxes(np_unpack_int4(np.swapaxes(b, -1, -2)), -1, -2)
        else:
            b = np_unpack_int4(b)
    acc = wrap32(np.matmul(a, b))
    bias_np = None if bias is None else to_np(bias)
    if bias is not None and bias.dtype == torch.int32:
        acc = wrap32(acc + bias_np.astype(np.int64))
    if out == torch.int32:
        return acc.astype(np.int32)
    off = None
    if scale.dtype == torch.int64:
        s, off = np_decode(scale.numpy())
    elif scale.dtype == torch.float32 and pertoken_scale is None and out in (torch.int8, torch.float16):
        s = np_fp19(scale.numpy())
        if offset is not None:
            off = np.clip(np.rint(offset.numpy()), -256, 255).astype(np.float32)
    else:
        s = to_np(scale).astype(np.float32)
    v = acc.astype(np.float32) * s
    if pertoken_scale is not None:
        v = v * pertoken_scale.numpy()[:, None]
    if bias is not None and bias.dtype != torch.int32:
        v = v + bias_np.astype(np.float32)
    if out == torch.int8:
        if off is not None:
            v = v + off
        v = np.where(np.isnan(v), np.float32(0), v)
        return np.clip(np.rint(v), -128, 127).astype(np.int8)
    if out == torch.float16:
        with np.errstate(over="ignore"):
            return v.astype(np.float16)
    return np_bf16_bits(v)


def assert_matches_numpy(result: torch.Tensor, expected: np.ndarray) -> None:
    """Bit-exact comparison; NaNs only need to be NaN (their payload is the platform's)."""
    if result.dtype == torch.bfloat16:
        got = result.contiguous().view(torch.int16).numpy().view(np.uint16)
        nan = (expected & 0x7FFF) > 0x7F80
        assert got.shape == expected.shape
        assert np.array_equal(got[~nan], expected[~nan]) and np.isnan(result.float().numpy()[nan]).all()
        return
    got = result.numpy()
    assert got.shape == expected.shape
    if got.dtype == np.float16:  # compare bits so that -0.0 and 0.0 differ
        nan = np.isnan(expected)
        assert np.array_equal(got.view(np.uint16)[~nan], expected.view(np.uint16)[~nan]) and np.isnan(got[nan]).all()
        return
    assert np.array_equal(got, expected)


def call(x1, x2, scale, **kw):
    result = npuquant.npu_quant_matmul(x1, x2, scale, **kw)
    assert result.is_contiguous()
    assert_matches_numpy(result, np_quant_matmul(x1, x2, scale, **kw))
    return result


@pytest.fixture(params=["native", "reference"])
def path(request):
    """Runs the test through the op's native CPU kernel and through the pure-torch reference."""
    if request.param == "native" and not _native.available():
        pytest.skip(f"native library not available: {_native.load_error}")
    with _native.force_reference(request.param == "reference"):
        yield request.param


# ---------------------------------------------------------------- SPEC §4.9 worked examples


@pytest.mark.parametrize("int64_scale", [False, True])
def test_example_fp16(int64_scale):
    scale = torch.tensor([0.5])
    if int64_scale:
        scale = npuquant.npu_trans_quant_param(scale)
    out = npuquant.npu_quant_matmul(X1, X2, scale, output_dtype=torch.float16)
    assert out.dtype == torch.float16 and out.tolist() == [[2.0, 2.5], [5.0, 5.5]]


@pytest.mark.parametrize("int64_scale", [False, True])
def test_example_int8_offset_round_half_even(int64_scale):
    scale, offset = torch.tensor([0.5]), torch.tensor([1.0])
    if int64_scale:
        scale = npuquant.npu_trans_quant_param(scale, offset)
    out = npuquant.npu_quant_matmul(X1, X2, scale, offset=offset)
    assert out.dtype == torch.int8 and out.tolist() == [[3, 4], [6, 6]]


def test_example_saturation():
    assert npuquant.npu_quant_matmul(X1, X2, torch.tensor([30.0])).tolist() == [[120, 127], [127, 127]]
    assert npuquant.npu_quant_matmul(X1, X2, torch.tensor([-30.0])).tolist() == [[-120, -128], [-128, -128]]
    assert npuquant.npu_quant_matmul(X1, X2, torch.tensor([0.5]), offset=torch.tensor([300.0])).tolist() == [
        [127, 127],
        [127, 127],
    ]


def test_example_int32_bias_fp16():
    out = npuquant.npu_quant_matmul(
        X1, X2, torch.tensor([0.5]), bias=torch.tensor([10, -10], dtype=torch.int32), output_dtype=torch.float16
    )
    assert out.tolist() == [[7.0, -2.5], [10.0, 0.5]]


def test_example_pertoken_bf16():
    out = npuquant.npu_quant_matmul(
        X1, X2, torch.tensor([0.5]), pertoken_scale=torch.tensor([1.0, 2.0]), output_dtype=torch.bfloat16
    )
    assert out.dtype == torch.bfloat16 and out.tolist() == [[2.0, 2.5], [10.0, 11.0]]


def test_example_int32_output_ignores_scale():
    out = npuquant.npu_quant_matmul(X1, X2, torch.tensor([0.5]), output_dtype=torch.int32)
    assert out.dtype == torch.int32 and out.tolist() == [[4, 5], [10, 11]]
    bias = torch.tensor([1, -1], dtype=torch.int32)
    out = npuquant.npu_quant_matmul(X1, X2, torch.tensor([123.0], dtype=torch.bfloat16), bias=bias, output_dtype=3)
    assert out.tolist() == [[5, 4], [11, 10]]


# ---------------------------------------------------------------- FP19 (SPEC §4.3)


def test_fp19_example_acc5_scale07():
    x1, x2 = torch.tensor([[5]], dtype=torch.int8), torch.tensor([[1]], dtype=torch.int8)
    scale = torch.tensor([0.7])
    assert npuquant.npu_quant_matmul(x1, x2, scale).item() == 3  # full precision would give rint(3.5) = 4
    assert npuquant.npu_quant_matmul(x1, x2, npuquant.npu_trans_quant_param(scale)).item() == 3
    fp16 = npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float16).item()
    assert fp16 == float(np.float16(np.float32(5 * 0.69970703125)))
    # bfloat16 output and per-token paths use the float32 scale at full precision
    bf16 = npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16).item()
    assert bf16 == 3.5
    pt = npuquant.npu_quant_matmul(x1, x2, scale, pertoken_scale=torch.tensor([1.0]), output_dtype=torch.float16)
    assert pt.item() == 3.5


def test_int64_scale_uses_encoded_offset_not_tensor():
    scale = npuquant.npu_trans_quant_param(torch.tensor([0.5]), torch.tensor([2.0]))
    out = npuquant.npu_quant_matmul(X1, X2, scale, offset=torch.tensor([-100.0]))
    assert out.tolist() == [[4, 4], [7, 8]]  # rint(acc * 0.5 + 2)
    assert npuquant.npu_quant_matmul(X1, X2, scale).tolist() == [[4, 4], [7, 8]]


def test_int64_scale_offset_ignored_for_fp16_output():
    scale = npuquant.npu_trans_quant_param(torch.tensor([0.5]), torch.tensor([2.0]))
    assert npuquant.npu_quant_matmul(X1, X2, scale, output_dtype=torch.float16).tolist() == [[2, 2.5], [5, 5.5]]


def test_float_offset_is_rounded_to_integer():
    out = npuquant.npu_quant_matmul(X1, X2, torch.tensor([0.5]), offset=torch.tensor([0.6, -1.5]))
    assert out.tolist() == [[3, 0], [6, 4]]  # offsets become 1 and -2


# ---------------------------------------------------------------- exact accumulation


@pytest.mark.parametrize("k", [1023, 1024, 1025, 2049, 4096])
def test_int32_output_exact_all_minus_128(k, path):
    x1 = torch.full((3, k), -128, dtype=torch.int8)
    x2 = torch.full((k, 2), -128, dtype=torch.int8)
    out = npuquant.npu_quant_matmul(x1, x2, torch.tensor([1.0]), output_dtype=torch.int32)
    assert out.tolist() == [[16384 * k] * 2] * 3
    x2 = torch.full((k, 2), 127, dtype=torch.int8)
    out = npuquant.npu_quant_matmul(x1, x2, torch.tensor([1.0]), output_dtype=torch.int32)
    assert out.tolist() == [[-16256 * k] * 2] * 3


def test_int32_output_large_k_beyond_65535(path):
    k = 70000  # allowed: int8 inputs with a float scale (IsValidForLargeInput)
    x1 = torch.full((1, k), -128, dtype=torch.int8)
    x2 = torch.full((k, 1), -128, dtype=torch.int8)
    assert npuquant.npu_quant_matmul(x1, x2, torch.tensor([1.0]), output_dtype=torch.int32).item() == 16384 * k


def test_int32_accumulator_wraps_like_hardware(path):
    k = 131072  # 131072 * 16384 = 2**31: one past INT32_MAX
    x1 = torch.full((1, k), -128, dtype=torch.int8)
    x2 = torch.full((k, 1), -128, dtype=torch.int8)
    assert npuquant.npu_quant_matmul(x1, x2, torch.tensor([1.0]), output_dtype=torch.int32).item() == -(2**31)
    one = torch.ones((1, 1), dtype=torch.int8)
    bias = torch.tensor([2**31 - 1], dtype=torch.int32)
    assert npuquant.npu_quant_matmul(one, one, torch.tensor([1.0]), bias=bias, output_dtype=torch.int32).item() == (
        -(2**31)
    )


def test_float_outputs_exact_at_extremes(path):
    k = 4096
    x1 = torch.full((2, k), -128, dtype=torch.int8)
    x2 = torch.full((k, 3), -128, dtype=torch.int8)
    call(x1, x2, torch.tensor([2.0**-20]), output_dtype=torch.float16)
    call(x1, x2, torch.tensor([1e-3]), output_dtype=torch.bfloat16, bias=torch.tensor([1.0, 2.0, 3.0]))
    call(x1, x2, torch.tensor([1e-6]), pertoken_scale=torch.tensor([1.0, -3.0]), output_dtype=torch.float16)


def test_exact_even_when_float32_matmul_is_reduced_precision():
    backend = torch.backends.mkldnn.matmul
    previous = backend.fp32_precision
    x1, x2 = random_int8(8, 3000), random_int8(3000, 8)
    try:
        backend.fp32_precision = "bf16"
        assert not reference._float32_matmul_is_ieee(torch.device("cpu"))
        out = reference.int_matmul(x1.unsqueeze(0), x2.unsqueeze(0))[0]  # the float64 route
    finally:
        backend.fp32_precision = previous
    assert_matches_numpy(out, np_quant_matmul(x1, x2, torch.tensor([1.0]), output_dtype=torch.int32))


# ---------------------------------------------------------------- layouts, batch, bias


def test_transposed_x2_view(path):
    w = random_int8(7, 33)  # (n, k) contiguous
    x1 = random_int8(5, 33)
    out = call(x1, w.t(), torch.rand(7), output_dtype=torch.bfloat16)
    assert out.shape == (5, 7)
    w3 = random_int8(3, 7, 33)
    out = call(random_int8(3, 5, 33), w3.transpose(-1, -2), torch.rand(1), output_dtype=torch.float16)
    assert out.shape == (3, 5, 7)


def test_other_strides_use_logical_values():
    x1 = random_int8(6, 40)[::2, ::3]  # (3, 14)
    x2 = random_int8(28, 10)[::2, 1::2]  # (14, 5)
    call(x1, x2, torch.rand(5), bias=torch.randint(-50, 50, (5,), dtype=torch.int32))


def test_doc_batch_broadcast_with_3d_bias():
    x1 = random_int8(1, 256, 768)
    x2 = random_int8(31, 768, 16)
    bias = torch.randint(-1000, 1000, (31, 1, 16), dtype=torch.int32)
    out = npuquant.npu_quant_matmul(x1, x2, torch.rand(16) / 1000, bias=bias, output_dtype=torch.float16)
    assert out.shape == (31, 256, 16) and out.dtype == torch.float16


@pytest.mark.parametrize(
    "shape1, shape2, out_batch",
    [
        ((1, 4, 9), (3, 9, 5), (3,)),
        ((3, 4, 9), (9, 5), (3,)),
        ((4, 9), (2, 3, 9, 5), (2, 3)),
        ((2, 1, 3, 4, 9), (4, 1, 9, 5), (2, 4, 3)),
        ((1, 1, 1, 1, 4, 9), (2, 1, 9, 5), (1, 1, 2, 1)),
    ],
)
def test_batch_broadcast(shape1, shape2, out_batch, path):
    x1, x2 = random_int8(*shape1), random_int8(*shape2)
    out = call(x1, x2, torch.rand(5), output_dtype=torch.bfloat16)
    assert out.shape == (*out_batch, 4, 5)
    out = call(x1, x2, torch.rand(1), offset=torch.tensor([3.0]))
    assert out.shape == (*out_batch, 4, 5)


@pytest.mark.parametrize("bias_dtype", [torch.int32, torch.bfloat16, torch.float32])
def test_3d_bias_per_batch(bias_dtype):
    x1, x2 = random_int8(3, 4, 9), random_int8(1, 9, 5)
    bias = (torch.randn(3, 1, 5) * 100).to(bias_dtype)
    call(x1, x2, torch.rand(5), bias=bias, output_dtype=torch.bfloat16)


def test_bias_1d_broadcasts_over_batches():
    x1, x2 = random_int8(2, 3, 4, 9), random_int8(9, 5)
    call(x1, x2, torch.rand(5), bias=torch.randint(-99, 99, (5,), dtype=torch.int32), output_dtype=torch.float16)


# ---------------------------------------------------------------- A4W4


def test_a4w4_spec_example_both_layouts():
    a = torch.randint(-8, 8, (2, 8), dtype=torch.int8)
    w = torch.randint(-8, 8, (8, 16), dtype=torch.int8)  # logical (k, n)
    expected = (a.int() @ w.int()).half()
    x1 = npuquant.pack_int4(a)  # (2, 1)
    along_n = npuquant.pack_int4(w)  # (8, 2)
    out = npuquant.npu_quant_matmul(x1, along_n, torch.tensor([1.0]), output_dtype=torch.float16)
    assert out.shape == (2, 16) and torch.equal(out, expected)
    along_k = npuquant.pack_int4(w.t().contiguous()).t()  # (1, 16) view of a contiguous (16, 1)
    out = npuquant.npu_quant_matmul(x1, along_k, torch.tensor([1.0]), output_dtype=torch.float16)
    assert out.shape == (2, 16) and torch.equal(out, expected)


def test_a4w4_random_against_numpy(path):
    a = torch.randint(-8, 8, (5, 160), dtype=torch.int8)
    w = torch.randint(-8, 8, (80, 160), dtype=torch.int8)  # (n, k), the OP-TEST layout
    x1, w_packed = npuquant.pack_int4(a), npuquant.pack_int4(w)  # (5, 20), (80, 20)
    out = call(x1, w_packed.t(), torch.rand(80), output_dtype=torch.float16)
    assert out.shape == (5, 80)
    bias = torch.randint(-500, 500, (80,), dtype=torch.int32)
    call(
        x1,
        npuquant.pack_int4(w.t().contiguous()),
        npuquant.npu_trans_quant_param(torch.rand(1)),
        bias=bias,
        output_dtype=torch.float16,
    )
    pertoken = torch.rand(5)
    call(x1, w_packed.t(), torch.rand(80), pertoken_scale=pertoken, output_dtype=torch.bfloat16)
    call(x1, w_packed.t(), torch.rand(80), pertoken_scale=pertoken, output_dtype=torch.float16)


def test_a4w4_extremes():
    a = torch.full((3, 64), -8, dtype=torch.int8)
    w = torch.full((64, 8), -8, dtype=torch.int8)
    out = npuquant.npu_quant_matmul(
        npuquant.pack_int4(a), npuquant.pack_int4(w), torch.tensor([1.0]), output_dtype=torch.float16
    )
    assert out.tolist() == [[4096.0] * 8] * 3


def test_a4w4_batched_x1():
    a = torch.randint(-8, 8, (2, 3, 16), dtype=torch.int8)
    w = torch.randint(-8, 8, (16, 8), dtype=torch.int8)
    out = npuquant.npu_quant_matmul(
        npuquant.pack_int4(a), npuquant.pack_int4(w), torch.tensor([1.0]), output_dtype=torch.float16
    )
    assert torch.equal(out, (a.int() @ w.int()).half())


# ---------------------------------------------------------------- dtype combinations (SPEC §4.5)


@pytest.mark.parametrize("bias_dtype", [None, torch.int32, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
def test_bf16_output_with_pertoken_and_each_bias(bias_dtype, scale_dtype, path):
    x1, x2 = random_int8(6, 50), random_int8(50, 7)
    bias = None if bias_dtype is None else (torch.randn(7) * 300).to(bias_dtype)
    scale = (torch.rand(7) / 100).to(scale_dtype)
    call(x1, x2, scale, pertoken_scale=torch.rand(6), bias=bias, output_dtype=torch.bfloat16)


@pytest.mark.parametrize("bias_dtype", [None, torch.int32, torch.float16, torch.float32])
def test_fp16_output_with_pertoken_and_each_bias(bias_dtype):
    x1, x2 = random_int8(6, 50), random_int8(50, 7)
    bias = None if bias_dtype is None else (torch.randn(7) * 300).to(bias_dtype)
    call(x1, x2, torch.rand(7) / 100, pertoken_scale=torch.rand(6), bias=bias, output_dtype=torch.float16)


@pytest.mark.parametrize("bias_dtype", [None, torch.int32, torch.bfloat16, torch.float32])
def test_bf16_output_without_pertoken(bias_dtype):
    x1, x2 = random_int8(6, 50), random_int8(50, 7)
    bias = None if bias_dtype is None else (torch.randn(7) * 300).to(bias_dtype)
    call(x1, x2, torch.rand(1) / 100, bias=bias, output_dtype=torch.bfloat16)
    call(x1, x2, (torch.rand(7) / 100).bfloat16(), bias=bias, output_dtype=15)


@pytest.mark.parametrize("scale_kind", ["float32", "int64"])
@pytest.mark.parametrize("with_offset", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_output_combinations(scale_kind, with_offset, with_bias, path):
    x1, x2 = random_int8(6, 50), random_int8(50, 7)
    scale = torch.rand(7) / 50
    offset = torch.randn(7) * 20 if with_offset else None
    if scale_kind == "int64":
        scale = npuquant.npu_trans_quant_param(scale, offset)
    bias = torch.randint(-2000, 2000, (7,), dtype=torch.int32) if with_bias else None
    call(x1, x2, scale, offset=offset, bias=bias)
    call(x1, x2, scale, offset=offset, bias=bias, output_dtype=torch.int8)


def test_output_dtype_codes():
    for code, dtype in ((1, torch.int8), (5, torch.float16), (15, torch.bfloat16), (3, torch.int32)):
        scale = torch.tensor([0.5]) if dtype != torch.int8 else torch.tensor([0.01])
        assert npuquant.npu_quant_matmul(X1, X2, scale, output_dtype=code).dtype == dtype


def test_special_values_in_epilogue(path):
    x1, x2 = random_int8(4, 16), random_int8(16, 3)
    for s in (float("nan"), float("inf"), -float("inf"), 1e30, 0.0, -0.0):
        scale = torch.tensor([s])
        call(x1, x2, scale)  # int8: NaN -> 0, ±inf saturate
        call(x1, x2, scale, output_dtype=torch.float16)  # overflow -> ±inf
        call(x1, x2, scale, output_dtype=torch.bfloat16)


def test_group_sizes_zero_is_plain():
    for groups in (None, [], [0, 0, 0], (0, 0, 0)):
        out = npuquant.npu_quant_matmul(X1, X2, torch.tensor([0.5]), output_dtype=torch.float16, group_sizes=groups)
        assert out.tolist() == [[2.0, 2.5], [5.0, 5.5]]


# ---------------------------------------------------------------- property tests


@st.composite
def quant_matmul_cases(draw):
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 9))
    variant = draw(st.sampled_from(["int8", "fp16", "bf16", "pertoken_fp16", "pertoken_bf16", "int32", "a4w4"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    extreme = draw(st.sampled_from(["random", "min", "max"]))

    def ints(shape, lo, hi):
        if extreme == "min":
            return torch.full(shape, lo, dtype=torch.int8)
        if extreme == "max":
            return torch.full(shape, hi - 1, dtype=torch.int8)
        return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int8)

    def floats(size, lo, hi):
        return torch.rand(size, generator=gen) * (hi - lo) + lo

    batch1 = tuple(draw(st.lists(st.sampled_from([1, 2, 3]), max_size=2)))
    batch2 = tuple(1 if draw(st.booleans()) else d for d in batch1)
    if draw(st.booleans()):
        batch1, batch2 = batch2, batch1
    transposed = draw(st.booleans())
    scale_len = draw(st.sampled_from([1, n]))
    kw = {}
    if variant == "a4w4":
        k8, n8 = draw(st.integers(1, 4)), draw(st.integers(1, 3))
        a, w = ints((m, 8 * k8), -8, 8), ints((8 * k8, 8 * n8), -8, 8)
        x1 = npuquant.pack_int4(a)
        x2 = npuquant.pack_int4(w.t().contiguous()).t() if transposed else npuquant.pack_int4(w)
        n = 8 * n8
        scale = floats(draw(st.sampled_from([1, n])), -0.5, 0.5)
        if draw(st.booleans()):
            kw["pertoken_scale"] = floats(m, 0, 2)
            kw["output_dtype"] = draw(st.sampled_from([torch.float16, torch.bfloat16]))
        else:
            kw["output_dtype"] = torch.float16
            if draw(st.booleans()):
                scale = npuquant.npu_trans_quant_param(scale)
            if draw(st.booleans()):
                kw["bias"] = torch.randint(-300, 300, (n,), generator=gen, dtype=torch.int32)
        return x1, x2, scale, kw
    x1 = ints((*batch1, m, k), -128, 128)
    x2 = ints((*batch2, n, k), -128, 128).transpose(-1, -2) if transposed else ints((*batch2, k, n), -128, 128)
    out_rank = max(len(batch1), len(batch2)) + 2
    bias_shape = (n,)
    if out_rank == 3 and draw(st.booleans()):
        bias_shape = (max(x1.shape[0], x2.shape[0]), 1, n)
    scale = floats(scale_len, -0.05, 0.05)
    if variant == "int8":
        if draw(st.booleans()):
            kw["offset"] = floats(draw(st.sampled_from([1, n])), -300, 300)
        if draw(st.booleans()):
            scale = npuquant.npu_trans_quant_param(scale, kw.get("offset"))
        if draw(st.booleans()):
            kw["bias"] = torch.randint(-5000, 5000, bias_shape, generator=gen, dtype=torch.int32)
    elif variant == "fp16":
        kw["output_dtype"] = torch.float16
        if draw(st.booleans()):
            scale = npuquant.npu_trans_quant_param(scale)
        if draw(st.booleans()):
            kw["bias"] = torch.randint(-5000, 5000, bias_shape, generator=gen, dtype=torch.int32)
    elif variant in ("bf16", "pertoken_bf16"):
        kw["output_dtype"] = torch.bfloat16
        scale = scale.to(draw(st.sampled_from([torch.float32, torch.bfloat16])))
        bias_dtype = draw(st.sampled_from([None, torch.int32, torch.bfloat16, torch.float32]))
        if bias_dtype is not None:
            kw["bias"] = (floats(bias_shape, -5000, 5000)).to(bias_dtype)
        if variant == "pertoken_bf16":
            kw["pertoken_scale"] = floats(m, -2, 2)
    elif variant == "pertoken_fp16":
        kw["output_dtype"] = torch.float16
        kw["pertoken_scale"] = floats(m, -2, 2)
        bias_dtype = draw(st.sampled_from([None, torch.int32, torch.float16, torch.float32]))
        if bias_dtype is not None:
            kw["bias"] = (floats(bias_shape, -5000, 5000)).to(bias_dtype)
    else:
        kw["output_dtype"] = torch.int32
        scale = scale.to(draw(st.sampled_from([torch.float32, torch.bfloat16])))
        if draw(st.booleans()):
            kw["bias"] = torch.randint(-(2**31), 2**31 - 1, bias_shape, generator=gen, dtype=torch.int32)
    return x1, x2, scale, kw


@pytest.mark.parametrize("use_reference", [False, True], ids=["op", "reference"])
@given(case=quant_matmul_cases())
def test_property_against_numpy(use_reference, case):
    x1, x2, scale, kw = case
    with _native.force_reference(use_reference):
        call(x1, x2, scale, **kw)


@given(quant_matmul_cases())
def test_property_fake_kernel_shape_and_dtype(case):
    x1, x2, scale, kw = case
    real = npuquant.npu_quant_matmul(x1, x2, scale, **kw)
    with torch._subclasses.FakeTensorMode() as mode:
        conv = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        fake = npuquant.npu_quant_matmul(mode.from_tensor(x1), mode.from_tensor(x2), mode.from_tensor(scale), **conv)
    assert fake.shape == real.shape and fake.dtype == real.dtype


def _cast(v: np.ndarray, out_dtype: torch.dtype) -> np.ndarray:
    return v.astype(np.float16) if out_dtype == torch.float16 else np_bf16_bits(v)


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_epilogue_scale_before_pertoken(out_dtype, path):
    """Rows picked so that ``(acc * scale) * pertoken`` and ``(acc * pertoken) * scale`` round differently."""
    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, 400_000).astype(np.float32)
    p = (rng.random(400_000) * 3).astype(np.float32)
    s = np.float32(0.1234567)
    right, wrong = _cast(a * s * p, out_dtype), _cast(a * p * s, out_dtype)
    rows = np.nonzero(right != wrong)[0][:64]
    assert len(rows) > 0
    x1 = torch.from_numpy(a[rows].astype(np.int8)).reshape(-1, 1)
    out = npuquant.npu_quant_matmul(
        x1,
        torch.ones((1, 1), dtype=torch.int8),
        torch.tensor([s]),
        pertoken_scale=torch.from_numpy(p[rows]),
        output_dtype=out_dtype,
    )
    assert_matches_numpy(out, right[rows].reshape(-1, 1))


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16])
def test_epilogue_int32_bias_before_scale(out_dtype, path):
    """Columns picked so that ``(acc + bias) * scale`` and ``acc * scale + bias * scale`` round differently."""
    rng = np.random.default_rng(2)
    a = rng.integers(-128, 128, 400_000)
    b = rng.integers(-300_000, 300_000, 400_000)
    s = (rng.random(400_000) / 9).astype(np.float32)
    right = _cast((a + b).astype(np.float32) * s, out_dtype)
    wrong = _cast(a.astype(np.float32) * s + b.astype(np.float32) * s, out_dtype)
    cols = np.nonzero(right != wrong)[0][:64]
    assert len(cols) > 0
    x2 = torch.from_numpy(a[cols].astype(np.int8)).reshape(1, -1)
    bias = torch.from_numpy(b[cols].astype(np.int32))
    scale = torch.from_numpy(s[cols])
    pertoken = torch.ones(1)  # float32 scale at full precision for both output dtypes
    out = npuquant.npu_quant_matmul(
        torch.ones((1, 1), dtype=torch.int8), x2, scale, pertoken_scale=pertoken, bias=bias, output_dtype=out_dtype
    )
    assert_matches_numpy(out, right[cols].reshape(1, -1))


def test_epilogue_order_documented():
    """(acc + bias_i32) * scale * pertoken, then cast: float ops in that order, nothing fused."""
    acc = torch.tensor([[[16777217, 3]]], dtype=torch.int32)  # 2**24 + 1 rounds to 2**24 in float32
    scale, pertoken = torch.tensor([1.0, 0.1]), torch.tensor([1e-3])
    out = reference.epilogue(acc, scale, None, pertoken, None, torch.float16)
    expected = (np.array([16777217, 3], dtype=np.float32) * np.float32([1.0, 0.1]) * np.float32(1e-3)).astype(
        np.float16
    )
    assert np.array_equal(out[0, 0].numpy(), expected)


# ---------------------------------------------------------------- validation (SPEC §4.6, §4.8)


def _s(v=0.5, n=1, dtype=torch.float32):
    return torch.full((n,), v, dtype=dtype)


I8_2x3, I8_3x2 = X1, X2
CASES = [
    # dtypes
    (
        lambda: (I8_2x3.int(), I8_3x2, _s()),  # (int8 x1 with int32 x2 is A8W4: test_quant_matmul_a8w4.py)
        {},
        "x1's type and x2's type should be same, but x1.dtype is torch.int32 and x2.dtype is torch.int8",
    ),
    (
        lambda: (I8_2x3.half(), I8_3x2.half(), _s()),
        {},
        "input's type supported for int8 and int32, but now is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s(dtype=torch.float16)),
        {},
        "scale's type supported for float32, int64 and bfloat16, but scale.dtype is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"offset": _s(dtype=torch.float16)},
        "offset's type supported for float32, but offset.dtype is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"pertoken_scale": _s(n=2, dtype=torch.float16), "output_dtype": torch.float16},
        "pertoken_scale's type supported for float32, but pertoken_scale.dtype is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(2, dtype=torch.int8)},
        "bias's type supported for int32, bfloat16, float16 and float32, but bias.dtype is torch.int8",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(2, dtype=torch.bfloat16), "output_dtype": torch.float16},
        "When bias dtype is bfloat16, output_dtype must be bfloat16, but it is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(2, dtype=torch.float32), "output_dtype": torch.int32},
        "When output_dtype dtype is int32, bias_dtype must be int32, but it is torch.float32",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(2, dtype=torch.float16), "pertoken_scale": _s(n=2), "output_dtype": torch.bfloat16},
        "When bias dtype is float16 and pertoken is given, output_dtype must be float16, but it is torch.bfloat16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(2, dtype=torch.float16), "output_dtype": torch.float16},
        "Bias dtype cannot be float16 when pertoken not given.",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(2, dtype=torch.float32), "output_dtype": torch.float16},
        "When bias dtype is float32 and pertoken not given, output_dtype must be bfloat16, but it is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s(dtype=torch.bfloat16)),
        {"output_dtype": torch.float16},
        "When scale's dtype is bfloat16, output_dtype must be bfloat16 or int32, but output_dtype is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s(dtype=torch.bfloat16)),
        {},
        "When scale's dtype is bfloat16, output_dtype must be bfloat16 or int32, but output_dtype is None",
    ),
    (
        lambda: (I8_2x3, I8_3x2, npuquant.npu_trans_quant_param(_s())),
        {"output_dtype": torch.bfloat16},
        "When output_dtype is bfloat16, scale's dtype must be bfloat16 or float32, but scale's dtype is torch.int64",
    ),
    (
        lambda: (I8_2x3, I8_3x2, npuquant.npu_trans_quant_param(_s())),
        {"output_dtype": torch.int32},
        "When output_dtype is int32, scale's dtype must be bfloat16 or float32, but scale's dtype is torch.int64",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"offset": _s(), "output_dtype": torch.float16},
        "offset only exists when output_dtype is int8, but output_dtype is torch.float16",
    ),
    (
        lambda: (I8_2x3, I8_3x2, npuquant.npu_trans_quant_param(_s())),
        {"pertoken_scale": _s(n=2), "output_dtype": torch.float16},
        "When output_dtype is float16 and pertoken_scale is not none, scale's dtype must be float32, "
        "but scale's dtype is torch.int64",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"pertoken_scale": _s(n=2)},
        "When pertoken_scale is not none, output_dtype must be float16 or bfloat16, but output_dtype is None",
    ),
    (
        lambda: (I8_2x3.int(), I8_3x2.int(), _s()),
        {"output_dtype": torch.bfloat16},
        "When input's dtype is int32, output_dtype must be float16, but output_dtype is torch.bfloat16",
    ),
    (lambda: (I8_2x3, I8_3x2, _s()), {"output_dtype": torch.float32}, "Not supportted output dtype is torch.float32"),
    (lambda: (I8_2x3, I8_3x2, _s()), {"output_dtype": 99}, "Not supportted output dtype is 99"),
    # shapes
    (lambda: (random_int8(3), I8_3x2, _s()), {}, "x1 dim num should be 2 ~ 6, please check x1 dim num"),
    (
        lambda: (random_int8(1, 1, 1, 1, 1, 2, 3), I8_3x2, _s()),
        {},
        "x1 dim num should be 2 ~ 6, please check x1 dim num",
    ),
    (
        lambda: (I8_2x3, random_int8(3), _s()),
        {},
        "x2 dim num should be 2 ~ 6 when x1's dtype is int8, please check x2 dim num",
    ),
    (
        lambda: (torch.zeros(2, 1, dtype=torch.int32), torch.zeros(1, 8, 1, dtype=torch.int32), _s()),
        {"output_dtype": torch.float16},
        "x2 dim num should be 2 when x1's dtype is int32, please check x2 dim num",
    ),
    (lambda: (I8_2x3, random_int8(4, 2), _s()), {}, "k dim of x1 and x2 need be same, please check k dim of x1 and x2"),
    (
        lambda: (torch.zeros(2, 2, dtype=torch.int32), torch.zeros(8, 1, dtype=torch.int32), _s()),
        {"output_dtype": torch.float16},
        "k dim of x2 should be 8 multiple of k dim of x1, please check k dim of x1 and x2",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"offset": torch.zeros(1, 2)},
        "the offset dim num must be 1, please check offset dim num",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"offset": torch.zeros(3)},
        "the offset 1st dim value must be 1 or x2 n dim value, please check offset 1st dim value",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"pertoken_scale": torch.ones(2, 1), "output_dtype": torch.float16},
        "the pertoken_scale dim num must be 1, please check scale dim num",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"pertoken_scale": torch.ones(3), "output_dtype": torch.float16},
        "the pertoken_scale 1st dim value must be x1 m dim value, please check scale 1st dim value",
    ),
    (lambda: (I8_2x3, I8_3x2, torch.ones(1, 2)), {}, "the scale dim num must be 1, please check scale dim num"),
    (
        lambda: (I8_2x3, I8_3x2, torch.ones(3)),
        {},
        "the scale 1st dim value must be 1 or x2 n dim value, please check scale 1st dim value",
    ),
    (lambda: (random_int8(2, 3, 4), random_int8(5, 4, 2), _s()), {}, "the batch shape cannot be broadcast"),
    (
        lambda: (random_int8(2, 3, 4), random_int8(5, 4, 2), _s()),
        {},
        "the x1 shape and x2 shape not supported for broadcast, the short_dim is 2 and  the long_dim is 5",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(1, 1, 2, dtype=torch.int32)},
        "when bias dim is 3, out dim need to be 3",
    ),
    (
        lambda: (random_int8(2, 2, 2, 3), I8_3x2, _s()),
        {"bias": torch.zeros(2, 1, 2, dtype=torch.int32)},
        "when bias dim is 3, out dim need to be 3",
    ),
    (
        lambda: (torch.zeros(2, 1, dtype=torch.int32), torch.zeros(8, 1, dtype=torch.int32), _s()),
        {"bias": torch.zeros(1, 8, dtype=torch.int32), "output_dtype": torch.float16},
        "bias_dim_num should be 1 when x1's dtype is int32, please check bias dim num",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(1, 2, dtype=torch.int32)},
        "bias_dim_num should be 1 or 3 when x1's dtype is int8, please check bias dim num",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"bias": torch.zeros(3, dtype=torch.int32)},
        "bias_first_dim should be equal to x2 n dim, please check bias 1st dim value",
    ),
    (
        lambda: (random_int8(4, 2, 3), I8_3x2, _s()),
        {"bias": torch.zeros(3, 1, 2, dtype=torch.int32)},
        "infered batch value should be equal to bias batch dim value, please check bias batch dim value",
    ),
    (
        lambda: (random_int8(4, 2, 3), I8_3x2, _s()),
        {"bias": torch.zeros(4, 2, 2, dtype=torch.int32)},
        "bias_second_dim should be 1, please check bias second dim value",
    ),
    (
        lambda: (random_int8(4, 2, 3), I8_3x2, _s()),
        {"bias": torch.zeros(4, 1, 3, dtype=torch.int32)},
        "bias_third_dim should be equal to x2_n_dim, please check bias third dim value",
    ),
    (
        lambda: (random_int8(1, 65536), random_int8(65536, 1), _s()),
        {},
        "x1 last dim or x2 last dim is larger than 65535, x1 is 65536, x2 is 1.",
    ),
    (
        lambda: (random_int8(1, 65536), random_int8(65536, 1), npuquant.npu_trans_quant_param(_s())),
        {"output_dtype": torch.float16},
        "x1 last dim or x2 last dim is larger than 65535",
    ),
    (lambda: (random_int8(1, 2), random_int8(2, 65536), _s()), {}, "x1 last dim or x2 last dim is larger than 65535"),
    (
        lambda: (torch.zeros(1, 65536, dtype=torch.int32), torch.zeros(65536, 8, dtype=torch.int32), _s()),
        {"output_dtype": torch.float16},
        "x1 last dim or x2 last dim is larger than 65535, x1 is 65536, x2 is 8.",
    ),
    (lambda: (random_int8(0, 3), I8_3x2, _s()), {}, "QuantMatmul not support to process empty tensor currently."),
    (
        lambda: (random_int8(2, 0), random_int8(0, 2), _s()),
        {"output_dtype": torch.int32},
        "QuantMatmul not support to process empty tensor currently.",
    ),
    (lambda: (I8_2x3, I8_3x2, _s().to("meta")), {}, "scale must be on the same device as x1"),
    # group_sizes
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"group_sizes": [1, 2]},
        "group_sizes only support input with three elements, but got 2",
    ),
    (lambda: (I8_2x3, I8_3x2, _s()), {"group_sizes": [0, -1, 0]}, "group param value must conform to range [0, 65535]"),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"group_sizes": [0, 0, 65536]},
        "group param value must conform to range [0, 65535]",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"group_sizes": [0, 0, 32]},
        "when the dtype of input is int8, group_sizes's value must be 0 or [1,128,128], but got [0, 0, 32]",
    ),
    (
        lambda: (I8_2x3, I8_3x2, _s()),
        {"group_sizes": [1, 128, 128]},
        "per-block quantization supports bfloat16 output only, but output_dtype is torch.int8",
    ),
    (
        lambda: (torch.zeros(2, 1, dtype=torch.int32), torch.zeros(8, 1, dtype=torch.int32), _s()),
        {"group_sizes": [1, 1, 256], "output_dtype": torch.float16},
        "A4W4 per-group scale must be 2-D (ceil(k / group size), n), but it is 1-D",
    ),
]


@pytest.mark.parametrize("make_args, kwargs, message", CASES)
def test_validation_messages(make_args, kwargs, message):
    args = make_args()
    with pytest.raises(RuntimeError) as err:
        npuquant.npu_quant_matmul(*args, **kwargs)
    assert message in str(err.value)


@pytest.mark.parametrize("make_args, kwargs, message", CASES[:20])
def test_validation_also_in_fake_kernel(make_args, kwargs, message):
    args = make_args()
    with torch._subclasses.FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) for a in args]
        fake_kw = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
        with pytest.raises(RuntimeError) as err:
            npuquant.npu_quant_matmul(*fake_args, **fake_kw)
    assert message in str(err.value)


def test_large_k_allowed_for_float_scale_kernels():
    x1 = torch.randint(-2, 2, (1, 65536), dtype=torch.int8)
    x2 = torch.randint(-2, 2, (65536, 1), dtype=torch.int8)
    call(x1, x2, torch.tensor([0.01]), output_dtype=torch.bfloat16)
    call(x1, x2, torch.tensor([0.01]), pertoken_scale=torch.tensor([2.0]), output_dtype=torch.float16)


# ---------------------------------------------------------------- structure for the native GEMM


def test_compute_contract_on_normalised_arguments():
    """_compute takes (B, m, k) / (B, k, n) int8, float32 scale, and returns (B, m, n)."""
    x1 = random_int8(2, 3, 17)
    w = random_int8(5, 17)
    x2 = w.t().unsqueeze(0).expand(2, 17, 5)  # shared weight: batch stride 0, transposed
    scale, pertoken = torch.rand(5), torch.rand(3)
    bias = torch.randn(1, 5)
    out = qm._compute(x1, x2, scale, None, pertoken, bias, torch.bfloat16)
    assert out.shape == (2, 3, 5) and out.is_contiguous()
    expected = npuquant.npu_quant_matmul(
        x1, w.t(), scale, pertoken_scale=pertoken, bias=bias[0], output_dtype=torch.bfloat16
    )
    assert torch.equal(out, expected)


# ---------------------------------------------------------------- torch.compile / opcheck


def _fn(x1, x2, scale, pertoken, bias):
    return npuquant.npu_quant_matmul(x1, x2, scale, pertoken_scale=pertoken, bias=bias, output_dtype=torch.bfloat16)


def test_compile_fullgraph_dynamic_m():
    compiled = torch.compile(_fn, fullgraph=True, dynamic=True, backend="aot_eager")
    w, scale, bias = random_int8(8, 32), torch.rand(8), torch.randn(8)
    for m in (3, 5, 11):
        x1, pertoken = random_int8(m, 32), torch.rand(m)
        assert torch.equal(compiled(x1, w.t(), scale, pertoken, bias), _fn(x1, w.t(), scale, pertoken, bias))


def test_compile_inductor():
    def fn(x1, x2, scale):
        q = npuquant.npu_trans_quant_param(scale, torch.tensor([1.0]))
        return npuquant.npu_quant_matmul(x1, x2, q).float() + 1

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    w, scale = random_int8(16, 24), torch.rand(16) / 100
    for m in (2, 7):
        x1 = random_int8(m, 24)
        assert torch.equal(compiled(x1, w.t(), scale), fn(x1, w.t(), scale))


def _opcheck_cases():
    w = random_int8(6, 20)
    a4 = npuquant.pack_int4(torch.randint(-8, 8, (3, 16), dtype=torch.int8))
    w4 = npuquant.pack_int4(torch.randint(-8, 8, (16, 16), dtype=torch.int8))
    return [
        (random_int8(4, 20), w.t(), torch.rand(6), torch.randn(6) * 5, None, None, torch.int8, None),
        (
            random_int8(4, 20),
            w.t(),
            npuquant.npu_trans_quant_param(torch.rand(1)),
            None,
            None,
            torch.randint(-9, 9, (6,), dtype=torch.int32),
            torch.float16,
            None,
        ),
        (
            random_int8(2, 4, 20),
            w.t(),
            torch.rand(6).bfloat16(),
            None,
            torch.rand(4),
            torch.randn(2, 1, 6),
            torch.bfloat16,
            None,
        ),
        (random_int8(4, 20), w.t(), torch.rand(1), None, None, None, torch.int32, [0, 0, 0]),
        (a4, w4, torch.rand(16), None, None, None, torch.float16, None),
        (
            a4,
            npuquant.pack_int4(torch.randint(-8, 8, (5, 16), dtype=torch.int8)).t(),
            torch.rand(5),
            None,
            torch.rand(3),
            None,
            torch.bfloat16,
            None,
        ),
        (
            random_int8(12, 20),
            random_int8(3, 6, 20).transpose(1, 2),
            torch.rand(6),
            None,
            torch.rand(12),
            None,
            torch.float16,
            None,
        ),
    ]


@pytest.mark.parametrize("index", range(7))
def test_opcheck(index):
    """The operator behind the public op, on the normalised arguments the public op hands it."""
    x1, x2, scale, offset, pertoken, bias, out, groups = _opcheck_cases()[index]
    plan = qm.validate(x1, x2, scale, offset, pertoken, bias, out, groups)
    args = qm._normalise(x1, x2, scale, offset, pertoken, bias, plan)
    torch.library.opcheck(torch.ops.npuquant.quant_matmul.default, args)
    assert_same_bits(
        qm._compute(*args).view(plan.shape),
        npuquant.npu_quant_matmul(
            x1, x2, scale, offset=offset, pertoken_scale=pertoken, bias=bias, output_dtype=out, group_sizes=groups
        ),
    )


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(offset=3.0), "offset"),
        (dict(pertoken_scale=[1.0]), "pertoken_scale"),
        (dict(bias=np.zeros(2, dtype=np.int32)), "bias"),
    ],
)
def test_optional_arguments_must_be_tensors(kwargs, name):
    with pytest.raises(TypeError, match=f"npu_quant_matmul\\(\\): argument '{name}' must be a torch.Tensor or None"):
        npuquant.npu_quant_matmul(X1, X2, torch.tensor([0.5]), **kwargs)


# ---------------------------------------------------------------- results follow the inputs (no caches, issue 15)

EDITS = ["data", "numpy", "from_numpy", "in place"]


def aliased(t: torch.Tensor, how: str):
    """A copy of ``t`` and a function writing into it the way ``how`` says.

    ``data``: through ``.data`` (its own version counter); ``numpy``: through ``t.numpy()`` (no
    version counter at all); ``from_numpy``: the tensor aliases a numpy array that is written;
    ``in place``: plain indexing assignment (bumps the version counter).
    """
    if how == "from_numpy":
        array = t.numpy().copy()
        alias = torch.from_numpy(array)
    else:
        array, alias = None, t.clone()

    def edit(index, values):
        v = values.numpy() if isinstance(values, torch.Tensor) else values
        if how == "from_numpy":
            array[index] = v
        elif how == "numpy":
            alias.numpy()[index] = v
        elif how == "data":
            alias.data[index] = values
        else:
            alias[index] = values

    return alias, edit


def _fresh_call(args: dict) -> torch.Tensor:
    """The same call on fresh copies of every tensor."""
    copies = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    x1, x2, scale = copies.pop("x1"), copies.pop("x2"), copies.pop("scale")
    return npuquant.npu_quant_matmul(x1, x2, scale, **copies)


def _freshness_case(case: str, m: int):
    """(target tensor, builder of the call's arguments from it, new values for the target)."""
    gen = torch.Generator().manual_seed(m)
    k, n = 48, 40
    x1 = random_int8(m, k, generator=gen)
    scale = torch.rand(n, generator=gen) / 100
    w = random_int8(n, k, generator=gen)
    if case == "int8 x2":
        return w, lambda t: dict(x1=x1, x2=t.t(), scale=scale, output_dtype=torch.float16), random_int8(n, k)
    if case == "int8 x2 contiguous (k, n)":
        wkn = w.t().contiguous()
        return wkn, lambda t: dict(x1=x1, x2=t, scale=scale, output_dtype=torch.bfloat16), random_int8(k, n)
    if case == "batched x2, batch stride 0":  # one 2-D weight for a batch of activations
        x3 = random_int8(3, m, k, generator=gen)
        return w, lambda t: dict(x1=x3, x2=t.t(), scale=scale, output_dtype=torch.float16), random_int8(n, k)
    if case == "batched x2":
        x3, w3 = random_int8(3, m, k, generator=gen), random_int8(3, n, k, generator=gen)
        return (
            w3,
            lambda t: dict(x1=x3, x2=t.transpose(1, 2), scale=scale, output_dtype=torch.float16),
            random_int8(3, n, k),
        )
    if case == "int64 scale":
        q = npuquant.npu_trans_quant_param(scale, torch.randn(n, generator=gen) * 5)
        new = npuquant.npu_trans_quant_param(torch.rand(n) / 50, torch.randn(n) * 5)
        return q, lambda t: dict(x1=x1, x2=w.t(), scale=t), new
    if case == "float32 scale, FP19 path (float16)":
        return scale, lambda t: dict(x1=x1, x2=w.t(), scale=t, output_dtype=torch.float16), torch.rand(n) / 10
    if case == "float32 scale, FP19 path (int8, offset)":
        offset = torch.randn(n, generator=gen) * 5
        return scale, lambda t: dict(x1=x1, x2=w.t(), scale=t, offset=offset), torch.rand(n) / 10
    if case == "offset":
        return (
            torch.randn(n, generator=gen) * 5,
            lambda t: dict(x1=x1, x2=w.t(), scale=scale, offset=t),
            torch.randn(n) * 50,
        )
    if case == "pertoken_scale":
        return (
            torch.rand(m, generator=gen),
            lambda t: dict(x1=x1, x2=w.t(), scale=scale, pertoken_scale=t, output_dtype=torch.bfloat16),
            torch.rand(m) * 3,
        )
    if case == "int32 bias":
        return (
            torch.randint(-999, 999, (n,), dtype=torch.int32, generator=gen),
            lambda t: dict(x1=x1, x2=w.t(), scale=scale, bias=t, output_dtype=torch.float16),
            torch.randint(-99999, 99999, (n,), dtype=torch.int32),
        )
    a4 = npuquant.pack_int4(torch.randint(-8, 8, (m, k), dtype=torch.int8, generator=gen))
    if case == "A4W4 x2 packed along n":
        x2 = npuquant.pack_int4(torch.randint(-8, 8, (k, n), dtype=torch.int8, generator=gen))  # (k, n/8)
        return x2, lambda t: dict(x1=a4, x2=t, scale=scale, output_dtype=torch.float16), random_words(k, n // 8)
    if case == "A4W4 x2 packed along k":
        w4 = npuquant.pack_int4(torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=gen))  # (n, k/8)
        return w4, lambda t: dict(x1=a4, x2=t.t(), scale=scale, output_dtype=torch.float16), random_words(n, k // 8)
    if case == "A4W4 x1":
        x2 = npuquant.pack_int4(torch.randint(-8, 8, (k, n), dtype=torch.int8, generator=gen))
        return a4, lambda t: dict(x1=t, x2=x2, scale=scale, output_dtype=torch.float16), random_words(m, k // 8)
    raise AssertionError(case)


FRESHNESS_CASES = [
    "int8 x2",
    "int8 x2 contiguous (k, n)",
    "batched x2, batch stride 0",
    "batched x2",
    "int64 scale",
    "float32 scale, FP19 path (float16)",
    "float32 scale, FP19 path (int8, offset)",
    "offset",
    "pertoken_scale",
    "int32 bias",
    "A4W4 x2 packed along n",
    "A4W4 x2 packed along k",
    "A4W4 x1",
]


@pytest.mark.parametrize("how", EDITS)
@pytest.mark.parametrize("m", [3, 12], ids=["gemv", "packed"])
@pytest.mark.parametrize("case", FRESHNESS_CASES)
def test_results_follow_edited_inputs(case, m, how):
    """Edit an input after a call: the next call gives exactly the result for the new values."""
    original, build, new_values = _freshness_case(case, m)
    target, edit = aliased(original, how)
    before = npuquant.npu_quant_matmul(**build(target))
    assert_same_bits(before, _fresh_call(build(target)))
    edit(..., new_values)  # every element
    after = npuquant.npu_quant_matmul(**build(target))
    assert torch.equal(target, new_values)
    assert_same_bits(after, _fresh_call(build(target)))
    assert not torch.equal(after, before)
    edit((-1,) * target.dim(), new_values.flatten()[0])  # one element
    assert_same_bits(npuquant.npu_quant_matmul(**build(target)), _fresh_call(build(target)))
