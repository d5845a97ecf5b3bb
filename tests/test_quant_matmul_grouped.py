"""npu_quant_matmul with group_sizes: A4W4 per-group (K-G) and int8 per-block (G-B), bit for bit against
independent numpy implementations of the documented rules, every argument rule, opcheck, compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits

qmm = npuquant.npu_quant_matmul


def pack(values: torch.Tensor) -> torch.Tensor:
    return npuquant.npu_convert_weight_to_int4pack(values.to(torch.int32).contiguous())


# ---------------------------------------------------------------- goldens (numpy, written from the rules)


def golden_a4w4(x: np.ndarray, w: np.ndarray, scale, offset, pertoken, group, out_dtype):
    """op-plugin's cpu_quant_matmul_a4w4_pergroup rule: int matmul per group, float32 sum, * pertoken."""
    m, k = x.shape
    n = w.shape[1]
    acc = np.zeros((m, n), dtype=np.float32)
    off = np.trunc(offset.numpy().astype(np.float32)).astype(np.int64)
    for gi, k0 in enumerate(range(0, k, group)):
        k1 = min(k0 + group, k)
        part = (x[:, k0:k1].astype(np.int64) @ (w[k0:k1].astype(np.int64) - off[gi])).astype(np.float32)
        acc = acc + part * scale.numpy()[gi]
    out = acc * pertoken.numpy().reshape(m, 1)
    return torch.from_numpy(out.astype(np.float32)).to(out_dtype)


def golden_perblock(x1, x2, scale, pertoken, bias):
    x, w = x1.numpy().astype(np.int64), x2.numpy().astype(np.int64)
    m, k = x.shape
    n = w.shape[1]
    s2 = scale.numpy()[np.arange(n) // 128]  # (n, kb)
    acc = np.zeros((m, n), dtype=np.float32)
    for j, k0 in enumerate(range(0, k, 128)):
        part = (x[:, k0:k0 + 128] @ w[k0:k0 + 128]).astype(np.float32)
        acc = acc + part * (pertoken.numpy()[:, j:j + 1] * s2[:, j].reshape(1, n))
    if bias is not None:
        acc = acc + bias.numpy().reshape(1, n)
    return torch.from_numpy(acc).to(torch.bfloat16)


# ---------------------------------------------------------------- A4W4 per-group


def a4w4_case(gen, m, k, n, group, along_k=True):
    x = torch.randint(-8, 8, (m, k), dtype=torch.int32, generator=gen)
    x[0, :2] = torch.tensor([-8, 7])
    w = torch.randint(-8, 8, (k, n), dtype=torch.int32, generator=gen)
    w[:2, 0] = torch.tensor([-8, 7])
    count = -(-k // group)
    scale = torch.rand(count, n, generator=gen) * 0.01
    offset = torch.randint(-3, 4, (count, n), generator=gen).to(torch.float16)
    pertoken = torch.rand(m, 1, generator=gen)
    x2 = pack(w.t()).t() if along_k else pack(w)  # (k/8, n) view of (n, k/8), or (k, n/8)
    return x.numpy(), w.numpy(), pack(x), x2, scale, offset, pertoken


@pytest.mark.parametrize("along_k", [True, False])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_a4w4_pergroup_matches_golden(along_k, out_dtype):
    gen = torch.Generator().manual_seed(1)
    x, w, x1, x2, scale, offset, pertoken = a4w4_case(gen, 5, 512, 24, 256, along_k)
    y = qmm(x1, x2, scale, offset=offset, pertoken_scale=pertoken, output_dtype=out_dtype, group_sizes=[1, 1, 256])
    assert_same_bits(y, golden_a4w4(x, w, scale, offset, pertoken, 256, out_dtype))
    y0 = qmm(x1, x2, scale, offset=offset, pertoken_scale=pertoken, output_dtype=out_dtype, group_sizes=[0, 0, 256])
    assert_same_bits(y0, y)
    # no group_sizes: inferred from the scale's shape (k / rows)
    assert_same_bits(qmm(x1, x2, scale, offset=offset, pertoken_scale=pertoken, output_dtype=out_dtype), y)


@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 12), st.sampled_from([8, 16, 32, 40]),
       st.integers(1, 3))
