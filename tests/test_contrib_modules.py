"""npuquant.contrib.module.LinearQuant / LinearA8W8Quant (SPEC §6): constructor and parameters,
the functional equivalence torch_npu's tests use, when the float32 scale goes through
npu_trans_quant_param, every ValueError, A4W4, state_dict round trips, from_float and torch.compile."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import npuquant
from helpers import assert_same_bits, random_int8, random_words
from npuquant.contrib import module as contrib
from npuquant.contrib.module import LinearA8W8Quant, LinearQuant


def new(cls, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return cls(*args, **kwargs)


def configure(model, weight, scale, offset=None, pertoken_scale=None, bias=None):
    model.weight.data = weight
    model.scale.data = scale
    for name, value in (("offset", offset), ("pertoken_scale", pertoken_scale), ("bias", bias)):
        if value is not None:
            getattr(model, name).data = value
    return model


# ---------------------------------------------------------------- construction


def test_a8w8_emits_future_warning_pointing_to_linear_quant():
    with pytest.warns(FutureWarning, match="LinearA8W8Quant is deprecated") as record:
        LinearA8W8Quant(5, 127, bias=False)
    assert "Use npuquant.contrib.module.LinearQuant instead." in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearQuant(5, 127)  # no warning


@pytest.mark.parametrize("cls", [LinearQuant, LinearA8W8Quant])
def test_parameters_as_torch_npu_creates_them(cls):
    m = new(cls, 5, 7)
    assert (m.in_features, m.out_features, m.output_dtype) == (5, 7, None)
    assert m.weight.shape == (7, 5) and m.weight.dtype == torch.float32
    assert m.scale.shape == (7,) and m.scale.dtype == torch.float32
    assert m.bias.shape == (7,) and m.bias.dtype == torch.int32
    assert m.offset is None and m.pertoken_scale is None
    assert all(not p.requires_grad for p in m.parameters())
    m = new(
        cls,
        5,
        7,
        bias=False,
        offset=True,
        pertoken_scale=True,
        output_dtype=torch.bfloat16,
        device="cpu",
        dtype=torch.float16,
    )
    assert m.bias is None and m.output_dtype == torch.bfloat16
    assert m.offset.shape == (7,) and m.offset.dtype == torch.float32
    assert m.pertoken_scale.shape == (7,) and m.pertoken_scale.dtype == torch.float32
    assert set(dict(m.named_parameters())) == {"weight", "scale", "offset", "pertoken_scale"}
    assert "in_features=5" in repr(m)


@pytest.mark.parametrize("cls", [LinearQuant, LinearA8W8Quant])
def test_flags_are_keyword_only(cls):
    with pytest.raises(TypeError):
        new(cls, 5, 7, False)


def test_meta_device_construction():
    m = LinearQuant(4096, 4096, device="meta")
    assert m.weight.device.type == "meta"


# ---------------------------------------------------------------- equivalence with the functional op (SPEC §6.4)


@pytest.mark.parametrize("cls", [LinearQuant, LinearA8W8Quant])
@pytest.mark.parametrize("output_dtype", [None, torch.int8, torch.float16, torch.bfloat16])
def test_matches_functional_op(cls, output_dtype):
    x1, w, scale = random_int8(3, 5), random_int8(127, 5), torch.rand(127) / 100
    m = configure(new(cls, 5, 127, bias=False, output_dtype=output_dtype), w, scale)
    expected = npuquant.npu_quant_matmul(x1, w.t(), scale, output_dtype=output_dtype)
    assert torch.equal(m(x1), expected)
    if output_dtype in (None, torch.int8, torch.float16):  # torch_npu's own formulation
        expected = npuquant.npu_quant_matmul(
            x1, w.t(), npuquant.npu_trans_quant_param(scale), output_dtype=output_dtype
        )
        assert torch.equal(m(x1), expected)


@pytest.mark.parametrize("cls", [LinearQuant, LinearA8W8Quant])
def test_offset_and_int32_bias(cls):
    x1, w = random_int8(4, 9), random_int8(6, 9)
    scale, offset, bias = torch.rand(6) / 50, torch.randn(6) * 10, torch.randint(-999, 999, (6,), dtype=torch.int32)
    m = configure(new(cls, 9, 6, offset=True), w, scale, offset=offset, bias=bias)
    q = npuquant.npu_trans_quant_param(scale, offset)
    assert torch.equal(m(x1), npuquant.npu_quant_matmul(x1, w.t(), q, offset=offset, bias=bias))


@pytest.mark.parametrize("cls", [LinearQuant, LinearA8W8Quant])
@pytest.mark.parametrize(
    "bias_dtype, output_dtype",
    [
        (torch.int32, torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.float16, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
)
def test_pertoken_with_bias(cls, bias_dtype, output_dtype):
    x1, w = random_int8(4, 9), random_int8(6, 9)
    scale, pertoken, bias = torch.rand(6) / 50, torch.rand(4), (torch.randn(6) * 100).to(bias_dtype)
    m = configure(
        new(cls, 9, 6, pertoken_scale=True, output_dtype=output_dtype), w, scale, pertoken_scale=pertoken, bias=bias
    )
    expected = npuquant.npu_quant_matmul(
        x1, w.t(), scale, pertoken_scale=pertoken, bias=bias, output_dtype=output_dtype
    )
    assert torch.equal(m(x1), expected)


@pytest.mark.parametrize("scale_kind", ["int64", "bfloat16"])
def test_non_float32_scales_pass_through(scale_kind):
    x1, w = random_int8(2, 8), random_int8(3, 8)
    if scale_kind == "int64":
        scale, out = npuquant.npu_trans_quant_param(torch.rand(3) / 50), None
    else:
        scale, out = (torch.rand(3) / 50).bfloat16(), torch.bfloat16
    m = configure(new(LinearA8W8Quant, 8, 3, bias=False, output_dtype=out), w, scale)
    assert torch.equal(m(x1), npuquant.npu_quant_matmul(x1, w.t(), scale, output_dtype=out))


def test_batched_weight():
    x1, w = random_int8(2, 4, 16), random_int8(2, 8, 16)  # weight (batch, n, k)
    scale, bias = torch.rand(8) / 50, torch.randint(-99, 99, (2, 1, 8), dtype=torch.int32)
    m = configure(new(LinearQuant, 16, 8, output_dtype=torch.float16), w, scale, bias=bias)
    out = m(x1)
    assert out.shape == (2, 4, 8)
    assert torch.equal(
        out, npuquant.npu_quant_matmul(x1, w.transpose(-1, -2), scale, bias=bias, output_dtype=torch.float16)
    )


def test_linear_quant_int32_output():
    x1, w = random_int8(3, 40), random_int8(5, 40)
    m = configure(new(LinearQuant, 40, 5, bias=False, output_dtype=torch.int32), w, torch.rand(5))
    assert torch.equal(m(x1), x1.int() @ w.int().t())


def test_linear_quant_a4w4():
    """PT test: x1 int32 (1, 2), weight int32 (128, 2), float32 scale, float16 output -> (1, 128)."""
    a = torch.randint(-8, 8, (1, 16), dtype=torch.int8)
    w = torch.randint(-8, 8, (128, 16), dtype=torch.int8)
    x1, x2 = npuquant.pack_int4(a), npuquant.pack_int4(w)
    scale = torch.rand(1)
    m = configure(new(LinearQuant, 16, 128, bias=False, output_dtype=torch.float16), x2, scale)
    out = m(x1)
    assert out.shape == (1, 128)
    assert torch.equal(out, npuquant.npu_quant_matmul(x1, x2.t(), scale, output_dtype=torch.float16))
    fp19 = npuquant.npu_trans_quant_param(scale)
    assert torch.equal(out, npuquant.npu_quant_matmul(x1, x2.t(), fp19, output_dtype=torch.float16))


# ---------------------------------------------------------------- when npu_trans_quant_param is used


@pytest.mark.parametrize(
    "scale_dtype, pertoken, output_dtype, converted",
    [
        (torch.float32, False, None, True),
        (torch.float32, False, torch.int8, True),
        (torch.float32, False, torch.float16, True),
        (torch.float32, False, torch.bfloat16, False),
        (torch.float32, False, torch.int32, False),
        (torch.float32, True, torch.float16, False),
        (torch.float32, True, torch.bfloat16, False),
        (torch.bfloat16, False, torch.bfloat16, False),
        (torch.int64, False, torch.int8, False),
    ],
)
def test_trans_quant_param_called_exactly_when_torch_npu_calls_it(
    monkeypatch, scale_dtype, pertoken, output_dtype, converted
):
    calls = []

    def spy(scale, offset=None, round_mode=0):
        calls.append((scale, offset))
        return npuquant.npu_trans_quant_param(scale, offset, round_mode)

    monkeypatch.setattr(contrib, "npu_trans_quant_param", spy)
    x1, w = random_int8(2, 8), random_int8(3, 8)
    scale = torch.rand(3) / 50
    scale = npuquant.npu_trans_quant_param(scale) if scale_dtype == torch.int64 else scale.to(scale_dtype)
    m = configure(
        new(LinearQuant, 8, 3, bias=False, pertoken_scale=pertoken, output_dtype=output_dtype),
        w,
        scale,
        pertoken_scale=torch.rand(2) if pertoken else None,
    )
    m(x1)
    assert bool(calls) == converted


# ---------------------------------------------------------------- errors (ValueError, torch_npu's texts)


@pytest.mark.parametrize("cls", [LinearQuant, LinearA8W8Quant])
@pytest.mark.parametrize(
    "x_dtype, w_dtype",
    [(torch.int8, torch.int32), (torch.int32, torch.int8), (torch.float16, torch.float16), (torch.int8, torch.float32)],
)
def test_input_weight_dtype_pairing(cls, x_dtype, w_dtype):
    m = configure(new(cls, 8, 3), torch.zeros(3, 8, dtype=w_dtype), torch.rand(3))
    with pytest.raises(ValueError) as err:
        m(torch.zeros(2, 8, dtype=x_dtype))
    assert (
        "input and weight should be both torch.int32 or both torch.int8 datatype, "
        f"but now input is {x_dtype}, weight is {w_dtype}."
    ) in str(err.value)


A8W8_ERRORS = [
    (
        {"scale": torch.rand(3).half()},
        "scale should be torch.int64, torch.float32 or torch.bfloat16 datatype, but now it is torch.float16.",
    ),
    ({"offset": torch.rand(3).half()}, "offset should be torch.float32 datatype, but now it is torch.float16."),
    (
        {"bias": torch.zeros(3, dtype=torch.int8)},
        "bias should be torch.int32, torch.bfloat16, torch.float16 or torch.float32 datatype, but now it is torch.int8.",
    ),
    (
        {"pertoken_scale": torch.rand(2).half()},
        "pertoken_scale should be torch.float32 datatype, but now it is torch.float16.",
    ),
    (
        {"output_dtype": torch.int32},
        "output_dtype should be torch.int8, torch.float16 or torch.bfloat16, but now it is torch.int32.",
    ),
    (
        {"output_dtype": torch.float32},
        "output_dtype should be torch.int8, torch.float16 or torch.bfloat16, but now it is torch.float32.",
    ),
]


@pytest.mark.parametrize("change, message", A8W8_ERRORS)
def test_a8w8_validation(change, message):
    m = configure(
        new(LinearA8W8Quant, 8, 3, offset=True, pertoken_scale=True),
        random_int8(3, 8),
        torch.rand(3),
        offset=torch.zeros(3),
        pertoken_scale=torch.rand(2),
        bias=torch.zeros(3, dtype=torch.int32),
    )
    for name, value in change.items():
        if name == "output_dtype":
            m.output_dtype = value
        else:
            setattr(m, name, nn.Parameter(value, requires_grad=False))
    with pytest.raises(ValueError) as err:
        m(random_int8(2, 8))
    assert message in str(err.value)


def test_linear_quant_delegates_other_errors_to_the_op():
    m = configure(new(LinearQuant, 8, 3, bias=False, output_dtype=torch.float32), random_int8(3, 8), torch.rand(3))
    with pytest.raises(RuntimeError, match="Not supportted output dtype is torch.float32"):
        m(random_int8(2, 8))
    m = configure(new(LinearQuant, 8, 3, bias=False, output_dtype="fp16"), random_int8(3, 8), torch.rand(3))
    with pytest.raises(ValueError, match="output_dtype is not a valid dtype"):
        m(random_int8(2, 8))


def test_output_dtype_code_accepted():
    x1, w, scale = random_int8(3, 5), random_int8(4, 5), torch.rand(4)
    m = configure(new(LinearQuant, 5, 4, bias=False, output_dtype=15), w, scale)
    assert torch.equal(m(x1), npuquant.npu_quant_matmul(x1, w.t(), scale, output_dtype=torch.bfloat16))


# ---------------------------------------------------------------- state_dict


def _configured_variants():
    a4 = npuquant.pack_int4(torch.randint(-8, 8, (6, 16), dtype=torch.int8))
    return [
        (
            "int8 + int64 (1,) scale + offset + bias",
            LinearQuant,
            dict(offset=True),
            dict(
                weight=random_int8(6, 10),
                scale=npuquant.npu_trans_quant_param(torch.rand(1), torch.tensor([3.0])),
                offset=torch.tensor([3.0]),
                bias=torch.randint(-99, 99, (6,), dtype=torch.int32),
            ),
            random_int8(2, 10),
        ),
        (
            "pertoken bf16 + bf16 bias",
            LinearA8W8Quant,
            dict(pertoken_scale=True, output_dtype=torch.bfloat16),
            dict(
                weight=random_int8(6, 10),
                scale=torch.rand(6).bfloat16(),
                pertoken_scale=torch.rand(2),
                bias=torch.randn(6).bfloat16(),
            ),
            random_int8(2, 10),
        ),
        (
            "batched weight + 3-D bias",
            LinearQuant,
            dict(output_dtype=torch.float16),
            dict(
                weight=random_int8(3, 6, 10),
                scale=torch.rand(6) / 99,
                bias=torch.randint(-9, 9, (3, 1, 6), dtype=torch.int32),
            ),
            random_int8(3, 2, 10),
        ),
        (
            "A4W4",
            LinearQuant,
            dict(bias=False, output_dtype=torch.float16),
            dict(weight=a4, scale=torch.rand(6)),
            npuquant.pack_int4(torch.randint(-8, 8, (2, 16), dtype=torch.int8)),
        ),
    ]


@pytest.mark.parametrize("index", range(4))
def test_state_dict_round_trip(index, tmp_path):
    _, cls, flags, params, x1 = _configured_variants()[index]
    k = x1.shape[-1] * (8 if x1.dtype == torch.int32 else 1)
    src = new(cls, k, 6, **flags)
    for name, value in params.items():
        setattr(src, name, nn.Parameter(value, requires_grad=False))
    expected = src(x1)
    path = tmp_path / "layer.pt"
    torch.save(src.state_dict(), path)
    dst = new(cls, k, 6, **flags)
    result = dst.load_state_dict(torch.load(path))
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in params.items():
        got = getattr(dst, name)
        assert isinstance(got, nn.Parameter) and not got.requires_grad
        assert got.dtype == value.dtype and got.shape == value.shape and torch.equal(got, value)
    assert torch.equal(dst(x1), expected)


def test_state_dict_strictness_kept():
    src = configure(new(LinearQuant, 4, 2, bias=False), random_int8(2, 4), torch.rand(2))
    with pytest.raises(RuntimeError, match="Missing key"):
        new(LinearQuant, 4, 2).load_state_dict(src.state_dict())


def test_state_dict_assign_mode():
    src = configure(new(LinearQuant, 4, 2, bias=False), random_int8(2, 4), torch.rand(2))
    dst = new(LinearQuant, 4, 2, bias=False, device="meta")
    dst.load_state_dict(src.state_dict(), assign=True)
    assert dst.weight.dtype == torch.int8 and dst.weight.device.type == "cpu"
    x1 = random_int8(3, 4)
    assert torch.equal(dst(x1), src(x1))


# ---------------------------------------------------------------- from_float


def test_from_float_weights_are_per_channel_symmetric_int8():
    """quantize_weight_int8's rule: scale = max|w| / 127, q = RNE(w * (1 / scale)); an all-zero row gets scale 0."""
    torch.manual_seed(3)
    linear = nn.Linear(32, 8)
    with torch.no_grad():
        linear.weight[5].zero_()
    layer = LinearQuant.from_float(linear, input_scale=0.02)
    w = linear.weight.detach()
    w_scale = w.abs().amax(1) / 127
    assert w_scale[5] == 0
    reciprocal = torch.where(w_scale == 0, torch.zeros_like(w_scale), 1 / w_scale)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (8, 32)
    assert torch.equal(layer.weight, torch.round(w * reciprocal[:, None]).to(torch.int8))
    assert layer.weight.abs().amax(1).tolist() == [127] * 5 + [0] + [127] * 2
    assert torch.equal(layer.scale, w_scale * torch.tensor(0.02))
    assert layer.scale[5] == 0
    assert layer.bias.dtype == torch.float32 and layer.output_dtype == torch.bfloat16
    assert layer.pertoken_scale is None
    out = layer(random_int8(4, 32))
    assert torch.equal(out[:, 5], linear.bias.detach()[5].to(torch.bfloat16).expand(4))  # zero row: the bias only


