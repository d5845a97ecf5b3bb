"""npu_weight_quant_batchmatmul: worked examples from the documented formula, every argument rule,
native against reference bit for bit, the fake kernel, opcheck and torch.compile.

Reading the anti-quantized weight back: with ``x = eye(k)`` every output element is one exact
product ``1 * w16[r, j]`` plus exact zeros, so ``y == w16`` bit for bit whatever the summation
order; the examples below use that to check the anti-quantization rule element by element.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits
from npuquant import _native
from npuquant.ops import weight_quant_matmul as wq
from npuquant.ops.weight_quant_matmul import native as wq_native
from npuquant.ops.weight_quant_matmul import reference as wq_ref

f = npuquant.npu_weight_quant_batchmatmul


# ---------------------------------------------------------------- independent formula (numpy / python floats)


def bf16_rne(v: float) -> float:
    """float -> nearest bfloat16 (ties to even) via the float32 bits, as a python float."""
    (u,) = struct.unpack("<I", struct.pack("<f", np.float32(v)))
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return struct.unpack("<f", struct.pack("<I", u))[0]


def expected_w16(w: np.ndarray, scale: np.ndarray, offset: np.ndarray | None, dtype: torch.dtype) -> np.ndarray:
    """The documented anti-quantization on (k, n) int values with (k, n)-broadcast scale/offset, as float64."""
    out = np.empty(w.shape, dtype=np.float64)
    for idx in np.ndindex(w.shape):
        s, o = float(scale[idx]), None if offset is None else float(offset[idx])
        if dtype == torch.float16:
            v = np.float16(w[idx])
            if o is not None:
                v = np.float16(v + np.float16(o))
            out[idx] = float(np.float16(v * np.float16(s)))
        else:
            v = np.float32(w[idx])
            if o is not None:
                v = np.float32(v + np.float32(o))
            v = np.float32(v * np.float32(s))
            out[idx] = bf16_rne(float(v)) if dtype == torch.bfloat16 else float(v)
    return out


def fp19(v: float) -> float:
    (u,) = struct.unpack("<I", struct.pack("<f", np.float32(v)))
    return struct.unpack("<f", struct.pack("<I", u & 0xFFFFE000))[0]


def eye(k: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.eye(k, dtype=torch.float32).to(dtype)


# ---------------------------------------------------------------- worked examples


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_int8_per_channel_reads_back_the_documented_antiquant(dtype):
    w = torch.tensor([[1, -128, 127], [0, 2, -3]], dtype=torch.int8)  # (k=2, n=3)
    scale = torch.tensor([0.3, 0.25, 2.1]).to(dtype)
    offset = torch.tensor([1.7, 0.0, -1.3]).to(dtype)
    y = f(eye(2, dtype), w, scale, offset)
    want = expected_w16(w.numpy(), np.broadcast_to(scale.float().numpy(), (2, 3)),
                        np.broadcast_to(offset.float().numpy(), (2, 3)), dtype)
    assert y.dtype == dtype and y.shape == (2, 3)
    assert y.double().numpy().tolist() == want.tolist()


def test_float16_rounds_after_the_add_and_after_the_multiply():
    # fp16(127 + 0.1) = 127.125, * fp16(0.1) -> 12.7109375 (two half-precision roundings, as the
    # device computes); one rounding of the float32 value would give 12.703125.
    w = torch.tensor([[127]], dtype=torch.int8)
    scale, offset = torch.tensor([0.1], dtype=torch.float16), torch.tensor([0.1], dtype=torch.float16)
    y = f(torch.ones(1, 1, dtype=torch.float16), w, scale, offset)
    per_op = np.float16(np.float16(127 + np.float16(0.1)) * np.float16(0.1))
    single = np.float16(np.float32(127 + np.float32(np.float16(0.1))) * np.float32(np.float16(0.1)))
    assert float(per_op) == 12.7109375 and float(single) == 12.703125
    assert y.item() == 12.7109375


def test_bfloat16_rounds_once_like_npu_anti_quant():
    w = torch.randint(-128, 128, (16, 24), dtype=torch.int8)
    scale = torch.rand(24).bfloat16()
    offset = (torch.randn(24) * 3).bfloat16()
    y = f(eye(16, torch.bfloat16), w, scale, offset)
    aq = npuquant.npu_anti_quant(w, scale, offset=offset, dst_dtype=torch.bfloat16)
    assert_same_bits(y, aq)


def test_small_matmul_worked_example():
    # x @ ((w + o) * s) + bias with exact values: (w + o) * s = [[1, -2], [1.5, 0.5]] (per channel)
    x = torch.tensor([[1.0, 2.0], [-1.0, 4.0]], dtype=torch.bfloat16)
    w = torch.tensor([[1, -5], [2, 0]], dtype=torch.int8)
    scale = torch.tensor([0.5, 0.5], dtype=torch.bfloat16)
    offset = torch.tensor([1.0, 1.0], dtype=torch.bfloat16)
    bias = torch.tensor([0.25, -1.0])
    y = f(x, w, scale, offset, bias=bias)
    # rows of (w + o) * s: [1, -2], [1.5, 0.5]
    want = [[1 + 3 + 0.25, -2 + 1 - 1.0], [-1 + 6 + 0.25, 2 + 2 - 1.0]]
    assert y.float().tolist() == want and y.dtype == torch.bfloat16


def test_per_tensor_shapes():
    w = torch.randint(-128, 128, (8, 5), dtype=torch.int8)
    for shape in [(1,), (1, 1)]:
        s = torch.full(shape, 0.5, dtype=torch.float16)
        y = f(eye(8, torch.float16), w, s)
        assert torch.equal(y, (w.float() * 0.5).half())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [64, 70])
def test_per_group_uses_group_of_each_row(dtype, k):
    g, n = 32, 3
    groups = math.ceil(k / g)
    w = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    scale = (torch.rand(groups, n) + 0.1).to(dtype)
    offset = torch.randn(groups, n).to(dtype)
    y = f(eye(k, dtype), w, scale, offset, antiquant_group_size=g)
    rows = torch.arange(k) // g
    want = expected_w16(w.numpy(), scale.float().numpy()[rows.numpy()], offset.float().numpy()[rows.numpy()], dtype)
    assert y.double().numpy().tolist() == want.tolist()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_int4_packed_along_n_and_along_k(dtype):
    k, n = 64, 16
    values = torch.randint(-8, 8, (k, n), dtype=torch.int8)
    values[0, 0], values[0, 1] = -8, 7  # the int4 extremes
    scale, offset = (torch.rand(n) + 0.1).to(dtype), torch.randn(n).to(dtype)
    along_n = npuquant.pack_int4(values)  # (k, n/8)
    along_k = npuquant.npu_convert_weight_to_int4pack(values.t().contiguous().to(torch.int32)).t()  # (k/8, n)
    assert along_n.shape == (k, n // 8) and along_k.shape == (k // 8, n)
    want = expected_w16(values.numpy(), np.broadcast_to(scale.float().numpy(), (k, n)),
                        np.broadcast_to(offset.float().numpy(), (k, n)), dtype)
    for weight in (along_n, along_k):
        y = f(eye(k, dtype), weight, scale, offset)
        assert y.shape == (k, n)
        assert y.double().numpy().tolist() == want.tolist()


def test_int4_per_group_along_k_matches_the_w4a16_dequant():
    k, n, g = 128, 24, 64
    values = torch.randint(-8, 8, (n, k), dtype=torch.int8)
    words = npuquant.pack_int4(values)  # (n, k/8), as W4A16Linear stores it
    scale, offset = torch.rand(k // g, n).bfloat16(), torch.randn(k // g, n).bfloat16()
    y = f(eye(k, torch.bfloat16), words.t(), scale, offset, antiquant_group_size=g)
    expected = npuquant.ops.anti_quant.dequant_int4_grouped(words, scale.t().contiguous(), offset.t().contiguous(),
                                                            torch.bfloat16)
    assert_same_bits(y, expected.t().contiguous())


def test_int8_output_through_quant_scale():
    w = torch.tensor([[10, -20, 127, -128]], dtype=torch.int8)
    scale = torch.tensor([0.7], dtype=torch.bfloat16)
    qs, qo = torch.tensor([0.7, 1.0, 1.0, 1.0]), torch.tensor([0.0, 2.5, 3.5, -3.0])
    y = f(torch.ones(1, 1, dtype=torch.bfloat16), w, scale, quant_scale=qs, quant_offset=qo)
    w16 = [bf16_rne(float(np.float32(v) * np.float32(bf16_rne(0.7)))) for v in (10, -20, 127, -128)]
    # FP19 scale, offset rounded half to even (2.5 -> 2, 3.5 -> 4), RNE, saturation
    want = [max(-128, min(127, round(w16[j] * fp19(float(qs[j])) + [0, 2, 4, -3][j]))) for j in range(4)]
    assert y.dtype == torch.int8 and y.tolist() == [want]
    # the int64 form of the same parameters gives the same result
    q64 = npuquant.npu_trans_quant_param(qs, qo)
    assert torch.equal(f(torch.ones(1, 1, dtype=torch.bfloat16), w, scale, quant_scale=q64), y)


def test_int8_output_saturates_and_rounds_half_to_even():
    w = torch.tensor([[1, 1, 1, 3, 5]], dtype=torch.int8)
    x = torch.tensor([[1.0]], dtype=torch.float16)
    scale = torch.tensor([1.0, 200.0, -200.0, 0.5, 0.5], dtype=torch.float16)
    y = f(x, w, scale, quant_scale=torch.tensor([1.0]))
    assert y.tolist() == [[1, 127, -128, 2, 2]]  # 1.5 -> 2, 2.5 -> 2


def test_int64_antiquant_scale_fixpipe_mode():
    # torch_npu's documented form: int64 per-channel scale from npu_trans_quant_param, int32 offset,
    # int8 weight transposed, float16 x.
    n, k = 8, 16
    weight = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    s = torch.rand(n) + 0.01
    scale64 = npuquant.npu_trans_quant_param(s).reshape(n, 1)
    offset = torch.randint(-128, 127, (n, 1), dtype=torch.int32)
    y = f(eye(k, torch.float16), weight.t(), scale64.t(), offset.t())
    want = [[float(np.float16(np.float32(int(weight[j, r]) + int(offset[j, 0])) * np.float32(fp19(float(s[j])))))
             for j in range(n)] for r in range(k)]
    assert y.dtype == torch.float16 and y.float().tolist() == want


def test_bias_float16_and_float32():
    w = torch.ones(4, 2, dtype=torch.int8)
    x = torch.ones(1, 4, dtype=torch.float16)
    y = f(x, w, torch.tensor([1.0], dtype=torch.float16), bias=torch.tensor([0.5, -8.0], dtype=torch.float16))
    assert y.tolist() == [[4.5, -4.0]]
    y = f(x.bfloat16(), w, torch.tensor([1.0], dtype=torch.bfloat16), bias=torch.tensor([[0.5, -8.0]]))
    assert y.tolist() == [[4.5, -4.0]]


def test_batch_shapes():
    k, n = 8, 4
    w = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    wb = torch.randint(-128, 128, (2, 3, k, n), dtype=torch.int8)
    s = torch.rand(n).half()
    x3 = torch.randn(2, 3, 5, k).half()
    y = f(x3, w, s)  # 2-D weight shared by every batch
    assert y.shape == (2, 3, 5, n)
    assert torch.equal(y[1, 2], f(x3[1, 2], w, s))
    y = f(x3, wb, s)  # equal batch dims
    assert torch.equal(y[1, 0], f(x3[1, 0], wb[1, 0], s))
    y = f(x3[0, 0], wb, s)  # 2-D x shared by every weight
    assert y.shape == (2, 3, 5, n) and torch.equal(y[1, 1], f(x3[0, 0], wb[1, 1], s))


def test_inner_precise_does_not_change_numerics():
    w = torch.randint(-128, 128, (64, 8), dtype=torch.int8)
    x, s = torch.randn(3, 64).half(), torch.rand(8).half()
    assert torch.equal(f(x, w, s, inner_precise=1), f(x, w, s, inner_precise=0))


def test_transposed_x_and_noncontiguous_scale():
    w = torch.randint(-128, 128, (16, 8), dtype=torch.int8)
    x = torch.randn(16, 3).bfloat16()
    s = torch.rand(8, 1).bfloat16()
    assert torch.equal(f(x.t(), w, s.t()), f(x.t().contiguous(), w, s.t().contiguous()))


# ---------------------------------------------------------------- argument rules


def _ok():
    return torch.randn(3, 64).half(), torch.randint(-128, 128, (64, 8), dtype=torch.int8), torch.rand(8).half()


def _raises(message, *args, **kwargs):
    with pytest.raises(RuntimeError) as info:
        f(*args, **kwargs)
    assert message in str(info.value), str(info.value)


def test_missing_tensors_are_type_errors():
    x, w, s = _ok()
    with pytest.raises(TypeError, match="antiquant_scale"):
        f(x, w, None)
    with pytest.raises(TypeError, match="bias"):
        f(x, w, s, bias=[1.0])


def test_torch_layer_messages():
    x, w, s = _ok()
    _raises("x shape do not support dim num less than 2, but it is 1", x[0], w, s)
    _raises("weight shape do not support dim num less than 2, but it is 1", x, w[0], s)
    _raises("x dim is not the same as weight dim", x.expand(2, 2, 3, 64), w.expand(2, 64, 8), s)
    _raises("The k of x and weight should be equal. but x_k_dim is 63, weight_k_dim is 64", x[:, :63], w, s)
    _raises("batch of x is diff from batch of weight", x.expand(2, 3, 64), w.expand(3, 64, 8), s)
    for g in (16, 33, 64, 96):
        _raises("antiquant_group_size can be either 0 or a multiple of 32 within the range 32 to weight_k_dim - 1.",
                x, w, s, antiquant_group_size=g)
    _raises("quant_offset cannot exist in isolation from quant_scale", x, w, s, quant_offset=torch.zeros(8))
    _raises("inner_precise only support 0 or 1. but is:2", x, w, s, inner_precise=2)


def test_int4_k_counts_packed_words():
    x = torch.randn(3, 64).half()
    words = torch.zeros(8, 8, dtype=torch.int32)  # (n=8, k/8=8)
    assert f(x, words.t(), torch.rand(8).half()).shape == (3, 8)  # packed along k: k = 8 * 8
    _raises("The k of x and weight should be equal. but x_k_dim is 64, weight_k_dim is 8", x, words, torch.rand(64).half())


def test_dtype_rules():
    x, w, s = _ok()
    _raises("x's dtype must be float16 or bfloat16", x.to(torch.float64), w, s)
    _raises("weight's dtype must be int8 or int32", x, w.to(torch.int16), s)
    _raises("antiquant_scale's dtype must be the same as x's", x, w, s.bfloat16())
    _raises("antiquant_offset's dtype must be the same as antiquant_scale's", x, w, s, s.float())
    _raises("quant_scale's dtype must be float32 or int64", x, w, s, quant_scale=torch.ones(8).half())
    _raises("quant_offset's dtype must be float32", x, w, s, quant_scale=torch.ones(8), quant_offset=torch.ones(8).half())
    _raises("bias's dtype must be torch.float16 when x is torch.float16", x, w, s, bias=torch.ones(8))
    _raises("bias's dtype must be torch.float32 when x is torch.bfloat16", x.bfloat16(), w, s.bfloat16(),
            bias=torch.ones(8).bfloat16())


def test_int64_scale_rules():
    x, w, _ = _ok()
    s64 = npuquant.npu_trans_quant_param(torch.rand(8))
    _raises("antiquant_scale of dtype int64 needs float16 x and int8 weight", x.bfloat16(), w, s64)
    _raises("antiquant_scale of dtype int64 needs float16 x and int8 weight", x, npuquant.pack_int4(w.clamp(-8, 7)), s64)
    _raises("quant_scale and quant_offset must be None when antiquant_scale is int64", x, w, s64, quant_scale=torch.ones(1))
    _raises("antiquant_offset must be int32 when antiquant_scale is int64", x, w, s64, torch.zeros(8).half())
    _raises("antiquant_scale of dtype int64 supports only per-channel", x, w, s64[:1])


def test_shape_rules():
    x, w, s = _ok()
    _raises("antiquant_scale's shape must be (1,), (1, 1), (8,) or (1, 8), but it is (7,)", x, w, s[:7])
    _raises("antiquant_scale's shape must be (1,), (1, 1), (8,) or (1, 8), but it is (2, 8)", x, w, s.expand(2, 8))
    _raises("antiquant_scale's shape must be (2, 8) for antiquant_group_size 32, but it is (8,)",
            x, w, s, antiquant_group_size=32)
    _raises("antiquant_offset's shape must be the same as antiquant_scale's (8,), but it is (1, 8)", x, w, s,
            s.reshape(1, 8))
    _raises("quant_scale's shape must be (1,), (8,), (1, 1) or (1, 8), but it is (4,)", x, w, s,
            quant_scale=torch.ones(4))
    _raises("quant_offset's shape must be the same as quant_scale's (8,), but it is (1,)", x, w, s,
            quant_scale=torch.ones(8), quant_offset=torch.ones(1))
    _raises("bias's shape must be (8,) or (1, 8), but it is (2, 8)", x, w, s, bias=torch.ones(2, 8).half())
    _raises("does not support empty tensors", x[:0], w, s)
    big = torch.zeros(65536, 1, dtype=torch.int8)
    _raises("k and n must be in [1, 65535], but k is 65536 and n is 1", torch.zeros(1, 65536).half(), big,
            torch.ones(1).half())


def test_device_mismatch():
    x, w, s = _ok()
    _raises("antiquant_scale must be on the same device as x", x, w, s.to("meta"))


# ---------------------------------------------------------------- native against reference


@st.composite
def cases(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    dtype = draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32]))
    kind = draw(st.sampled_from(["int8", "int8_t", "int4_n", "int4_k"]))
    mode = draw(st.sampled_from(["tensor", "channel", "group"]))
    k = draw(st.sampled_from([8, 40, 64, 72, 136])) if kind != "int4_k" else draw(st.sampled_from([64, 72, 136]))
    n = 8 * draw(st.integers(1, 4)) if kind.startswith("int4") else draw(st.integers(1, 19))
    m = draw(st.integers(1, 9))
    batch = draw(st.sampled_from([(), (), (2,)])) if kind != "int4_k" else ()
    if kind.startswith("int4"):
        values = torch.randint(-8, 8, (*batch, k, n), dtype=torch.int8, generator=gen)
        values.view(-1)[:2] = torch.tensor([-8, 7], dtype=torch.int8)
        if kind == "int4_n":
            weight = npuquant.pack_int4(values)
        else:
            weight = npuquant.pack_int4(values.transpose(-1, -2).contiguous()).transpose(-1, -2)
    else:
        values = torch.randint(-128, 128, (*batch, k, n), dtype=torch.int8, generator=gen)
        values.view(-1)[0] = -128
        weight = values if kind == "int8" else values.transpose(-1, -2).contiguous().transpose(-1, -2)
    g = 0
    if mode == "group" and k > 32:
        g = draw(st.sampled_from([32, 64] if k > 64 else [32]))
        shape = (math.ceil(k / g), n)
    elif mode == "channel":
        shape = draw(st.sampled_from([(n,), (1, n)]))
    else:
        shape = draw(st.sampled_from([(1,), (1, 1)]))
    scale = (torch.rand(shape, generator=gen) * 0.2 - 0.05).to(dtype)
    offset = (torch.randn(shape, generator=gen) * 4).to(dtype) if draw(st.booleans()) else None
    x = (torch.randn((*draw(st.sampled_from([(), batch])), m, k), generator=gen)).to(dtype)
    kw = {"antiquant_group_size": g}
    if draw(st.booleans()):
        kw["bias"] = torch.randn(draw(st.sampled_from([(n,), (1, n)])), generator=gen).to(wq.BIAS_DTYPE[dtype])
    if draw(st.booleans()):
        qshape = draw(st.sampled_from([(1,), (n,), (1, n)]))
        kw["quant_scale"] = torch.rand(qshape, generator=gen) * 4
        if draw(st.booleans()):
            kw["quant_offset"] = torch.randn(qshape, generator=gen) * 10
    return x, weight, scale, offset, kw


@given(cases())
def test_native_matches_reference_bit_for_bit(case):
    x, weight, scale, offset, kw = case
    out = f(x, weight, scale, offset, **kw)
    with _native.force_reference():
        ref = f(x, weight, scale, offset, **kw)
    direct = wq_ref.weight_quant_batchmatmul(
        x, weight, scale, offset, kw.get("quant_scale"), kw.get("quant_offset"), kw.get("bias"),
        kw["antiquant_group_size"], wq_ref.is_transposed(weight) and weight.dtype == torch.int32,
    )
    assert_same_bits(out, ref)
    assert_same_bits(ref, direct.reshape(ref.shape))


@given(cases())
def test_against_independent_formula(case):
    """The whole op against numpy: exact anti-quantization, float64 matmul, within float rounding."""
    x, weight, scale, offset, kw = case
    out = f(x, weight, scale, offset, **kw)
    packed_k = weight.dtype == torch.int32 and wq_ref.is_transposed(weight)
    if weight.dtype == torch.int32:
        vals = npuquant.unpack_int4(weight.transpose(-1, -2)).transpose(-1, -2) if packed_k else npuquant.unpack_int4(weight)
    else:
        vals = weight
    k, n = vals.shape[-2], vals.shape[-1]
    g = kw["antiquant_group_size"]
    rows = (np.arange(k) // g) if g else np.zeros(k, dtype=np.int64)
    s = scale.float().reshape(-1, scale.shape[-1]).numpy()
    s = np.broadcast_to(s[rows] if g else s.reshape(1, -1), (k, n))
    o = None
    if offset is not None:
        o = offset.float().reshape(-1, offset.shape[-1]).numpy()
        o = np.broadcast_to(o[rows] if g else o.reshape(1, -1), (k, n))
    v = vals.numpy()
    w16 = np.stack([expected_w16(b, s, o, x.dtype) for b in v.reshape(-1, k, n)]).reshape(v.shape)
    acc = np.matmul(x.double().numpy(), w16)
    if "bias" in kw:
        acc = acc + kw["bias"].double().numpy().reshape(-1)
    if "quant_scale" in kw:
        qs = np.array([fp19(float(q)) for q in kw["quant_scale"].reshape(-1)])
        qo = np.zeros(1) if "quant_offset" not in kw else np.clip(np.round(kw["quant_offset"].double().numpy().reshape(-1)), -256, 255)
        want = acc * qs + qo
        got = out.double().numpy()
        # the float32 accumulation may move a value across a rounding boundary by one step
        assert np.all(np.abs(got - np.clip(want, -128, 127)) <= 1 + 1e-3 * np.abs(want))
    else:
        got = out.double().numpy()
        tol = {torch.float16: 2**-10, torch.bfloat16: 2**-7, torch.float32: 1e-5}[x.dtype]
        scale_mag = np.matmul(np.abs(x.double().numpy()), np.abs(w16)) + 1e-3
        assert np.all(np.abs(got - acc) <= tol * (np.abs(acc) + scale_mag) * 2)


def test_native_kernels_take_the_dequantizable_cases(monkeypatch):
    seen = []
    original = wq_native._native_antiquant

    def spy(*args):
        result = original(*args)
        seen.append(result is not None)
        return result

    monkeypatch.setattr(wq_native, "_native_antiquant", spy)
    words = npuquant.pack_int4(torch.randint(-8, 8, (8, 64), dtype=torch.int8))
    x = torch.randn(2, 64).bfloat16()
    f(x, torch.randint(-128, 128, (64, 8), dtype=torch.int8), torch.rand(8).bfloat16())
    f(x, words.t(), torch.rand(2, 8).bfloat16(), antiquant_group_size=32)
    f(x, npuquant.pack_int4(torch.randint(-8, 8, (64, 8), dtype=torch.int8)), torch.rand(1).bfloat16())
    f(x.half(), words.t(), torch.rand(8).half(), torch.randn(8).half())  # float16: half_steps
    f(x.half(), torch.randint(-128, 128, (64, 8), dtype=torch.int8), torch.rand(2, 8).half(), antiquant_group_size=32)
    # batched per-group weights: the golden's own anti-quantization
    f(x.half(), torch.randint(-128, 128, (2, 64, 8), dtype=torch.int8), torch.rand(2, 8).half(), antiquant_group_size=32)
    assert seen == [True, True, True, True, True, False]


@given(cases())
def test_fake_kernel_shape_and_dtype(case):
    x, weight, scale, offset, kw = case
    real = f(x, weight, scale, offset, **kw)
    with torch._subclasses.FakeTensorMode() as mode:
        conv = {k: mode.from_tensor(v) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        fake = f(mode.from_tensor(x), mode.from_tensor(weight), mode.from_tensor(scale),
                 None if offset is None else mode.from_tensor(offset), **conv)
    assert fake.shape == real.shape and fake.dtype == real.dtype


# ---------------------------------------------------------------- opcheck / torch.compile


def _opcheck_cases():
    w8 = torch.randint(-128, 128, (64, 8), dtype=torch.int8)
    words = npuquant.pack_int4(torch.randint(-8, 8, (8, 64), dtype=torch.int8))
    return [
        (torch.randn(3, 64).half(), w8, torch.rand(8).half(), torch.randn(8).half(), None, None, None, 0, 0),
        (torch.randn(3, 64).bfloat16(), words.t(), torch.rand(2, 8).bfloat16(), None, None, None, torch.randn(8), 32, 1),
        (torch.randn(2, 3, 64).bfloat16(), w8.t().contiguous().t(), torch.rand(1, 8).bfloat16(), None,
         torch.rand(8), torch.randn(8), None, 0, 0),
        (torch.randn(3, 64).half(), w8, npuquant.npu_trans_quant_param(torch.rand(8)),
         torch.randint(-5, 5, (8,), dtype=torch.int32), None, None, None, 0, 0),
    ]


@pytest.mark.parametrize("index", range(4))
def test_opcheck(index):
    torch.library.opcheck(torch.ops.npuquant.weight_quant_batchmatmul.default, _opcheck_cases()[index])


def _layer(x, words, scale, offset, bias):
    return npuquant.npu_weight_quant_batchmatmul(x, words.t(), scale, offset, bias=bias, antiquant_group_size=32)


def test_compile_fullgraph_dynamic():
    compiled = torch.compile(_layer, fullgraph=True, dynamic=True, backend="aot_eager")
    words = npuquant.pack_int4(torch.randint(-8, 8, (16, 64), dtype=torch.int8))
    scale, offset, bias = torch.rand(2, 16).bfloat16(), torch.randn(2, 16).bfloat16(), torch.randn(16)
    for m in (1, 3, 7):
        x = torch.randn(m, 64).bfloat16()
        assert_same_bits(compiled(x, words, scale, offset, bias), _layer(x, words, scale, offset, bias))


def test_compile_inductor_static():
    def fn(x, w, s, qs):
        return npuquant.npu_weight_quant_batchmatmul(x, w, s, quant_scale=qs).float() + 1

    compiled = torch.compile(fn, fullgraph=True)
    x, w, s = torch.randn(4, 64).half(), torch.randint(-128, 128, (64, 8), dtype=torch.int8), torch.rand(8).half()
    qs = torch.rand(8)
    assert torch.equal(compiled(x, w, s, qs), fn(x, w, s, qs))


def test_is_transposed_rule():
    t = torch.zeros(4, 6)
    assert wq_ref.is_transposed(t.t()) and not wq_ref.is_transposed(t)
    assert not wq_ref.is_transposed(torch.zeros(1, 1)) and not wq_ref.is_transposed(torch.zeros(3))
    assert wq_ref.is_transposed(torch.zeros(2, 4, 6).transpose(-1, -2))


def test_served_by_the_torch_npu_shim():
    from npuquant import compat
    from npuquant.compat.shims import torch_npu as shim

    if "npu_weight_quant_batchmatmul" not in getattr(shim, "OPS", ()):
        pytest.skip("the torch_npu shim does not list npu_weight_quant_batchmatmul yet")
    x, w, s = torch.randn(3, 64).half(), torch.randint(-128, 128, (64, 8), dtype=torch.int8), torch.rand(8).half()
    compat.install()
    try:
        import torch_npu

        a = torch_npu.npu_weight_quant_batchmatmul(x, w, s, antiquant_offset=s)
        b = torch.ops.npu.npu_weight_quant_batchmatmul(x, w, s, s, None, None, None, 0, 0)
    finally:
        compat.uninstall()
    assert_same_bits(a, f(x, w, s, s))
    assert_same_bits(b, a)