def test_a4w4_pergroup_random(seed, m, k8, group, n8):
    gen = torch.Generator().manual_seed(seed)
    x, w, x1, x2, scale, offset, pertoken = a4w4_case(gen, m, 8 * k8, 8 * n8, group)
    y = qmm(x1, x2, scale, offset=offset, pertoken_scale=pertoken, output_dtype=torch.float16,
            group_sizes=[1, 1, group])
    assert_same_bits(y, golden_a4w4(x, w, scale, offset, pertoken, group, torch.float16))


def test_a4w4_pergroup_worked_example():
    # k = 16, group 8: x = 1 everywhere, w = 2 everywhere, offsets 1 and -1 (truncated from 1.5 / -1.5)
    x1 = pack(torch.ones(1, 16, dtype=torch.int32))
    x2 = pack(torch.full((16, 8), 2, dtype=torch.int32))
    scale = torch.tensor([[0.5] * 8, [0.25] * 8])
    offset = torch.tensor([[1.5] * 8, [-1.5] * 8], dtype=torch.float16)
    y = qmm(x1, x2, scale, offset=offset, pertoken_scale=torch.tensor([[2.0]]), output_dtype=torch.float16,
            group_sizes=[0, 0, 8])
    # group 0: 8 * (2 - 1) * 0.5 = 4; group 1: 8 * (2 + 1) * 0.25 = 6; (4 + 6) * 2 = 20
    assert torch.equal(y, torch.full((1, 8), 20.0, dtype=torch.float16))


def test_op_plugin_a4w4_pergroup_scenario():
    """op-plugin's test_npu_quant_matmul_a4w4_pergroup, smaller: dynamic int4 x1, asymmetric per-group x2."""
    torch.manual_seed(0)
    x = torch.randint(-5, 5, (16, 512)).to(torch.bfloat16)
    w = torch.randint(-5, 5, (40, 512)).float()
    x1, x1_scale = npuquant.npu_dynamic_quant(x, dst_type=torch.quint4x2)
    wg = w.t().reshape(2, 256, 40)
    lo, hi = wg.amin(1, keepdim=True), wg.amax(1, keepdim=True)
    s = (hi - lo).clamp_min(1e-5) / 14
    zeros = torch.round(-7 - lo / s)
    wq = torch.clamp(torch.round(wg / s) + zeros, -7, 7).reshape(512, 40)
    x2 = pack(wq.t()).t()
    scale, offset = (s.squeeze(1) / 15.0).float(), zeros.squeeze(1).half()
    y = qmm(x1, x2, scale, offset=offset, pertoken_scale=x1_scale.reshape(-1, 1), output_dtype=torch.bfloat16,
            group_sizes=[1, 1, 256])
    expected = golden_a4w4(npuquant.ops.int4.reference.unpack_int4(x1).numpy(), wq.to(torch.int32).numpy(), scale,
                           offset, x1_scale.reshape(-1, 1), 256, torch.bfloat16)
    assert_same_bits(y, expected)


def _raises(message, *args, **kwargs):
    with pytest.raises(RuntimeError) as info:
        qmm(*args, **kwargs)
    assert message in str(info.value), str(info.value)


