"""quant_matmul_asymmetric: native == pure-torch twin bit for bit; twin == the documented float32 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits, random_int8
from npuquant.ops.quant_matmul import asymmetric

OUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make_case(seed: int, m: int, k: int, n: int, mode: str = "full"):
    """x_q (m, k), x_scale, x_offset (m,), weight = w.t() of a contiguous (n, k) w, w_scale, bias (n,)."""
    gen = torch.Generator().manual_seed(seed)
    if mode == "neg128":
        x_q = torch.full((m, k), -128, dtype=torch.int8)
        w = torch.full((n, k), -128, dtype=torch.int8)
    else:
        x_q = random_int8(m, k, generator=gen)
        w = random_int8(n, k, generator=gen)
    x_scale = torch.rand(m, generator=gen) / 100
    x_offset = (torch.rand(m, generator=gen) - 0.5) * 600  # float zero points, as dynamic quant makes them
    w_scale = torch.rand(n, generator=gen) / 100
    bias = torch.randn(n, generator=gen)
    return x_q, x_scale, x_offset, w.t(), w_scale, bias


@given(
    m=st.integers(1, 19),
    k=st.integers(1, 200),
    n=st.integers(1, 40),
    out=st.sampled_from(OUT_DTYPES),
    with_bias=st.booleans(),
    scalar_w_scale=st.booleans(),
    mode=st.sampled_from(["full", "neg128"]),
    weight_layout=st.sampled_from(["w.t()", "contiguous (k, n)"]),
    seed=st.integers(0, 2**31 - 1),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the ISA cap holds for every example
def test_native_matches_twin(isa, m, k, n, out, with_bias, scalar_w_scale, mode, weight_layout, seed):
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(seed, m, k, n, mode)
    if weight_layout != "w.t()":
        w = w.contiguous()
    if scalar_w_scale:
        w_scale = w_scale[:1]
    bias = bias if with_bias else None
    got = npuquant.quant_matmul_asymmetric(x_q, x_scale, x_offset, w, w_scale, bias, output_dtype=out)
    want = asymmetric.reference(x_q, x_scale, x_offset, w, w_scale, bias, out)
    assert got.dtype == out and got.shape == (m, n) and got.is_contiguous()
    assert_same_bits(got, want)


def test_twin_follows_documented_steps():
    """Independent numpy float32 evaluation of the docstring's steps (numpy float32 math has no FMA)."""
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(7, 6, 50, 9)
    acc = x_q.numpy().astype(np.int64) @ w.numpy().astype(np.int64)
    colsum = w.numpy().astype(np.int64).sum(0)
    f = np.float32
    expected = np.empty(acc.shape, dtype=np.float32)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            v = f(acc[i, j]) - f(f(x_offset[i].item()) * f(colsum[j]))
            v = f(v * f(w_scale[j].item()))
            v = f(v * f(x_scale[i].item()))
            expected[i, j] = f(v + f(bias[j].item()))
    got = asymmetric.reference(x_q, x_scale, x_offset, w, w_scale, bias, torch.float32)
    assert_same_bits(got, torch.from_numpy(expected))