def test_from_float_matches_npu_dynamic_quant_and_quantize_model():
    from npuquant.ops.dynamic_quant import quantize_weight_int8
    from npuquant.quantize import quantize_model

    torch.manual_seed(6)
    linear = nn.Linear(40, 12)
    with torch.no_grad():
        linear.weight[0].zero_()
        linear.weight[1, :] = 1e-30  # tiny but non-zero
    layer = LinearQuant.from_float(linear, output_dtype=torch.float16)
    q, scale = npuquant.npu_dynamic_quant(linear.weight.detach())
    assert torch.equal(layer.weight, q) and torch.equal(layer.scale, scale)
    assert torch.equal(q, quantize_weight_int8(linear.weight)[0])
    w8a8 = quantize_model(nn.Sequential(linear), "w8a8")[0]
    assert torch.equal(w8a8.weight, layer.weight) and torch.equal(w8a8.weight_scale, layer.scale)


def test_from_float_static_input_scale_approximates_linear():
    torch.manual_seed(4)
    linear = nn.Linear(64, 16)
    layer = LinearQuant.from_float(linear, input_scale=0.03)
    x = torch.randn(5, 64)
    xq = torch.round(x / 0.03).clamp(-128, 127).to(torch.int8)
    out = layer(xq)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 16)
    ref = linear(xq.float() * 0.03).detach()
    assert (out.float() - ref).abs().max() < 0.05