def test_a4w4_pergroup_errors():
    gen = torch.Generator().manual_seed(2)
    _, _, x1, x2, scale, offset, pertoken = a4w4_case(gen, 2, 64, 16, 32)
    kw = {"offset": offset, "pertoken_scale": pertoken, "output_dtype": torch.float16, "group_sizes": [1, 1, 32]}
    _raises("A4W4 per-group group_sizes must be [0, 0, G] or [1, 1, G], but got [1, 0, 32]", x1, x2, scale,
            **{**kw, "group_sizes": [1, 0, 32]})
    _raises("group_sizes only support input with three elements, but got 2", x1, x2, scale,
            **{**kw, "group_sizes": [1, 32]})
    _raises("group param value must conform to range [0, 65535]", x1, x2, scale, **{**kw, "group_sizes": [1, 1, -1]})
    _raises("output_dtype must be float16 or bfloat16, but output_dtype is torch.int8", x1, x2, scale,
            **{**kw, "output_dtype": None})
    _raises("A4W4 per-group scale's type supported for float32, but scale.dtype is torch.bfloat16", x1, x2,
            scale.bfloat16(), **kw)
    _raises("A4W4 per-group scale must be 2-D", x1, x2, scale[0], **kw)
    _raises("A4W4 per-group scale's shape must be (4, 16) (ceil(k / 16), n), but it is (2, 16)", x1, x2, scale,
            **{**kw, "group_sizes": [1, 1, 16]})
    _raises("group_sizes gives no k group size and none can be inferred: k (64) is not a multiple of scale's first "
            "dim (3)", x1, x2, torch.rand(3, 16), **{**kw, "group_sizes": None})
    _raises("A4W4 per-group quantization needs offset", x1, x2, scale, **{**kw, "offset": None})
    _raises("A4W4 per-group offset's type supported for float16, but offset.dtype is torch.float32", x1, x2, scale,
            **{**kw, "offset": offset.float()})
    _raises("A4W4 per-group offset's shape must equal scale's (2, 16), but it is (1, 16)", x1, x2, scale,
            **{**kw, "offset": offset[:1]})
    _raises("A4W4 per-group quantization needs pertoken_scale", x1, x2, scale, **{**kw, "pertoken_scale": None})
    _raises("pertoken_scale's type supported for float32, but pertoken_scale.dtype is torch.float16", x1, x2, scale,
            **{**kw, "pertoken_scale": pertoken.half()})
    _raises("A4W4 per-group pertoken_scale's shape must be (2, 1), but it is (2,)", x1, x2, scale,
            **{**kw, "pertoken_scale": pertoken.reshape(-1)})
    _raises("bias must be None for A4W4 per-group quantization", x1, x2, scale,
            **{**kw, "bias": torch.zeros(16, dtype=torch.int32)})
    _raises("x1 dim num should be 2 for A4W4 per-group quantization, but it is 3", x1.unsqueeze(0), x2, scale, **kw)
    _raises("x2 dim num should be 2 when x1's dtype is int32", x1, x2.unsqueeze(0), scale, **kw)
    _raises("k dim of x2 should be 8 multiple of k dim of x1", x1, pack(torch.zeros(32, 16)), scale, **kw)
    _raises("QuantMatmul not support to process empty tensor currently.", x1[:0], x2, scale, **kw)
    _raises("scale must be on the same device as x1", x1, x2, scale.to("meta"), **kw)


# ---------------------------------------------------------------- int8 per-block