def test_approximates_float_matmul():
    """End to end with npu_dynamic_quant_asymmetric: close to the float matmul it stands for."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(8, 256, generator=gen) + 0.7  # not centred: the zero point matters
    w_float = torch.randn(64, 256, generator=gen) / 16
    w_scale = w_float.abs().amax(1) / 127
    w_q = torch.round(w_float / w_scale.unsqueeze(1)).to(torch.int8)
    x_q, x_scale, x_offset = npuquant.npu_dynamic_quant_asymmetric(x.to(torch.float16))
    got = npuquant.quant_matmul_asymmetric(x_q, x_scale, x_offset, w_q.t(), w_scale)
    want = x @ w_float.t()
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_leading_dims_and_strides():
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(5, 12, 40, 17)
    x3 = x_q.reshape(3, 4, 40)
    got = npuquant.quant_matmul_asymmetric(
        x3, x_scale.reshape(3, 4), x_offset.reshape(3, 4), w, w_scale, bias, output_dtype=torch.bfloat16
    )
    flat = npuquant.quant_matmul_asymmetric(x_q, x_scale, x_offset, w, w_scale, bias, output_dtype=torch.bfloat16)
    assert got.shape == (3, 4, 17)
    assert_same_bits(got.reshape(12, 17), flat)
    strided = torch.randint(-128, 128, (12, 80), dtype=torch.int8)[:, ::2]
    got = npuquant.quant_matmul_asymmetric(strided, x_scale, x_offset, w, w_scale, bias)
    want = asymmetric.reference(strided, x_scale, x_offset, w, w_scale, bias, torch.float32)
    assert_same_bits(got, want)
    one_row = npuquant.quant_matmul_asymmetric(x_q[3], x_scale[3], x_offset[3], w, w_scale, bias)  # 1-D x_q
    assert one_row.shape == (17,)
    row = asymmetric.reference(x_q[3:4], x_scale[3:4], x_offset[3:4], w, w_scale, bias, torch.float32)[0]
    assert_same_bits(one_row, row)


def test_dtype_codes_and_low_precision_inputs():
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(2, 4, 30, 8)
    got = npuquant.quant_matmul_asymmetric(
        x_q, x_scale, x_offset, w, w_scale.to(torch.bfloat16), bias.to(torch.float16), output_dtype=5
    )
    want = asymmetric.reference(
        x_q, x_scale, x_offset, w, w_scale.to(torch.bfloat16), bias.to(torch.float16), torch.float16
    )
    assert got.dtype == torch.float16
    assert_same_bits(got, want)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(x_q=torch.zeros(4, 30)), "x_q must be int8"),
        (dict(x_scale=torch.zeros(4, dtype=torch.float64)), "x_scale must be float32"),
        (dict(x_offset=torch.zeros(5)), "x_offset must have shape"),
        (dict(weight=torch.zeros(30, 8)), "weight must be int8"),
        (dict(weight=torch.zeros(2, 30, 8, dtype=torch.int8)), "weight must be 2-D"),
        (dict(weight=torch.zeros(31, 8, dtype=torch.int8)), "k of x_q"),
        (dict(w_scale=torch.zeros(3)), "w_scale must be 1-D of length 1 or n"),
        (dict(w_scale=torch.zeros(8, dtype=torch.float16)), "w_scale must be float32 or bfloat16"),
        (dict(bias=torch.zeros(8, dtype=torch.int32)), "bias must be float32"),
        (dict(bias=torch.zeros(7)), "bias must be 1-D of length n"),
        (dict(output_dtype=torch.int8), "output_dtype must be float32"),
        (dict(output_dtype=999), "output_dtype must be float32"),
        (dict(x_scale=torch.zeros(4, device="meta")), "x_scale must be on x_q's device"),
    ],
)
def test_errors(change, message):
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(1, 4, 30, 8)
    args = dict(x_q=x_q, x_scale=x_scale, x_offset=x_offset, weight=w, w_scale=w_scale, bias=bias)
    args.update(change)
    with pytest.raises(RuntimeError, match=message):
        npuquant.quant_matmul_asymmetric(**args)


def test_errors_k_limit():
    k = asymmetric.MAX_K + 1
    x_q = torch.zeros(1, k, dtype=torch.int8)
    w = torch.zeros(1, k, dtype=torch.int8).t()
    with pytest.raises(RuntimeError, match="k must be at most 131071"):
        npuquant.quant_matmul_asymmetric(x_q, torch.ones(1), torch.zeros(1), w, torch.ones(1))


@pytest.mark.parametrize("name", ["x_q", "x_scale", "x_offset", "weight", "w_scale", "bias"])
@pytest.mark.parametrize("bad", [None, [[1]], 2.0])
def test_non_tensor_arguments_are_type_errors(name, bad):
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(1, 4, 30, 8)
    args = dict(x_q=x_q, x_scale=x_scale, x_offset=x_offset, weight=w, w_scale=w_scale, bias=bias)
    if name == "bias" and bad is None:
        return  # bias is optional
    args[name] = bad
    kind = "a torch.Tensor or None" if name == "bias" else "a torch.Tensor"
    with pytest.raises(TypeError, match=rf"quant_matmul_asymmetric\(\): argument '{name}' must be {kind}, but got"):
        npuquant.quant_matmul_asymmetric(**args)


@pytest.mark.parametrize("m", [3, 12])
def test_k_zero(m):
    """k = 0: the integer product is 0, only the bias remains (native and reference)."""
    x_q = torch.zeros(m, 0, dtype=torch.int8)
    w = torch.zeros(5, 0, dtype=torch.int8)
    x_scale, x_offset, w_scale, bias = torch.rand(m), torch.randn(m), torch.rand(5), torch.randn(5)
    for weight in (w.t(), torch.zeros(0, 5, dtype=torch.int8)):
        got = npuquant.quant_matmul_asymmetric(x_q, x_scale, x_offset, weight, w_scale, bias)
        want = asymmetric.reference(x_q, x_scale, x_offset, weight, w_scale, bias, torch.float32)
        assert_same_bits(got, want)
        assert_same_bits(got, bias.expand(m, 5).contiguous())


# ---------------------------------------------------------------- results follow the inputs (no caches, issue 15)

EDITS = ["data", "numpy", "from_numpy", "in place"]


def aliased(t: torch.Tensor, how: str):
    """A copy of ``t`` and a function writing into it through ``.data``, ``t.numpy()``, the numpy
    array it was made from (``torch.from_numpy``) or plain indexing (``in place``)."""
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


@pytest.mark.parametrize("how", EDITS)
@pytest.mark.parametrize("m", [3, 12], ids=["gemv", "packed"])
@pytest.mark.parametrize("target", ["weight (n, k) as w.t()", "weight (k, n)", "w_scale", "x_offset", "x_q"])
def test_results_follow_edited_inputs(target, m, how):
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(m, m, 48, 40)
    args = dict(x_q=x_q, x_scale=x_scale, x_offset=x_offset, weight=w, w_scale=w_scale, bias=bias)
    key, original, view = {
        "weight (n, k) as w.t()": ("weight", w.t(), lambda t: t.t()),
        "weight (k, n)": ("weight", w.contiguous(), lambda t: t),
        "w_scale": ("w_scale", w_scale, lambda t: t),
        "x_offset": ("x_offset", x_offset, lambda t: t),
        "x_q": ("x_q", x_q, lambda t: t),
    }[target]
    new_values = random_int8(*original.shape) if original.dtype == torch.int8 else torch.rand(original.shape) * 9
    alias, edit = aliased(original, how)
    args[key] = view(alias)

    def fresh():
        return npuquant.quant_matmul_asymmetric(**{k: v.clone() for k, v in args.items()})

    before = npuquant.quant_matmul_asymmetric(**args)
    assert_same_bits(before, fresh())
    edit(..., new_values)
    after = npuquant.quant_matmul_asymmetric(**args)
    assert torch.equal(alias, new_values) and not torch.equal(after, before)
    assert_same_bits(after, fresh())
    assert_same_bits(after, asymmetric.reference(*(v.clone() for v in args.values()), torch.float32))
    edit((0,) * alias.dim(), new_values.flatten()[-1])
    assert_same_bits(npuquant.quant_matmul_asymmetric(**args), fresh())


def test_custom_op_registration_and_compile():
    x_q, x_scale, x_offset, w, w_scale, bias = make_case(4, 6, 24, 10)
    torch.library.opcheck(
        torch.ops.npuquant.quant_matmul_asymmetric.default,
        (x_q, x_scale, x_offset, w, w_scale, bias, torch.bfloat16),
        test_utils=("test_schema", "test_faketensor"),
    )

    def f(xq, xs, xo, weight, ws, b):
        return npuquant.quant_matmul_asymmetric(xq, xs, xo, weight, ws, b, output_dtype=torch.bfloat16) * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x_q, x_scale, x_offset, w, w_scale, bias), f(x_q, x_scale, x_offset, w, w_scale, bias))
