"""quantize_model, the quantized linear layers and safetensors save/load, on a tiny Llama-shaped model."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import npuquant
from helpers import assert_matches_reference, assert_same_bits, is_w4a16_gemv, random_int8, random_words
from npuquant import _native
from npuquant.nn import W4A16Linear, W8A8Linear, W8A8SymLinear
from npuquant.quantize import load_quantized, quantize_model, read_metadata, save_quantized, smoothquant_scales

SCHEMES = ["w8a8", "w8a8-sym", "w4a16"]
LAYER = {"w8a8": W8A8Linear, "w8a8-sym": W8A8SymLinear, "w4a16": W4A16Linear}
# Relative logits error of the tiny model against float32 (measured ~0.01 / 0.01 / 0.08).
TOLERANCE = {"w8a8": 0.05, "w8a8-sym": 0.05, "w4a16": 0.2}


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Block(nn.Module):
    """One Llama decoder layer with grouped-query attention and a SwiGLU MLP (no rotary: not needed here)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, hidden: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(dim), RMSNorm(dim)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(dim, dim, bias=False)
        self.self_attn.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.self_attn.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.self_attn.o_proj = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Module()
        self.mlp.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.mlp.up_proj = nn.Linear(dim, hidden, bias=False)
        self.mlp.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        a = self.self_attn
        h = self.input_layernorm(x)
        q = a.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = a.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = a.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        rep = self.heads // self.kv_heads
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1)
        x = x + a.o_proj(att)
        h = self.post_attention_layernorm(x)
        return x + self.mlp.down_proj(F.silu(self.mlp.gate_proj(h)) * self.mlp.up_proj(h))


