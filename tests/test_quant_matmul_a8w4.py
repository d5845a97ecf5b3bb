"""A8W4 npu_quant_matmul (int8 x1, int32-packed int4 x2): bit for bit against the documented rule
(an independent numpy implementation of op-plugin's golden), argument rules, opcheck, compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits
from npuquant.ops.quant_matmul import a8w4

qmm = npuquant.npu_quant_matmul


def fp19(scale: np.ndarray) -> np.ndarray:
    return (scale.astype(np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def golden(x1, w, scale_f32, offset, pertoken, group, out_dtype):
    """The documented rule in numpy: int4 halves, float16 accumulation over k-groups, float32 tail."""
    x = x1.numpy().astype(np.int64)
    wv = w.numpy().astype(np.int64)
    m, k = x.shape
    n = wv.shape[1]
    hi, lo = np.floor_divide(x, 16), (x & 0xF) - 8
    assert np.array_equal(16 * hi + lo, x - 8)
    accs = []
    for half in (hi, lo):
        acc = np.zeros((m, n), dtype=np.float16)
        for g in range(k // group):
            sl = slice(g * group, (g + 1) * group)
            p = (half[:, sl] @ wv[sl]).astype(np.float32) * scale_f32[g].reshape(1, n)
            acc = (acc + p.astype(np.float16)).astype(np.float16)
        accs.append(acc.astype(np.float32))
    v = accs[0] * np.float32(16) + accs[1]
    if offset is not None:
        v = v + offset.numpy().reshape(1, n)
    if pertoken is not None:
        v = v * pertoken.numpy().reshape(m, 1)
    return torch.from_numpy(v.astype(np.float32)).to(out_dtype)


@st.composite
def cases(draw):
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    group = draw(st.sampled_from([32, 64, 256]))
    k = group * draw(st.integers(1, 4))
    n = 8 * draw(st.integers(1, 5))
    m = draw(st.integers(1, 6))
    x1 = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    x1[0, 0] = -128
    w = torch.randint(-8, 8, (k, n), dtype=torch.int32, generator=gen)
    w[0, :2] = torch.tensor([-8, 7])
    scale = torch.rand(k // group, n, generator=gen) * draw(st.sampled_from([1.0, 0.01, 30.0]))
    offset = torch.randn(n, generator=gen) if draw(st.booleans()) else None
    pertoken = torch.randn(draw(st.sampled_from([(m,), (m, 1)])), generator=gen) * 0.01
    out = draw(st.sampled_from([torch.float16, torch.bfloat16]))
    use_int64 = draw(st.booleans())
    groups = draw(st.sampled_from([[0, 0, group], [1, 1, group]]))
    return x1, w, scale, offset, pertoken, out, use_int64, groups, group


@given(cases())
def test_matches_documented_rule_bit_for_bit(case):
    x1, w, scale, offset, pertoken, out, use_int64, groups, group = case
    packed = npuquant.npu_convert_weight_to_int4pack(w)
    s = npuquant.npu_trans_quant_param(scale.reshape(-1)).reshape(scale.shape) if use_int64 else scale
    y = qmm(x1, packed, s, offset=offset, pertoken_scale=pertoken, output_dtype=out, group_sizes=groups)
    s_eff = fp19(scale.numpy()) if use_int64 else scale.numpy()
    assert_same_bits(y, golden(x1, w, s_eff, offset, pertoken, group, out))


def test_vendor_case_shapes():
    """op-plugin's A8W4 test setup (M=1, K=8192, N=1024, group 256, int64 scale, y_offset, x1_scale (M, 1))."""
    gen = torch.Generator().manual_seed(0)
    m, k, n, group = 1, 8192, 128 * 8, 256
    x1 = torch.randint(-128, 128, [m, k], dtype=torch.int8, generator=gen)
    x2 = torch.randint(1, 8, (k, n), dtype=torch.int32, generator=gen)
    y_offset = torch.randn([n], generator=gen)
    x1_scale = torch.randn([m, 1], generator=gen) * 0.01
    x2_scale = torch.rand([k // group, n], generator=gen)
    scale64 = npuquant.npu_trans_quant_param(x2_scale.reshape(-1)).reshape(k // group, n)
    for out in (torch.float16, torch.bfloat16):
        y = qmm(x1, npuquant.npu_convert_weight_to_int4pack(x2), scale64, offset=y_offset, pertoken_scale=x1_scale,
                output_dtype=out, group_sizes=[0, 0, group])
        assert_same_bits(y, golden(x1, x2, fp19(x2_scale.numpy()), y_offset, x1_scale, group, out))


def test_worked_example_and_the_client_correction():
    # x1 = [[8, 24, -8, 0]], w column = [1, 2, 3, -1], one group, scale 1:
    # halves: hi = [0, 1, -1, 0], lo = [0, 0, 0, -8]  (16*hi + lo = x1 - 8 = [0, 16, -16, -8])
    # hi @ w = 2 - 3 = -1, lo @ w = 8  ->  v = -1 * 16 + 8 = -8  = (x1 - 8) @ w
    x1 = torch.tensor([[8, 24, -8, 0]], dtype=torch.int8)
    w = torch.tensor([[1], [2], [3], [-1]], dtype=torch.int32).expand(4, 8).contiguous()
    packed = npuquant.npu_convert_weight_to_int4pack(w)
    y = qmm(x1, packed, torch.ones(1, 8), output_dtype=torch.float16, group_sizes=[0, 0, 0])
    assert y.tolist() == [[-8.0] * 8]
    # clients add 8 * sum_k(w * s) back as the offset, recovering x1 @ w = 8 + 48 - 24 + 0 = 32
    correction = 8 * w.sum(0).float()
    y = qmm(x1, packed, torch.ones(8), offset=correction, pertoken_scale=torch.ones(1), output_dtype=torch.bfloat16)
    assert y.tolist() == [[32.0] * 8]


def test_float16_group_accumulation_is_visible():
    # Group 0's low-half partial is 2048 (x1 = 15 -> lo 7, w 7, scale 2048/49: 49 * s rounds to 2048),
    # group 1's is 1; float16 2048 + 1 rounds to 2048 (ties to even), so the result is 2048 where an
    # exact accumulation would give 2049.
    k, group = 64, 32
    x1 = torch.full((1, k), 8, dtype=torch.int8)  # 8 -> hi 0, lo 0
    x1[0, 0], x1[0, 32] = 15, 9  # lo 7 and lo 1, hi 0
    w = torch.zeros(k, 8, dtype=torch.int32)
    w[0], w[32] = 7, 1
    s = torch.tensor([[2048.0 / 49] * 8, [1.0] * 8])
    y = qmm(x1, npuquant.npu_convert_weight_to_int4pack(w), s, output_dtype=torch.float16, group_sizes=[0, 0, group])
    assert float(np.float16(np.float32(49) * np.float32(2048.0 / 49))) == 2048.0
    assert y.tolist() == [[2048.0] * 8]
    assert_same_bits(y, golden(x1, w, s.numpy(), None, None, group, torch.float16))


# ---------------------------------------------------------------- argument rules


def _args():
    x1 = torch.randint(-128, 128, (2, 64), dtype=torch.int8)
    x2 = npuquant.npu_convert_weight_to_int4pack(torch.randint(-8, 8, (64, 16), dtype=torch.int32))
    return x1, x2, torch.rand(2, 16)


def _raises(message, *args, **kwargs):
    with pytest.raises(RuntimeError) as info:
        qmm(*args, **kwargs)
    assert message in str(info.value), str(info.value)


def test_argument_rules():
    x1, x2, s = _args()
    kw = {"output_dtype": torch.float16, "group_sizes": [0, 0, 32]}
    _raises("A8W4 output_dtype must be float16 or bfloat16, but output_dtype is torch.int8", x1, x2, s,
            output_dtype=torch.int8, group_sizes=[0, 0, 32])
    _raises("x1 dim num should be 2 when x1 is int8 and x2 is int32 (A8W4), but it is 3", x1.unsqueeze(0), x2, s, **kw)
    _raises("x2 dim num should be 2 when x1 is int8 and x2 is int32 (A8W4), but it is 3", x1, x2.unsqueeze(0), s, **kw)
    _raises("x2 must be a contiguous (k, n/8) int32 tensor with k = 64", x1, x2.t().contiguous().t(), s, **kw)
    _raises("x2 must be a contiguous (k, n/8) int32 tensor with k = 32", x1[:, :32], x2, s, **kw)
    _raises("group_sizes only support input with three elements, but got 2", x1, x2, s, output_dtype=torch.float16,
            group_sizes=[0, 32])
    _raises("A8W4 group_sizes must be [0, 0, G] or [1, 1, G], but got [1, 0, 32]", x1, x2, s,
            output_dtype=torch.float16, group_sizes=[1, 0, 32])
    _raises("k (64) must be a multiple of the A8W4 group size 48", x1, x2, s, output_dtype=torch.float16,
            group_sizes=[0, 0, 48])
    _raises("A8W4 scale's type supported for int64 and float32, but scale.dtype is torch.bfloat16", x1, x2,
            s.bfloat16(), **kw)
    _raises("A8W4 scale's shape must be (2, 16) (k / group size, n), but it is (16,)", x1, x2, s[0], **kw)
    _raises("A8W4 offset's shape must be (16,), but it is (1, 16)", x1, x2, s, offset=torch.ones(1, 16), **kw)
    _raises("offset's type supported for float32", x1, x2, s, offset=torch.ones(16).half(), **kw)
    _raises("A8W4 pertoken_scale's shape must be (2,) or (2, 1), but it is (3,)", x1, x2, s,
            pertoken_scale=torch.ones(3), **kw)
    _raises("pertoken_scale's type supported for float32", x1, x2, s, pertoken_scale=torch.ones(2).half(), **kw)
    _raises("bias must be None for A8W4", x1, x2, s, bias=torch.ones(16), **kw)
    _raises("QuantMatmul not support to process empty tensor currently.", x1[:0], x2, s, **kw)
    _raises("scale must be on the same device as x1", x1, x2, s.to("meta"), **kw)
    # without groups the scale is per channel
    assert qmm(x1, x2, torch.rand(16), output_dtype=torch.float16).shape == (2, 16)


def test_int8_x1_with_int8_x2_is_still_a8w8():
    x1 = torch.randint(-128, 128, (2, 16), dtype=torch.int8)
    with pytest.raises(RuntimeError, match="x1's type and x2's type should be same"):
        qmm(x1.to(torch.int32), torch.zeros(16, 2, dtype=torch.int8), torch.rand(1))


# ---------------------------------------------------------------- operator


def test_opcheck():
    x1, x2, s = _args()
    q = npuquant.npu_trans_quant_param(s.reshape(-1)).reshape(2, 16)
    for scale in (s, q):
        args = (x1, x2, scale, torch.randn(16), torch.rand(2, 1), 32, torch.float16)
        torch.library.opcheck(torch.ops.npuquant.quant_matmul_a8w4.default, args)


def test_compile_fullgraph_dynamic():
    def fn(x1, x2, s, pertoken):
        return qmm(x1, x2, s, pertoken_scale=pertoken, output_dtype=torch.bfloat16, group_sizes=[0, 0, 32])

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    _, x2, s = _args()
    for m in (1, 3, 5):
        x1, pertoken = torch.randint(-128, 128, (m, 64), dtype=torch.int8), torch.rand(m)
        assert_same_bits(compiled(x1, x2, s, pertoken), fn(x1, x2, s, pertoken))


def test_validate_returns_group():
    x1, x2, s = _args()
    assert a8w4.validate(x1, x2, s, None, None, None, torch.float16, [1, 1, 32]) == (2, 64, 16, 32)
    assert a8w4.validate(x1, x2, s[:1], None, None, None, torch.float16, None) == (2, 64, 16, 64)
