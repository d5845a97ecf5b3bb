"""The w4a8 scheme: the exact int4 x int8 product (torch.ops.npuquant.gemm_s4, csrc/gemm_s4.c) bit for bit
against its pure-torch reference on every kernel variant and thread count, the W4A8Linear layer and
its operator, quantize_model, error paths, opcheck and compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits
from npuquant import _native
from npuquant.nn import linear as lin
from npuquant.nn.linear import W4A8Linear

gemm_s4 = torch.ops.npuquant.gemm_s4.default
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def operands(gen, m, k, n, group, extremes=True):
    kp = -(-k // group) * group
    q = torch.randint(-128, 128, (m, k), dtype=torch.int8, generator=gen)
    w = torch.randint(-8, 8, (n, kp), dtype=torch.int32, generator=gen)
    if extremes:
        q[0, : min(k, 2)] = torch.tensor([-128, 127])[: min(k, 2)]
        w[0, :2] = torch.tensor([-8, 7])
        w[-1, -2:] = torch.tensor([7, -8])
    packed = npuquant.npu_convert_weight_to_int4pack(w)
    scale = torch.rand(kp // group, n, generator=gen) * 0.1
    offset = torch.randn(kp // group, n, generator=gen)
    return q, torch.rand(m, generator=gen), packed, scale, offset, torch.randn(n, generator=gen)


def golden(q, q_scale, packed, scale, offset, bias, out_dtype):
    """The rule of csrc/gemm_s4.c's header in numpy (float32 scalar steps)."""
    m, k = q.shape
    groups, n = scale.shape
    w = npuquant.ops.int4.reference.unpack_int4(packed).numpy().astype(np.int64)
    g = w.shape[1] // groups
    x = np.zeros((m, w.shape[1]), dtype=np.int64)
    x[:, :k] = q.numpy()
    f = np.zeros((m, n), dtype=np.float32)
    for i in range(groups):
        sl = slice(i * g, (i + 1) * g)
        a = (x[:, sl] @ w[:, sl].T).astype(np.float32)
        s = x[:, sl].sum(1).astype(np.float32).reshape(m, 1)
        f = f + (a + offset.numpy()[i] * s) * scale.numpy()[i]
    y = f * q_scale.numpy().reshape(m, 1)
    if bias is not None:
        y = y + bias.numpy()
    return torch.from_numpy(y).to(out_dtype)