@pytest.mark.parametrize("output_dtype", [torch.bfloat16, torch.float16])
def test_from_float_pertoken_mode(output_dtype):
    torch.manual_seed(5)
    linear = nn.Linear(64, 16)
    layer = LinearQuant.from_float(linear, output_dtype=output_dtype)
    assert layer.pertoken_scale is not None and layer.output_dtype == output_dtype
    x = torch.randn(5, 64)
    x_scale = x.abs().amax(1) / 127
    xq = torch.round(x / x_scale[:, None]).to(torch.int8)
    layer.pertoken_scale = nn.Parameter(x_scale, requires_grad=False)
    out = layer(xq)
    ref = linear(xq.float() * x_scale[:, None]).detach()
    assert out.dtype == output_dtype and (out.float() - ref).abs().max() < 0.05


def test_from_float_without_bias_and_errors():
    linear = nn.Linear(8, 4, bias=False)
    layer = LinearQuant.from_float(linear, input_scale=torch.tensor(0.5), output_dtype=torch.float16)
    assert layer.bias is None
    assert layer(random_int8(2, 8)).dtype == torch.float16
    with pytest.raises(ValueError, match="output_dtype should be torch.bfloat16 or torch.float16"):
        LinearQuant.from_float(linear, output_dtype=torch.int8)
    with pytest.raises(ValueError, match="needs output_dtype=torch.bfloat16"):
        LinearQuant.from_float(nn.Linear(8, 4), input_scale=0.5, output_dtype=torch.float16)