def perblock_case(gen, m, k, n, bias=True):
    x1 = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    x1[0, 0] = -128
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    w[0, 0] = -128
    kb, nb = -(-k // 128), -(-n // 128)
    scale = torch.rand(nb, kb, generator=gen) * 0.01
    pertoken = torch.rand(m, kb, generator=gen) * 0.01
    b = torch.randn(n, generator=gen) if bias else None
    return x1, w.t(), scale, pertoken, b


@pytest.mark.parametrize("shape", [(3, 512, 256), (2, 300, 130), (1, 128, 1), (4, 7, 9)])
@pytest.mark.parametrize("bias", [True, False])
def test_perblock_matches_golden(shape, bias):
    gen = torch.Generator().manual_seed(3)
    x1, x2, scale, pertoken, b = perblock_case(gen, *shape, bias=bias)
    y = qmm(x1, x2, scale, pertoken_scale=pertoken, bias=b, output_dtype=torch.bfloat16, group_sizes=[1, 128, 128])
    assert_same_bits(y, golden_perblock(x1, x2, scale, pertoken, b))
    # the device wants x2 = w.t(); npuquant reads any strides: a contiguous (k, n) gives the same
    assert_same_bits(qmm(x1, x2.contiguous(), scale, pertoken_scale=pertoken, bias=b, output_dtype=torch.bfloat16,
                         group_sizes=[1, 128, 128]), y)


def test_perblock_worked_example():
    # k = 256 (two blocks), x = 1, w = 1: each block sums to 128; block scales 0.5 * 2 and 0.25 * 4
    x1, x2 = torch.ones(1, 256, dtype=torch.int8), torch.ones(256, 2, dtype=torch.int8)
    y = qmm(x1, x2, torch.tensor([[2.0, 4.0]]), pertoken_scale=torch.tensor([[0.5, 0.25]]),
            bias=torch.tensor([1.0, -1.0]), output_dtype=torch.bfloat16, group_sizes=[1, 128, 128])
    assert torch.equal(y, torch.tensor([[257.0, 255.0]], dtype=torch.bfloat16))


def test_perblock_errors():
    gen = torch.Generator().manual_seed(4)
    x1, x2, scale, pertoken, b = perblock_case(gen, 2, 256, 130)
    kw = {"pertoken_scale": pertoken, "bias": b, "output_dtype": torch.bfloat16, "group_sizes": [1, 128, 128]}
    _raises("per-block quantization supports bfloat16 output only, but output_dtype is torch.float16", x1, x2,
            scale, **{**kw, "output_dtype": torch.float16})
    _raises("per-block scale's type supported for float32, but scale.dtype is torch.bfloat16", x1, x2,
            scale.bfloat16(), **kw)
    _raises("per-block scale's shape must be (2, 2) (ceil(n / 128), ceil(k / 128)), but it is (2,)", x1, x2,
            scale[0], **kw)
    _raises("per-block quantization needs pertoken_scale", x1, x2, scale, **{**kw, "pertoken_scale": None})
    _raises("pertoken_scale's type supported for float32", x1, x2, scale, **{**kw, "pertoken_scale": pertoken.half()})
    _raises("per-block pertoken_scale's shape must be (2, 2) (m, ceil(k / 128)), but it is (2,)", x1, x2, scale,
            **{**kw, "pertoken_scale": pertoken[:, 0]})
    _raises("offset must be None for per-block quantization", x1, x2, scale, **{**kw, "offset": torch.ones(1)})
    _raises("per-block bias's type supported for float32, but bias.dtype is torch.int32", x1, x2, scale,
            **{**kw, "bias": b.int()})
    _raises("per-block bias's shape must be (130,), but it is (1, 130)", x1, x2, scale,
            **{**kw, "bias": b.reshape(1, -1)})
    _raises("x1 dim num should be 2 for per-block quantization, but it is 3", x1.unsqueeze(0), x2, scale, **kw)
    _raises("x2 dim num should be 2 for per-block quantization, but it is 3", x1, x2.unsqueeze(0), scale, **kw)
    _raises("k dim of x1 and x2 need be same", x1[:, :128], x2, scale, **kw)
    _raises("QuantMatmul not support to process empty tensor currently.", x1[:0], x2, scale, **kw)
    _raises("pertoken_scale must be on the same device as x1", x1, x2, scale, **{**kw, "pertoken_scale":
            pertoken.to("meta")})
    # other int8 block shapes keep torch_npu's message
    _raises("when the dtype of input is int8, group_sizes's value must be 0 or [1,128,128], but got [128, 128, 128]",
            x1, x2, scale, **{**kw, "group_sizes": [128, 128, 128]})


# ---------------------------------------------------------------- operators


def test_opcheck():
    gen = torch.Generator().manual_seed(5)
    _, _, x1, x2, scale, offset, pertoken = a4w4_case(gen, 2, 64, 16, 32, along_k=False)
    torch.library.opcheck(torch.ops.npuquant.quant_matmul_a4w4_pergroup.default,
                          (x1, x2, scale, offset, pertoken, 32, torch.bfloat16))
    x1, x2, scale, pertoken, b = perblock_case(gen, 2, 256, 130)
    for bias in (b, None):
        torch.library.opcheck(torch.ops.npuquant.quant_matmul_perblock.default,
                              (x1, x2, scale, pertoken, bias, torch.bfloat16))


def test_compile_fullgraph_dynamic():
    def a4w4(x1, x2, s, o, p):
        return qmm(x1, x2, s, offset=o, pertoken_scale=p, output_dtype=torch.bfloat16, group_sizes=[1, 1, 32])

    def perblock(x1, x2, s, p, b):
        return qmm(x1, x2, s, pertoken_scale=p, bias=b, output_dtype=torch.bfloat16, group_sizes=[1, 128, 128])

    gen = torch.Generator().manual_seed(6)
    fa = torch.compile(a4w4, fullgraph=True, dynamic=True, backend="aot_eager")
    fb = torch.compile(perblock, fullgraph=True, dynamic=True, backend="aot_eager")
    for m in (1, 3, 5):
        _, _, x1, x2, scale, offset, pertoken = a4w4_case(gen, m, 64, 16, 32, along_k=False)
        assert_same_bits(fa(x1, x2, scale, offset, pertoken), a4w4(x1, x2, scale, offset, pertoken))
        args = perblock_case(gen, m, 256, 130)
        assert_same_bits(fb(*args[:3], args[3], args[4]), perblock(*args[:3], args[3], args[4]))