SHAPES = [(1, 64, 16, 32), (1, 576, 40, 32), (3, 100, 13, 32), (8, 33, 9, 32), (9, 256, 17, 64), (70, 96, 24, 32),
          (2, 40, 9, 8), (5, 24, 7, 16), (1, 1, 1, 8), (2, 64, 8, 64),
          # decode's vpmaddubsw kernel: G = 32 with an odd group count (a last half chunk), G = 128;
          # G = 96 (a multiple of 32, not of 64) keeps the int16 kernel
          (1, 90, 11, 32), (8, 160, 8, 32), (4, 300, 10, 128), (2, 200, 9, 96), (12, 300, 10, 128),
          (20, 200, 9, 96),
          # prefill's panel kernel (m > 8): k not a multiple of 4, n not of 16, rows past a 4-row tile
          # and a 64-row block, groups of 2 and 3 chunks of 32 (G = 64, 96), G = 128
          (9, 33, 17, 32), (13, 256, 16, 128), (67, 200, 33, 64), (130, 96, 40, 96), (65, 64, 31, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_gemm_s4_native_matches_reference_every_isa(shape, isa):
    gen = torch.Generator().manual_seed(hash(shape) % 2**31)
    q, qs, packed, scale, offset, bias = operands(gen, *shape)
    for dt in DTYPES:
        for b in (bias, None):
            expected = lin._gemm_s4_reference(q, qs, packed, scale, offset, b, dt)
            assert_same_bits(gemm_s4(q, qs, packed, scale, offset, b, dt), expected)


@pytest.mark.parametrize("m", [1, 12])
@pytest.mark.parametrize("xv", [-128, 127])
@pytest.mark.parametrize("wv", [-8, 7])
def test_int16_extremes(m, xv, wv, isa):
    """Every activation -128 or 127 against every weight -8 or 7: the panel kernel's int16 lanes start at
    -8 x sum x and pass through values beyond int16 (|.| up to 16384 + 30720) that wrap back exactly."""
    k, n, group = 96, 24, 32
    q = torch.full((m, k), xv, dtype=torch.int8)
    packed = npuquant.npu_convert_weight_to_int4pack(torch.full((n, k), wv, dtype=torch.int32))
    scale, offset = torch.ones(k // group, n), torch.zeros(k // group, n)
    out = gemm_s4(q, torch.ones(m), packed, scale, offset, None, torch.float32)
    assert torch.equal(out, torch.full((m, n), float(xv * wv * k)))


def test_reference_matches_numpy_golden():
    gen = torch.Generator().manual_seed(7)
    for shape in SHAPES[:6]:
        q, qs, packed, scale, offset, bias = operands(gen, *shape)
        for dt in DTYPES:
            assert_same_bits(lin._gemm_s4_reference(q, qs, packed, scale, offset, bias, dt),
                             golden(q, qs, packed, scale, offset, bias, dt))


def test_threads_give_the_same_bits(threads):
    gen = torch.Generator().manual_seed(8)
    for m in (1, 4, 130):
        q, qs, packed, scale, offset, bias = operands(gen, m, 320, 200, 32)
        expected = lin._gemm_s4_reference(q, qs, packed, scale, offset, bias, torch.bfloat16)
        assert_same_bits(gemm_s4(q, qs, packed, scale, offset, bias, torch.bfloat16), expected)


@given(st.integers(0, 2**31 - 1), st.integers(1, 12), st.integers(1, 130), st.integers(1, 40),
       st.sampled_from([8, 16, 32, 64]))
def test_gemm_s4_random(seed, m, k, n, group):
    gen = torch.Generator().manual_seed(seed)
    q, qs, packed, scale, offset, bias = operands(gen, m, k, n, group)
    expected = lin._gemm_s4_reference(q, qs, packed, scale, offset, bias, torch.float32)
    assert_same_bits(gemm_s4(q, qs, packed, scale, offset, bias, torch.float32), expected)


def test_worked_example():
    # k = 8, one group: x = [1, 2, 0, ...], w row = [3, -8, 0, ...]: a = 3 - 16 = -13, s = 3;
    # (a + offset * s) * scale = (-13 + 0.5 * 3) * 2 = -23; * x_scale 0.5 = -11.5; + bias 1 = -10.5
    q = torch.tensor([[1, 2, 0, 0, 0, 0, 0, 0]], dtype=torch.int8)
    w = npuquant.npu_convert_weight_to_int4pack(torch.tensor([[3, -8, 0, 0, 0, 0, 0, 0]], dtype=torch.int32))
    y = gemm_s4(q, torch.tensor([0.5]), w, torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.tensor([1.0]),
                torch.float32)
    assert y.tolist() == [[-10.5]]


# ---------------------------------------------------------------- the layer


def test_layer_native_matches_reference_and_float(isa):
    torch.manual_seed(0)
    base = torch.nn.Linear(100, 24)
    layer = W4A8Linear.from_linear(base, group_size=32)
    assert layer.weight.shape == (24, 16) and layer.weight_scale.shape == (4, 24)
    for dt in DTYPES:
        layer_dt = W4A8Linear.from_linear(base.to(dt), group_size=32)
        x = torch.randn(2, 3, 100).to(dt)
        y = layer_dt(x)
        with _native.force_reference():
            assert_same_bits(y, layer_dt(x))
        assert y.shape == (2, 3, 24) and y.dtype == dt
        base = base.float()
    x = torch.randn(5, 100)
    ref = torch.nn.functional.linear(x, layer.dequantize(), base.bias)
    assert (layer(x) - ref).abs().max() < 0.05 * ref.abs().max()


def test_layer_reads_buffers_each_call():
    layer = W4A8Linear.from_linear(torch.nn.Linear(64, 8), group_size=32)
    x = torch.randn(1, 64)
    y0 = layer(x)
    layer.weight_scale.mul_(2)
    assert not torch.equal(layer(x), y0)


def test_quantize_model_and_save_load(tmp_path):
    pytest.importorskip("safetensors")
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 64)
    npuquant.quantize_model(model, "w4a8", group_size=32)
    assert isinstance(model[0], W4A8Linear) and model[0].group_size == 32
    y = model(x)
    path = str(tmp_path / "m.safetensors")
    npuquant.save_quantized(model, path)
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    npuquant.load_quantized(fresh, path)
    assert torch.equal(fresh(x), y)
    with pytest.raises(ValueError, match="smooth_scales apply to the w8a8 schemes only, not w4a8"):
        npuquant.quantize_model(torch.nn.Sequential(torch.nn.Linear(8, 8)), "w4a8", group_size=8,
                                smooth_scales={"0": torch.ones(8)})


def test_layer_rejects_bad_group_size():
    with pytest.raises(ValueError, match="group_size must be a positive multiple of 8, got 12"):
        W4A8Linear(64, 8, group_size=12)


# ---------------------------------------------------------------- operator errors, opcheck, compile


def _fails(message, *args):
    with pytest.raises(RuntimeError) as info:
        gemm_s4(*args)
    assert message in str(info.value), str(info.value)


def test_gemm_s4_errors():
    gen = torch.Generator().manual_seed(9)
    q, qs, packed, scale, offset, bias = operands(gen, 2, 64, 16, 32)
    f32 = torch.float32
    _fails("npuquant::gemm_s4: x_q must be int8, but got int32", q.int(), qs, packed, scale, offset, bias, f32)
    _fails("npuquant::gemm_s4: out_dtype must be float32, float16 or bfloat16, but got int8", q, qs, packed, scale,
           offset, bias, torch.int8)
    _fails("npuquant::gemm_s4: x_q must be 2-D (m, k), but has shape [64]", q[0], qs, packed, scale,
           offset, bias, f32)
    _fails("npuquant::gemm_s4: x_scale must be 1-D of length 2, but has shape [3]", q, torch.ones(3), packed, scale,
           offset, bias, f32)
    _fails("npuquant::gemm_s4: weight holds 64 columns, fewer than the 72 of x", torch.zeros(2, 72, dtype=torch.int8),
           qs, packed, scale, offset, bias, f32)
    _fails("npuquant::gemm_s4: weight must have a unit column stride", q, qs, packed.t().contiguous().t(), scale,
           offset, bias, f32)
    _fails("npuquant::gemm_s4: weight_scale and weight_offset must be (groups, n) with groups dividing K/8 = 8, but "
           "have shapes [3, 16] and [2, 16]", q, qs, packed, torch.ones(3, 16), offset, bias, f32)
    _fails("npuquant::gemm_s4: weight_scale and weight_offset must be contiguous", q, qs, packed,
           torch.ones(16, 2).t(), torch.ones(16, 2).t(), bias, f32)
    _fails("npuquant::gemm_s4: bias must be 1-D of length 16, but has shape [8]", q, qs, packed, scale, offset,
           bias[:8], f32)
    _fails("npuquant::gemm_s4: weight_scale must be float32, but got float16", q, qs, packed, scale.half(), offset,
           bias, f32)


def test_opcheck():
    gen = torch.Generator().manual_seed(10)
    q, qs, packed, scale, offset, bias = operands(gen, 3, 64, 16, 32)
    for b in (bias, None):
        torch.library.opcheck(gemm_s4, (q, qs, packed, scale, offset, b, torch.bfloat16))
    layer = W4A8Linear.from_linear(torch.nn.Linear(64, 16), group_size=32)
    args = (torch.randn(2, 64), layer.weight, layer.weight_scale, layer.weight_offset, layer.bias)
    torch.library.opcheck(torch.ops.npuquant.linear_w4a8.default, args)


def test_compile_fullgraph_dynamic():
    layer = W4A8Linear.from_linear(torch.nn.Linear(64, 16), group_size=32)
    compiled = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    for m in (1, 3, 9):
        x = torch.randn(m, 64)
        assert_same_bits(compiled(x), layer(x))