# ---------------------------------------------------------------- results follow the parameters (no caches, issue 15)

EDITS = [".data", "numpy", "from_numpy", "in place"]


def _module_case(case: str, cls, m: int):
    """(module flags, parameters, input) for a freshness case."""
    gen = torch.Generator().manual_seed(m)
    k, n = 48, 40
    x1 = random_int8(m, k, generator=gen)
    w = random_int8(n, k, generator=gen)
    scale = torch.rand(n, generator=gen) / 100
    if case == "int8 weight, float32 scale (FP19 path, int8 output)":
        return dict(bias=False), dict(weight=w, scale=scale), x1
    if case == "int8 weight, float32 scale (FP19 path, float16 output) + int32 bias":
        bias = torch.randint(-999, 999, (n,), dtype=torch.int32, generator=gen)
        return dict(output_dtype=torch.float16), dict(weight=w, scale=scale, bias=bias), x1
    if case == "int8 weight, int64 scale + offset":
        offset = torch.randn(n, generator=gen) * 5
        q = npuquant.npu_trans_quant_param(scale, offset)
        return dict(bias=False, offset=True), dict(weight=w, scale=q, offset=offset), x1
    if case == "int8 weight, pertoken, bfloat16":
        pt = torch.rand(m, generator=gen)
        return (
            dict(bias=False, pertoken_scale=True, output_dtype=torch.bfloat16),
            dict(weight=w, scale=scale, pertoken_scale=pt),
            x1,
        )
    if case == "2-D weight, batched input (batch stride 0)":
        return dict(bias=False, output_dtype=torch.float16), dict(weight=w, scale=scale), random_int8(3, m, k)
    if case == "batched weight":
        w3 = random_int8(3, n, k, generator=gen)
        return dict(bias=False, output_dtype=torch.float16), dict(weight=w3, scale=scale), random_int8(3, m, k)
    if case == "A4W4 weight":
        w4 = npuquant.pack_int4(torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=gen))
        a4 = npuquant.pack_int4(torch.randint(-8, 8, (m, k), dtype=torch.int8, generator=gen))
        return dict(bias=False, output_dtype=torch.float16), dict(weight=w4, scale=scale), a4
    raise AssertionError(case)