class TinyLlama(nn.Module):
    """Llama-shaped: embed_tokens, layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}, norm, lm_head."""

    def __init__(self, vocab: int = 96, dim: int = 64, layers: int = 2, hidden: int = 136, seed: int = 0):
        super().__init__()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(Block(dim, 4, 2, hidden) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        torch.random.set_rng_state(generator_state)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


LINEAR_NAMES = [
    f"layers.{i}.{part}"
    for i in range(2)
    for part in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
] + ["lm_head"]


@pytest.fixture(scope="module")
def base() -> TinyLlama:
    return TinyLlama().eval()


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _quantized(base: nn.Module, scheme: str, **options) -> nn.Module:
    if scheme == "w4a16":
        options.setdefault("group_size", 32)
    return quantize_model(copy.deepcopy(base), scheme, **options)


# ---------------------------------------------------------------------------------- quantize_model


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_linear_is_replaced_lm_head_included(base, scheme):
    model = _quantized(base, scheme)
    modules = dict(model.named_modules())
    for name in LINEAR_NAMES:
        assert type(modules[name]) is LAYER[scheme], name
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert type(model.embed_tokens) is nn.Embedding  # only linear layers change


@pytest.mark.parametrize("scheme", SCHEMES)
def test_outputs_close_to_fp32(base, ids, scheme):
    with torch.inference_mode():
        ref = base(ids)
        out = _quantized(base, scheme)(ids)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert _rel(out, ref) < TOLERANCE[scheme]


def test_quantize_model_works_in_place_and_returns_the_model(base):
    model = copy.deepcopy(base)
    assert quantize_model(model, "w8a8") is model
    assert isinstance(model.lm_head, W8A8Linear)


def test_skip_names_and_patterns(base):
    model = _quantized(base, "w8a8", skip=["lm_head", "*.down_proj"])
    assert type(model.lm_head) is nn.Linear
    assert all(type(layer.mlp.down_proj) is nn.Linear for layer in model.layers)
    assert all(isinstance(layer.mlp.up_proj, W8A8Linear) for layer in model.layers)
    only_head = _quantized(base, "w4a16", skip="layers.*")
    assert isinstance(only_head.lm_head, W4A16Linear)
    assert type(only_head.layers[0].self_attn.q_proj) is nn.Linear


def test_bad_arguments(base):
    with pytest.raises(ValueError, match="unknown scheme"):
        quantize_model(copy.deepcopy(base), "w3a3")
    with pytest.raises(ValueError, match="multiple of 8"):
        quantize_model(copy.deepcopy(base), "w4a16", group_size=12)
    with pytest.raises(ValueError, match="w8a8 schemes only"):
        quantize_model(copy.deepcopy(base), "w4a16", calibration_data=[torch.zeros(1, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match="w8a8 schemes only"):
        quantize_model(copy.deepcopy(base), "w4a16", smooth_scales={"lm_head": torch.ones(64)})
    with pytest.raises(ValueError, match="either"):
        quantize_model(copy.deepcopy(base), "w8a8", smooth_scales={}, calibration_data=[])


@pytest.mark.parametrize("scheme", ["w8a8", "w8a8-sym"])
def test_smoothquant_calibration(base, ids, scheme):
    calibration = [torch.randint(0, 96, (1, 32), generator=torch.Generator().manual_seed(2))]
    scales = smoothquant_scales(base, calibration, alpha=0.5)
    assert set(scales) == set(LINEAR_NAMES)
    assert all(s.shape == (m.in_features,) and bool((s > 0).all()) for s, m in
               ((scales[n], base.get_submodule(n)) for n in scales))
    model = _quantized(base, scheme, calibration_data=calibration)
    layer = model.layers[0].self_attn.q_proj
    assert layer.smooth_scales is not None
    torch.testing.assert_close(layer.smooth_scales, 1 / scales["layers.0.self_attn.q_proj"])
    with torch.inference_mode():
        assert _rel(model(ids), base(ids)) < TOLERANCE[scheme]


def test_smoothquant_alpha_is_checked(base):
    with pytest.raises(ValueError, match="alpha"):
        smoothquant_scales(base, [], alpha=1.5)


def test_smoothing_helps_an_outlier_channel():
    # One input channel 60x larger than the rest: per-token activation scales are set by it and
    # quantize the others coarsely; SmoothQuant moves the range into the weight.
    g = torch.Generator().manual_seed(3)
    lin = nn.Linear(64, 32, bias=False)
    x = torch.randn(16, 64, generator=g)
    x[:, 5] *= 60
    amax_x = x.abs().amax(0)
    s = amax_x.sqrt() / lin.weight.detach().abs().amax(0).sqrt()
    ref = lin(x).detach()
    plain = W8A8Linear.from_linear(lin)(x)
    smoothed = W8A8Linear.from_linear(lin, smooth_scales=s)(x)
    assert _rel(smoothed, ref) < 0.5 * _rel(plain, ref)


# ---------------------------------------------------------------------------------- layers


def _linear(k: int, n: int, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias)


def test_w8a8_matches_the_dequantized_formula():
    lin = _linear(72, 40, bias=True)
    layer = W8A8Linear.from_linear(lin)
    x = torch.randn(5, 72)
    q, s, o = npuquant.npu_dynamic_quant_asymmetric(x)
    wq, ws = npuquant.npu_dynamic_quant(lin.weight.detach())
    torch.testing.assert_close(layer.weight, wq)
    torch.testing.assert_close(layer.weight_scale, ws)
    assert int(layer.weight.abs().max()) <= 127  # -128 never used by the weights
    x_hat = (q.double() - o.double()[:, None]) * s.double()[:, None]
    expected = x_hat @ (wq.double() * ws.double()[:, None]).t() + lin.bias.detach().double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)


def test_w8a8_sym_matches_npu_quant_matmul():
    lin = _linear(64, 48)
    layer = W8A8SymLinear.from_linear(lin)
    x = torch.randn(7, 64)
    q, s = npuquant.npu_dynamic_quant(x)
    expected = npuquant.npu_quant_matmul(
        q, layer.weight.t(), layer.weight_scale, pertoken_scale=s, output_dtype=torch.float16
    )
    torch.testing.assert_close(layer(x), expected.float(), rtol=1e-3, atol=1e-3)


def test_w4a16_matches_its_dequantized_weight_across_tiles_and_a_partial_group():
    lin = _linear(72, 37, bias=True)  # K=72: groups of 32 -> 32, 32 and a partial 8
    layer = W4A16Linear.from_linear(lin, group_size=32)
    assert layer.weight.shape == (37, 96 // 8) and layer.weight_scale.shape == (37, 3)
    layer.tile_rows = 5  # several tiles and a short last one
    x = torch.randn(3, 4, 72)
    expected = x @ layer.dequantize().t() + lin.bias.detach()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    # The grouped int4 grid represents the float weight to within half a step per group.
    step = layer.weight_scale.repeat_interleave(32, 1)[:, :72]
    assert bool(((layer.dequantize() - lin.weight.detach()).abs() <= 0.5 * step + 1e-6).all())


def test_w4a16_weight_is_packed_per_spec():
    lin = _linear(32, 8)
    layer = W4A16Linear.from_linear(lin, group_size=32)
    values = npuquant.unpack_int4(layer.weight)
    assert values.shape == (8, 32) and int(values.min()) >= -8 and int(values.max()) <= 7
    torch.testing.assert_close(npuquant.pack_int4(values), layer.weight, rtol=0, atol=0)
    manual = (values.float() + layer.weight_offset) * layer.weight_scale
    torch.testing.assert_close(layer.dequantize(), manual)


LAYERS = [W8A8Linear, W8A8SymLinear, W4A16Linear]


def _layer(cls, k: int = 64, n: int = 40, bias: bool = True, smooth: bool = False, seed: int = 0):
    options = {"group_size": 32} if cls is W4A16Linear else {}
    if smooth:
        options["smooth_scales"] = torch.rand(k, generator=torch.Generator().manual_seed(seed)) + 0.5
    return cls.from_linear(_linear(k, n, bias=bias, seed=seed), **options)


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lead", [(1,), (3,), (8,), (9,), (2, 17)], ids=lambda s: "x".join(map(str, s)))
def test_native_and_reference_paths_agree(cls, dtype, lead):
    """The layer's operator (native on CPU) and its reference give the same bits: GEMV (m <= 8) and GEMM rows
    (w4a16's fused GEMV: the same to rounding, see helpers.assert_matches_reference)."""
    for bias, smooth in ((True, False), (False, cls is not W4A16Linear)):
        layer = _layer(cls, k=72, n=40, bias=bias, smooth=smooth).to(dtype)
        if cls is W4A16Linear:
            layer.tile_rows = 16  # several tiles, a short last one
        x = torch.randn(*lead, 72, generator=torch.Generator().manual_seed(len(lead))).to(dtype)
        native = layer(x)
        with _native.force_reference():
            reference = layer(x)
        assert native.dtype == dtype and native.shape == (*lead, 40)
        assert_matches_reference(native, reference, is_w4a16_gemv(layer, x))


# ---------------------------------------------------------------------------------- weight edits (no caches, issue 15)


def _fresh_copy(layer: nn.Module) -> nn.Module:
    """A new layer of the same kind built from ``layer``'s current buffers (cloned)."""
    fresh = type(layer)(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=layer.dtype,
                        **layer.options())  # fmt: skip
    if isinstance(layer, W4A16Linear):
        fresh.tile_rows = layer.tile_rows
    fresh.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})
    return fresh


def _new_values(t: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(t.numel())
    if t.dtype == torch.int8:
        return random_int8(*t.shape, generator=gen)
    if t.dtype == torch.int32:
        return random_words(*t.shape, generator=gen)
    return (torch.rand(t.shape, generator=gen) * 2).to(t.dtype)


EDITABLE = {
    W8A8Linear: ["weight", "weight_scale", "smooth_scales", "bias"],
    W8A8SymLinear: ["weight", "weight_scale", "smooth_scales", "bias"],
    W4A16Linear: ["weight", "weight_scale", "weight_offset", "bias"],
}
LAYER_EDITS = ["in place", "copy_", ".data", "numpy", "load_state_dict"]


def _edit(layer: nn.Module, name: str, how: str, values: torch.Tensor) -> None:
    buffer = getattr(layer, name)
    if how == "in place":
        buffer[...] = values
    elif how == "copy_":
        buffer.copy_(values)
    elif how == ".data":
        buffer.data[...] = values
    elif how == "numpy":
        buffer.numpy()[...] = values.numpy()
    else:
        state = layer.state_dict()
        state[name] = values
        layer.load_state_dict(state)


@pytest.mark.parametrize("how", LAYER_EDITS)
@pytest.mark.parametrize("rows", [3, 12], ids=["gemv", "gemm"])
@pytest.mark.parametrize("cls, name", [(cls, name) for cls in LAYERS for name in EDITABLE[cls]])
def test_layers_follow_buffer_edits(cls, name, rows, how):
    """After an edit, the layer's output equals a fresh layer's built from the edited buffers."""
    layer = _layer(cls, smooth=name == "smooth_scales")
    x = torch.randn(rows, 64, generator=torch.Generator().manual_seed(rows))
    before = layer(x)
    assert_same_bits(before, _fresh_copy(layer)(x))
    _edit(layer, name, how, _new_values(getattr(layer, name)))
    after = layer(x)
    assert not torch.equal(after, before)
    assert_same_bits(after, _fresh_copy(layer)(x))
    with _native.force_reference():
        assert_matches_reference(after, layer(x), is_w4a16_gemv(layer, x))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layers_after_dtype_conversion_equal_a_fresh_layer(cls, dtype):
    layer = _layer(cls, smooth=cls is not W4A16Linear)
    x = torch.randn(5, 64)
    layer(x)
    layer.to(dtype)
    assert layer.dtype == dtype and layer.bias.dtype == dtype and layer.weight_scale.dtype == torch.float32
    fresh = _fresh_copy(layer)
    assert fresh.dtype == dtype
    for rows in (3, 12):
        xd = x.repeat(3, 1)[:rows].to(dtype)
        assert_same_bits(layer(xd), fresh(xd))
    _edit(layer, "weight", ".data", _new_values(layer.weight))  # and edits after the conversion
    assert_same_bits(layer(x.to(dtype)), _fresh_copy(layer)(x.to(dtype)))


# ---------------------------------------------------------------------------------- one int8 weight rule


def test_quantize_model_and_linear_quant_share_the_int8_weight_rule():
    """quantize_model (w8a8, w8a8-sym) and LinearQuant.from_float give the same int8 weights and scales:
    ops.dynamic_quant.quantize_weight_int8, i.e. npu_dynamic_quant on the float32 rows (an all-zero row
    gets scale 0 and zero weights)."""
    from npuquant.contrib.module import LinearQuant
    from npuquant.ops.dynamic_quant import quantize_weight_int8

    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(48, 16))
    with torch.no_grad():
        model[0].weight[3].zero_()
        model[0].weight[5, 7] = -model[0].weight[5].abs().max() * 4  # -max maps to exactly -127
    w = model[0].weight.detach().clone()
    q, scale = quantize_weight_int8(w)
    want_q, want_scale = npuquant.npu_dynamic_quant(w)
    assert torch.equal(q, want_q) and torch.equal(scale, want_scale)
    assert scale[3] == 0 and not q[3].any()
    assert int(q[5, 7]) == -127 and int(q.min()) >= -127 and int(q.max()) <= 127
    assert torch.equal(scale, w.abs().amax(1) / 127)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    assert torch.equal(q, torch.round(w * (1 / safe)[:, None]).to(torch.int8))

    from_float = LinearQuant.from_float(model[0], output_dtype=torch.float16)
    assert torch.equal(from_float.weight, q) and torch.equal(from_float.scale, scale)
    for scheme in ("w8a8", "w8a8-sym"):
        layer = quantize_model(copy.deepcopy(model), scheme)[0]
        assert torch.equal(layer.weight, q) and torch.equal(layer.weight_scale, scale), scheme
        out = layer(torch.randn(4, 48))
        assert torch.equal(out[:, 3], model[0].bias.detach()[3].expand(4))  # the zero row adds nothing
    half = nn.Linear(48, 16).half()  # any float dtype: quantized from its float32 values
    layer = quantize_model(nn.Sequential(half), "w8a8")[0]
    q16, s16 = quantize_weight_int8(half.weight.detach().float())
    assert torch.equal(layer.weight, q16) and torch.equal(layer.weight_scale, s16)
    assert torch.equal(LinearQuant.from_float(half, output_dtype=torch.float16).weight, q16)


@pytest.mark.parametrize("cls", [W8A8Linear, W8A8SymLinear, W4A16Linear])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_activations(cls, dtype):
    lin = _linear(64, 24)
    layer = cls.from_linear(lin)
    x = torch.randn(3, 64)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    assert _rel(out.float(), lin(x).detach()) < 0.2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_model_dtype_conversion_keeps_quantization_parameters(base, ids, scheme):
    model = _quantized(base, scheme, **({} if scheme == "w4a16" else {"calibration_data": [ids[:1]]}))
    model.to(torch.bfloat16)
    layer = model.layers[0].mlp.up_proj
    assert layer.weight_scale.dtype == torch.float32 and layer.dtype == torch.bfloat16
    with torch.inference_mode():
        out = model(ids)
        ref = base(ids)
    assert out.dtype == torch.bfloat16
    assert _rel(out.float(), ref) < 0.1 + TOLERANCE[scheme]


@pytest.mark.parametrize("cls", [W8A8Linear, W8A8SymLinear, W4A16Linear])
def test_shapes_strides_and_empty_input(cls):
    layer = cls.from_linear(_linear(64, 24))
    x = torch.randn(4, 3, 64)
    full = layer(x)
    assert full.shape == (4, 3, 24)
    torch.testing.assert_close(layer(x.transpose(0, 1)), full.transpose(0, 1))
    assert layer(torch.randn(0, 64)).shape == (0, 24)


@pytest.mark.parametrize("cls", [W8A8Linear, W8A8SymLinear, W4A16Linear])
def test_input_errors(cls):
    layer = cls.from_linear(_linear(64, 24))
    with pytest.raises(ValueError, match=r"\(\.\.\., 64\)"):
        layer(torch.randn(2, 63))
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        layer(torch.ones(2, 64, dtype=torch.int32))
    with pytest.raises(ValueError, match="positive"):
        cls(0, 4)


def test_smooth_scales_shape_is_checked():
    with pytest.raises(ValueError, match="shape"):
        W8A8Linear.from_linear(_linear(64, 8), smooth_scales=torch.ones(63))
    with pytest.raises(ValueError, match="w8a8 schemes only"):
        W4A16Linear.from_linear(_linear(64, 8), smooth_scales=torch.ones(64))


@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("rows", [2, 12])
def test_load_state_dict_replaces_everything(cls, rows):
    a = cls.from_linear(_linear(64, 24, seed=1))
    b = cls.from_linear(_linear(64, 24, seed=2))
    x = torch.randn(rows, 64)
    a(x)
    a.load_state_dict(b.state_dict())
    assert_same_bits(a(x), b(x))


# ---------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("scheme", SCHEMES)
def test_save_load_round_trip_is_identical(base, ids, scheme, tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    options = {"calibration_data": [ids[:1]]} if scheme != "w4a16" else {}
    model = _quantized(base, scheme, **options)
    path = str(tmp_path / "model.safetensors")
    save_quantized(model, path, metadata={"note": "test"})
    info = read_metadata(path)
    assert set(info["layers"]) == set(LINEAR_NAMES)
    assert info["layers"]["lm_head"]["scheme"] == scheme

    def no_requantization(*args, **kwargs):
        raise AssertionError("load_quantized must not quantize")

    monkeypatch.setattr(LAYER[scheme], "_quantize_from", no_requantization)
    fresh = TinyLlama(seed=7).eval()  # other random weights: everything must come from the file
    assert load_quantized(fresh, path) is fresh
    with torch.inference_mode():
        assert torch.equal(fresh(ids), model(ids))
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_save_load_keeps_tied_weights_and_skipped_layers(base, ids, tmp_path):
    pytest.importorskip("safetensors")
    tied = copy.deepcopy(base)
    tied.lm_head.weight = tied.embed_tokens.weight  # shared tensor, stays float when skipped
    model = quantize_model(tied, "w8a8", skip=["lm_head"])
    path = str(tmp_path / "tied.safetensors")
    save_quantized(model, path)
    fresh = TinyLlama(seed=9).eval()
    fresh.lm_head.weight = fresh.embed_tokens.weight
    load_quantized(fresh, path)
    assert type(fresh.lm_head) is nn.Linear and fresh.lm_head.weight is fresh.embed_tokens.weight
    with torch.inference_mode():
        assert torch.equal(fresh(ids), model(ids))


def test_load_errors(base, tmp_path):
    st = pytest.importorskip("safetensors.torch")
    plain = str(tmp_path / "plain.safetensors")
    st.save_model(copy.deepcopy(base), plain)
    with pytest.raises(ValueError, match="not written by npuquant"):
        load_quantized(TinyLlama(), plain)
    model = _quantized(base, "w8a8")
    path = str(tmp_path / "q.safetensors")
    save_quantized(model, path)
    with pytest.raises(ValueError, match="lm_head"):
        load_quantized(TinyLlama(vocab=80), path)
    # A file naming a layer the model lacks, or another format version.
    meta = read_metadata(path)
    meta["layers"]["missing.layer"] = meta["layers"]["lm_head"]
    tensors = st.load_file(path)
    odd = str(tmp_path / "odd.safetensors")
    st.save_file(tensors, odd, metadata={"npuquant": json.dumps(meta)})
    with pytest.raises(ValueError, match="does not exist"):
        load_quantized(TinyLlama(), odd)
    meta["format"] = "npuquant.quantized/99"
    st.save_file(tensors, odd, metadata={"npuquant": json.dumps(meta)})
    with pytest.raises(ValueError, match="unsupported npuquant format"):
        load_quantized(TinyLlama(), odd)


def test_hf_llama_round_trip(ids, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=136, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.inference_mode():
        ref = model(ids).logits
    quantize_model(model, "w8a8", calibration_data=[ids[:1]])
    with torch.inference_mode():
        out = model(ids).logits
    assert _rel(out, ref) < TOLERANCE["w8a8"]
    path = str(tmp_path / "hf.safetensors")
    save_quantized(model, path)
    torch.manual_seed(5)
    fresh = transformers.LlamaForCausalLM(config).eval()
    load_quantized(fresh, path)
    with torch.inference_mode():
        assert torch.equal(fresh(ids).logits, out)


def test_exported_from_the_package():
    assert npuquant.quantize_model is quantize_model
