"""The fused int4 GEMV behind ``W4A16Linear`` for up to 8 rows (csrc/gemv_int4.c).

Its float32 sums follow a fixed order of their own (the file header), so it agrees with the tiled
reference to rounding; every kernel variant, thread count and batch size must give the same bits.
float32 activations take the factored path (per word: sum of nibble * x, then scale and offset
once); float16 / bfloat16 ones, and float32 ones beyond 2^100 or not finite, the table path (the
weight rounded to x's dtype, as the reference's tile holds it).
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_same_bits, random_words
from npuquant import _native
from npuquant.nn.linear import W4A16Linear, _linear_w4a16_reference

TOL = {torch.float32: {"rtol": 1e-5, "atol": 1e-5}, torch.float16: {"rtol": 1e-2, "atol": 1e-2},
       torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2}}


def _layer(k: int, n: int, group: int, seed: int, bias: bool = True) -> W4A16Linear:
    gen = torch.Generator().manual_seed(seed)
    layer = W4A16Linear(k, n, bias=bias, group_size=group)
    layer.weight.copy_(random_words(*layer.weight.shape, generator=gen))
    layer.weight_scale.copy_(torch.rand(layer.weight_scale.shape, generator=gen) / 10)
    layer.weight_offset.copy_((torch.rand(layer.weight_offset.shape, generator=gen) - 0.5) * 16)
    if bias:
        layer.bias.data.copy_(torch.randn(n, generator=gen))
    return layer


def _gemv(layer: W4A16Linear, x: torch.Tensor) -> torch.Tensor:
    b = layer._buffers
    args = (x, b["weight"], b["weight_scale"], b["weight_offset"], b["bias"], layer.in_features, layer.tile_rows)
    return torch.ops.npuquant.linear_w4a16(*args)


def _reference(layer: W4A16Linear, x: torch.Tensor) -> torch.Tensor:
    b = layer._buffers
    args = (x, b["weight"], b["weight_scale"], b["weight_offset"], b["bias"], layer.in_features, layer.tile_rows)
    return _linear_w4a16_reference(*args)


def _every_variant(layer: W4A16Linear, x: torch.Tensor) -> torch.Tensor:
    """The GEMV under every ISA this CPU has and 1 / 2 threads: one result, bit for bit."""
    results = []
    threads = torch.get_num_threads()
    try:
        for isa in _native.supported_isas():
            with _native.isa_limit(isa):
                for t in (1, 2):
                    torch.set_num_threads(t)
                    results.append(_gemv(layer, x))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert_same_bits(other, results[0])
    return results[0]


# group sizes: words per group 1, 2, 3, 4 (the two-group block), 8, 16; k: whole blocks, a partial
# block, a partial group, and k below one block
CASES = [(g, k) for g in (8, 16, 24, 32, 64, 128) for k in (128, 200, 61)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group, k", CASES)
def test_every_variant_and_thread_count_agree_bit_for_bit(dtype, group, k):
    layer = _layer(k, 37, group, seed=group * 1000 + k).to(dtype)
    for m in (1, 3, 8):
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(dtype)
        out = _every_variant(layer, x)
        torch.testing.assert_close(out, _reference(layer, x), **TOL[dtype])


def test_a_row_does_not_depend_on_its_batch():
    layer = _layer(200, 19, 32, seed=5)
    x = torch.randn(8, 200)
    batch = _gemv(layer, x)
    for r in range(8):
        assert_same_bits(_gemv(layer, x[r : r + 1]), batch[r : r + 1])


def test_float32_path_matches_float64_math():
    """Against x @ W.T in float64 (W dequantized as the reference holds it): float32 rounding only,
    with large group offsets (the factored sum's nibble and offset terms cancel)."""
    layer = _layer(96, 5, 32, seed=9, bias=False)
    layer.weight_offset.copy_(torch.tensor([-8.0, 7.5, -0.5])[torch.arange(15) % 3].reshape(5, 3))
    x = torch.randn(2, 96)
    out = _every_variant(layer, x)
    w = layer.dequantize(torch.float32).double()
    torch.testing.assert_close(out.double(), x.double() @ w.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("special", [float("inf"), float("-inf"), float("nan"), 2.0**101])
def test_non_finite_or_huge_float32_activations_take_the_table_path(special):
    """Beyond 2^100 the factored sums could overflow where the reference's products do not, and a
    non-finite x meets the factored nibble 0 (inf * 0): such calls take the table path, whose products
    are the reference's own (x * w), so inf / NaN land where the reference puts them."""
    layer = _layer(64, 6, 32, seed=3, bias=False)
    layer.weight.copy_(random_words(*layer.weight.shape, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(1, 64)
    x[0, 5] = special
    out = _every_variant(layer, x)
    want = _reference(layer, x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