MODULE_CASES = [
    ("int8 weight, float32 scale (FP19 path, int8 output)", "weight"),
    ("int8 weight, float32 scale (FP19 path, int8 output)", "scale"),
    ("int8 weight, float32 scale (FP19 path, float16 output) + int32 bias", "scale"),
    ("int8 weight, float32 scale (FP19 path, float16 output) + int32 bias", "bias"),
    ("int8 weight, int64 scale + offset", "scale"),
    ("int8 weight, int64 scale + offset", "weight"),
    ("int8 weight, pertoken, bfloat16", "pertoken_scale"),
    ("2-D weight, batched input (batch stride 0)", "weight"),
    ("batched weight", "weight"),
    ("A4W4 weight", "weight"),
]


def _new_values(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.int8:
        return random_int8(*t.shape)
    if name == "bias":
        return torch.randint(-99999, 99999, t.shape, dtype=torch.int32)
    if t.dtype == torch.int32:  # A4W4 weight words
        return random_words(*t.shape)
    if t.dtype == torch.int64:
        return npuquant.npu_trans_quant_param(torch.rand(t.shape) / 30, torch.randn(t.shape) * 5)
    return torch.rand(t.shape) * 2


def _configured(cls, flags, params):
    m = new(cls, 48, 40, **flags)
    for name, value in params.items():
        setattr(m, name, nn.Parameter(value, requires_grad=False))
    return m


@pytest.mark.parametrize("how", EDITS)
@pytest.mark.parametrize("rows", [3, 12], ids=["gemv", "gemm"])
@pytest.mark.parametrize(
    "cls, case, name",
    [
        (cls, *c)
        for cls in (LinearQuant, LinearA8W8Quant)
        for c in MODULE_CASES
        if cls is LinearQuant or not c[0].startswith("A4W4")
    ],  # LinearA8W8Quant: no A4W4
)
def test_module_follows_parameter_edits(cls, case, name, rows, how):
    """Edit a parameter after a call (``m.weight.data[...]``, ``m.scale.data``, numpy views, a numpy
    array the parameter aliases, in place): the next call equals a fresh module's on the new values."""
    flags, params, x1 = _module_case(case, cls, rows)
    array = None
    if how == "from_numpy":
        array = params[name].numpy().copy()
        params[name] = torch.from_numpy(array)
    m = _configured(cls, flags, params)
    before = m(x1)
    assert_same_bits(before, _configured(cls, flags, {k: v.clone() for k, v in params.items()})(x1))
    param = getattr(m, name)
    values = _new_values(name, param)
    if how == ".data":
        param.data[...] = values
    elif how == "numpy":
        param.numpy()[...] = values.numpy()
    elif how == "from_numpy":
        array[...] = values.numpy()
    else:
        param[...] = values
    assert torch.equal(getattr(m, name), values)
    after = m(x1)
    assert not torch.equal(after, before)
    fresh = _configured(cls, flags, {k: getattr(m, k).detach().clone() for k in params})
    assert_same_bits(after, fresh(x1))


@pytest.mark.parametrize("rows", [3, 12])
def test_module_follows_data_reassignment(rows):
    """``m.weight.data = other`` / ``m.scale.data = other`` (what torch_npu's tests do): the new tensors are used."""
    flags, params, x1 = _module_case("int8 weight, float32 scale (FP19 path, int8 output)", LinearQuant, rows)
    m = _configured(LinearQuant, flags, params)
    before = m(x1)
    m.weight.data = random_int8(40, 48)
    m.scale.data = torch.rand(40) / 50
    after = m(x1)
    assert not torch.equal(after, before)
    expected = npuquant.npu_quant_matmul(x1, m.weight.detach().clone().t(), npuquant.npu_trans_quant_param(m.scale))
    assert_same_bits(after, expected)


# ---------------------------------------------------------------- torch.compile


def test_compile_module_fullgraph_dynamic_m():
    m = configure(
        new(LinearQuant, 16, 8, offset=True),
        random_int8(8, 16),
        torch.rand(8) / 30,
        offset=torch.randn(8),
        bias=torch.randint(-50, 50, (8,), dtype=torch.int32),
    )
    compiled = torch.compile(m, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (2, 5, 9):
        x1 = random_int8(rows, 16)
        assert torch.equal(compiled(x1), m(x1))
