"""Native int8 GEMM (csrc/gemm_s8.c) through its operators (ops/quant_matmul/native.py):
``torch.ops.npuquant.quant_matmul`` and ``torch.ops.npuquant.quant_matmul_asymmetric``.

* int32 accumulation is exact on every ISA variant (scalar, AVX2 vpmaddwd, AVX-512 VNNI with the
  -128 * colsum correction) for every int8 input, -128 included: checked against an int64 matmul
  for random, adversarial (the vpmaddubsw saturation cases) and long-K inputs (up to 2**17 and
  past it, where the accumulator wraps).
* both weight paths: the natural-layout GEMV (M <= 8 with a unit k stride, e.g. ``w.t()``, read
  in place) and the per-call packed GEMM (M > 8, or any other layout), for every M in 1..9 and
  larger, odd k and n, strided and batched operands (batch stride 0 and not), 1..3 threads.
* every epilogue and output dtype bit for bit against ``reference.quant_matmul`` /
  ``asymmetric.reference``.
* the C++ wrapper's checks: dtypes, shapes, and storages too small for a tensor's sizes.
* results follow the inputs' current contents (nothing is cached between calls).
"""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits, random_int8, shrink_storage
from npuquant import _native
from npuquant.ops import quant_matmul as qm
from npuquant.ops.quant_matmul import asymmetric, native, reference

GEMV_MAX_M = 8  # csrc/torch_ops.cpp: up to 8 rows with a unit-k-stride weight read it in place

# ------------------------------------------------------------------------------------ helpers


def exact_acc(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Independent golden: int64 matmul, wrapped to int32 like a 32-bit accumulator."""
    acc = torch.matmul(x1.to(torch.int64), x2.to(torch.int64))
    return (((acc + 2**31) % 2**32) - 2**31).to(torch.int32)


def wrap32(t: torch.Tensor) -> torch.Tensor:
    """int64 -> int32 modulo 2**32."""
    return (((t.to(torch.int64) + 2**31) % 2**32) - 2**31).to(torch.int32)


def gemm_int32(x1: torch.Tensor, x2: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return native.quant_matmul(x1, x2, torch.ones(1), None, None, bias, torch.int32)


EDGE_VALUES = torch.tensor([-128, -127, -1, 0, 1, 126, 127], dtype=torch.int8)


def int8(shape, gen: torch.Generator, mode: str = "full") -> torch.Tensor:
    if mode == "full":
        return random_int8(*shape, generator=gen)
    if mode == "extreme":  # only -128 and 127: the worst cases for int16 pair sums
        pick = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8)
        return torch.where(pick == 0, torch.tensor(-128, dtype=torch.int8), torch.tensor(127, dtype=torch.int8))
    if mode == "edges":
        return EDGE_VALUES[torch.randint(0, len(EDGE_VALUES), shape, generator=gen)]
    if mode == "neg128":
        return torch.full(shape, -128, dtype=torch.int8)
    return torch.randint(-3, 4, shape, generator=gen, dtype=torch.int8)


# x2 (b, k, n) as the operator sees it. The first four have a unit k stride (the GEMV reads them
# in place for m <= 8); the others always go through the packed GEMM.
X2_LAYOUTS = {
    "w.t()": lambda b, k, n, g, mode: int8((b, n, k), g, mode).transpose(1, 2),
    "w.t() shared": lambda b, k, n, g, mode: int8((1, n, k), g, mode).transpose(1, 2).expand(b, k, n),
    "w.t() of a column slice": lambda b, k, n, g, mode: int8((b, n, k + 5), g, mode)[:, :, 3 : k + 3].transpose(1, 2),
    "w.t() of every other row": lambda b, k, n, g, mode: int8((b, 2 * n, k), g, mode)[:, ::2].transpose(1, 2),
    "contiguous (k, n)": lambda b, k, n, g, mode: int8((b, k, n), g, mode),
    "contiguous shared": lambda b, k, n, g, mode: int8((1, k, n), g, mode).expand(b, k, n),
    "strided slice": lambda b, k, n, g, mode: int8((b, 2 * k, n + 3), g, mode)[:, ::2, 1 : n + 1],
}
GEMV_LAYOUTS = [name for name in X2_LAYOUTS if name.startswith("w.t()")]

X1_LAYOUTS = {
    "contiguous": lambda b, m, k, g, mode: int8((b, m, k), g, mode),
    "strided": lambda b, m, k, g, mode: int8((b, 2 * m, 2 * k), g, mode)[:, ::2, ::2],
    "transposed": lambda b, m, k, g, mode: int8((b, k, m), g, mode).transpose(1, 2),
    "shared": lambda b, m, k, g, mode: int8((1, m, k), g, mode).expand(b, m, k),
}


def make_x2(b, k, n, gen, mode="full", layout="contiguous (k, n)"):
    return X2_LAYOUTS[layout](b, k, n, gen, mode)


def make_x1(b, m, k, gen, mode="full", layout="contiguous"):
    return X1_LAYOUTS[layout](b, m, k, gen, mode)


def takes_gemv(m: int, x2: torch.Tensor) -> bool:
    """Whether csrc/torch_ops.cpp's gemm() reads x2 in place (GEMV) rather than packing it."""
    k = x2.shape[1]
    return k == 0 or (m <= GEMV_MAX_M and (x2.stride(1) == 1 or k == 1))


def epilogues(b: int, m: int, n: int, gen: torch.Generator):
    """One argument set (scale, offset, pertoken, bias, out_dtype) per output dtype, each epilogue step used."""
    scale_n = torch.rand(n, generator=gen) / 100
    bias_i32 = torch.randint(-(2**31), 2**31 - 1, (b, n), generator=gen, dtype=torch.int32)
    bias_i32[0, :2] = torch.tensor([2**31 - 1, -(2**31)], dtype=torch.int32)[: min(n, 2)]  # wraps with acc
    pertoken = (torch.rand(m, generator=gen) - 0.3) * 4
    offset = torch.randint(-256, 256, (n,), generator=gen).float()
    yield torch.ones(1), None, None, bias_i32, torch.int32
    yield scale_n / 3, offset, None, None, torch.int8
    yield torch.rand(1, generator=gen) / 50, None, None, bias_i32[:1] // 2**16, torch.float16
    yield scale_n, None, pertoken, (torch.randn(b, n, generator=gen) * 100).bfloat16(), torch.bfloat16
    yield scale_n, None, pertoken, torch.randn(1, n, generator=gen) * 100, torch.float32


def check_against_reference(x1, x2, scale, offset, pertoken, bias, out):
    got = native.quant_matmul(x1, x2, scale, offset, pertoken, bias, out)
    want = reference.quant_matmul(x1, x2, scale, offset, pertoken, bias, out)
    assert_same_bits(got, want)
    return got


# ------------------------------------------------------------------------------------ exactness


@given(
    b=st.integers(1, 3),
    m=st.integers(1, 20),
    k=st.integers(1, 300),
    n=st.integers(1, 80),  # up to 5 panels: 4-panel VNNI steps and their tails
    mode=st.sampled_from(["full", "extreme", "edges", "neg128", "small"]),
    x1_layout=st.sampled_from(sorted(X1_LAYOUTS)),
    x2_layout=st.sampled_from(sorted(X2_LAYOUTS)),
    seed=st.integers(0, 2**31 - 1),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the ISA cap holds for every example
def test_int32_exact_random(isa, b, m, k, n, mode, x1_layout, x2_layout, seed):
    gen = torch.Generator().manual_seed(seed)
    x1 = make_x1(b, m, k, gen, mode, x1_layout)
    x2 = make_x2(b, k, n, gen, mode, x2_layout)
    assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))


@pytest.mark.parametrize(
    "a_value, w_value",
    [(-128, -128), (127, 127), (-128, 127), (127, -128), (-1, -128), (0, -128), (-128, 0)],
)
@pytest.mark.parametrize("m, k, n", [(1, 64, 16), (7, 67, 35), (8, 1029, 5), (13, 1029, 33)])
@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
def test_int32_adversarial_constants(isa, a_value, w_value, m, k, n, x2_layout):
    """Constant matrices: every pair sum at its extreme (u8s8 + 128 shift saturates on all of these)."""
    x1 = torch.full((1, m, k), a_value, dtype=torch.int8)
    x2 = torch.full((1, k, n), w_value, dtype=torch.int8)
    if x2_layout == "w.t()":
        x2 = x2.transpose(1, 2).contiguous().transpose(1, 2)
    got = gemm_int32(x1, x2)
    assert torch.equal(got, torch.full((1, m, n), a_value * w_value * k, dtype=torch.int32))


@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
def test_int32_saturating_pairs(isa, x2_layout):
    """The documented vpmaddubsw failures: 211*71 + 171*107 (pytorch#44939), 255-style +128 shifts (oneDNN)."""
    x1 = torch.tensor([[[83, 43, 127, 127, -128, -128, 127, -128]]], dtype=torch.int8)
    x2 = torch.tensor([[71, 107, 127, 127, -128, 127, -128, -128]], dtype=torch.int8).t().unsqueeze(0)
    if x2_layout != "w.t()":
        x2 = x2.contiguous()
    assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))


@pytest.mark.parametrize("k", [65535, 131071])
@pytest.mark.parametrize("m", [2, 9])
@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
def test_int32_long_k_exact(isa, k, m, x2_layout):
    gen = torch.Generator().manual_seed(k + m)
    x1 = torch.full((1, m, k), -128, dtype=torch.int8)
    x2 = make_x2(1, k, 17, gen, "neg128", x2_layout)
    got = gemm_int32(x1, x2)
    assert int(got[0, 0, 0]) == 16384 * k  # the largest exact int32 sum at this k
    assert torch.equal(got, exact_acc(x1, x2))
    x1 = int8((1, m, k), gen)
    x2 = make_x2(1, k, 5, gen, "full", x2_layout)
    assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))
    scale, pertoken = torch.rand(5, generator=gen) / 1000, torch.rand(m, generator=gen)
    check_against_reference(x1, x2, scale, None, pertoken, None, torch.bfloat16)


@pytest.mark.parametrize("k", [131072, 140001])
@pytest.mark.parametrize("m", [1, 9])
@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
def test_int32_wraps_beyond_int32(isa, k, m, x2_layout):
    """Past 2**31 the result wraps modulo 2**32, as the reference's int32 accumulator does."""
    x1 = torch.full((1, m, k), -128, dtype=torch.int8)
    x2 = make_x2(1, k, 3, torch.Generator(), "neg128", x2_layout)
    got = gemm_int32(x1, x2)
    assert torch.equal(got, exact_acc(x1, x2))
    assert torch.equal(got, reference.int_matmul(x1, x2))
    if k == 131072:
        assert int(got[0, 0, 0]) == -(2**31)
    check_against_reference(x1, x2, torch.tensor([1e-6]), None, None, None, torch.float16)


@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
@pytest.mark.parametrize("m", [3, 12])
def test_k_zero_is_a_zero_accumulator(isa, x2_layout, m):
    """k = 0 (the operator takes it; only the public op refuses empty inputs): acc = 0 through the epilogue."""
    gen = torch.Generator().manual_seed(m)
    x1 = int8((2, m, 0), gen)
    x2 = make_x2(2, 0, 5, gen, "full", x2_layout)
    for scale, offset, pertoken, bias, out in epilogues(2, m, 5, gen):
        got = check_against_reference(x1, x2, scale, offset, pertoken, bias, out)
        assert got.shape == (2, m, 5)


@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
@pytest.mark.parametrize("m", [3, 12])
def test_empty_results(isa, x2_layout, m):
    gen = torch.Generator().manual_seed(m)
    assert gemm_int32(int8((2, 0, 7), gen), make_x2(2, 7, 5, gen, "full", x2_layout)).shape == (2, 0, 5)
    assert gemm_int32(int8((2, m, 7), gen), make_x2(2, 7, 0, gen, "full", x2_layout)).shape == (2, m, 0)
    assert gemm_int32(int8((0, m, 7), gen), make_x2(0, 7, 5, gen, "full", x2_layout)).shape == (0, m, 5)
    got = native.quant_matmul(
        int8((2, 0, 7), gen),
        make_x2(2, 7, 5, gen, "full", x2_layout),
        torch.rand(5),
        None,
        torch.rand(0),
        None,
        torch.bfloat16,
    )
    assert got.shape == (2, 0, 5) and got.dtype == torch.bfloat16


# ------------------------------------------------------------------------------------ paths x layouts x threads

SWEEP_M = [*range(1, GEMV_MAX_M + 2), 16, 33, 70]


@pytest.mark.parametrize("x2_layout", sorted(X2_LAYOUTS))
@pytest.mark.parametrize("m", SWEEP_M)
def test_every_m_layout_and_thread_count_matches_reference(isa, threads, m, x2_layout):
    """Odd k and n, big enough for several GEMV column blocks (n > 64) and for several threads on
    both paths (GEMV: b * n * k >= 64 KiB; GEMM: >= 2**20 multiply-adds from m = 16 on)."""
    b, k, n = 2, 263, 131
    gen = torch.Generator().manual_seed(zlib.crc32(repr((m, x2_layout)).encode()))
    x2 = make_x2(b, k, n, gen, "full", x2_layout)
    assert takes_gemv(m, x2) == (m <= GEMV_MAX_M and x2_layout in GEMV_LAYOUTS)
    # every x1 layout meets every x2 layout across the m values
    x1_layout = sorted(X1_LAYOUTS)[(m + sorted(X2_LAYOUTS).index(x2_layout)) % len(X1_LAYOUTS)]
    x1 = make_x1(b, m, k, gen, "full", x1_layout)
    for scale, offset, pertoken, bias, out in epilogues(b, m, n, gen):
        got = check_against_reference(x1, x2, scale, offset, pertoken, bias, out)
        if out == torch.int32:
            assert torch.equal(got, wrap32(exact_acc(x1, x2).to(torch.int64) + bias.unsqueeze(1)))


@pytest.mark.parametrize("n", [16, 17, 40])
@pytest.mark.parametrize("k", [31, 32, 33, 64, 95, 96, 97, 160, 4096])
@pytest.mark.parametrize("mode", ["full", "neg128"])
def test_weight_packing_every_k_step_and_panel_edge(isa, k, n, mode):
    """The packed path with a row-major weight (x2 = w.t()): the SIMD pack moves whole panels 64 and 32 k
    at a time (csrc/gemm_s8.c, pack_panel_avx2), the rest and the partial last panel go the scalar way;
    the column sums come from the same pass (the asymmetric epilogue reads them)."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((k, n, mode)).encode()))
    x1 = make_x1(1, 9, k, gen, mode)
    x2 = make_x2(1, k, n, gen, mode, "w.t()")
    assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))
    x_q, x_scale, x_offset, w, w_scale = asym_case(9, k, n, gen, mode)
    check_asymmetric(x_q, x_scale, x_offset, w, w_scale, None, torch.float32)


@pytest.mark.parametrize("x2_layout", ["w.t()", "w.t() shared"])
@pytest.mark.parametrize("b, m, x1_layout", [(1, 8, "contiguous"), (3, 3, "strided"), (3, 8, "shared")])
def test_gemv_large_activation_buffer(isa, threads, b, m, x1_layout, x2_layout):
    """k = 1100: the GEMV's widened activations (x1 batches * m * 1104 int16) no longer fit its stack buffer."""
    gen = torch.Generator().manual_seed(b * m)
    k, n = 1100, 67
    x1 = make_x1(b, m, k, gen, "full", x1_layout)
    x2 = make_x2(b, k, n, gen, "full", x2_layout)
    assert takes_gemv(m, x2)
    for args in epilogues(b, m, n, gen):
        check_against_reference(x1, x2, *args)


@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9])
def test_minus_128_everywhere(isa, m, x2_layout):
    """All-(-128) operands on both paths, with every epilogue."""
    gen = torch.Generator().manual_seed(m)
    b, k, n = 2, 4099, 19
    x1 = make_x1(b, m, k, gen, "neg128")
    x2 = make_x2(b, k, n, gen, "neg128", x2_layout)
    assert torch.equal(gemm_int32(x1, x2), torch.full((b, m, n), 16384 * k, dtype=torch.int32))
    for args in epilogues(b, m, n, gen):
        check_against_reference(x1, x2, *args)


def test_threads_match_single_thread(isa, threads):
    gen = torch.Generator().manual_seed(11)
    b, k, n = 2, 300, 260
    for m in (3, 70):  # GEMV (n * k * b > 64 KiB: several threads) and packed GEMM
        x1 = int8((b, m, k), gen)
        x2 = int8((1, n, k), gen).transpose(-1, -2).expand(b, k, n)
        scale, pt = torch.rand(n, generator=gen), torch.rand(m, generator=gen)
        got_bf16 = native.quant_matmul(x1, x2, scale, None, pt, None, torch.bfloat16)
        got_i8 = native.quant_matmul(x1, x2, scale / 300, torch.full((n,), 3.0), None, None, torch.int8)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_bf16 = native.quant_matmul(x1, x2, scale, None, pt, None, torch.bfloat16)
            one_i8 = native.quant_matmul(x1, x2, scale / 300, torch.full((n,), 3.0), None, None, torch.int8)
        finally:
            torch.set_num_threads(previous)
        assert_same_bits(got_bf16, one_bf16)
        assert_same_bits(got_i8, one_i8)
        assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))


@pytest.mark.parametrize("m", [6, 20])
def test_batch_broadcast_and_batched_bias(isa, m):
    gen = torch.Generator().manual_seed(5)
    x1 = int8((1, m, 40), gen).expand(3, m, 40)  # one activation, three weights
    for x2 in (int8((3, 40, 19), gen), int8((3, 19, 40), gen).transpose(1, 2)):
        bias = torch.randint(-1000, 1000, (3, 19), generator=gen, dtype=torch.int32)
        assert torch.equal(gemm_int32(x1, x2, bias), exact_acc(x1, x2) + bias.unsqueeze(1))
        fbias = torch.randn(3, 19, generator=gen)
        got = check_against_reference(x1, x2, torch.rand(19, generator=gen), None, None, fbias, torch.bfloat16)
        assert got.shape == (3, m, 19)


# ------------------------------------------------------------------------------------ epilogues


def _scale(n: int, length: int, gen: torch.Generator, special: bool) -> torch.Tensor:
    s = torch.randn(length, generator=gen) * 10.0 ** torch.randint(-6, 3, (length,), generator=gen).float()
    if special and length > 3:
        s[1], s[2], s[3] = 1e30, float("inf"), float("nan")  # saturate, overflow, NaN
    return s


BIAS_KINDS = {
    torch.int8: [None, "int32"],
    torch.float16: [None, "int32", "float16", "float32"],
    torch.bfloat16: [None, "int32", "bfloat16", "float32"],
    torch.int32: [None, "int32"],
    torch.float32: [None, "int32", "float32", "bfloat16"],
}


def _epilogue_cases():
    for out in (torch.int8, torch.float16, torch.bfloat16, torch.int32, torch.float32):
        for bias, pertoken, offset, scale_len, bias_rows in itertools.product(
            BIAS_KINDS[out], (False, True), (None, 1, "n"), (1, "n"), (1, "B")
        ):
            if offset is not None and out != torch.int8:
                continue
            if pertoken and out not in (torch.float16, torch.bfloat16, torch.float32):
                continue
            if bias is None and bias_rows == "B":
                continue
            yield out, bias, pertoken, offset, scale_len, bias_rows


@pytest.mark.parametrize("m", [3, 9])  # the GEMV's and the packed GEMM's epilogue
@pytest.mark.parametrize("out, bias_kind, pertoken, offset_len, scale_len, bias_rows", list(_epilogue_cases()))
def test_epilogue_matches_reference(isa, m, out, bias_kind, pertoken, offset_len, scale_len, bias_rows):
    b, k, n = 2, 37, 21
    gen = torch.Generator().manual_seed(zlib.crc32(repr((out, bias_kind, pertoken, offset_len, scale_len)).encode()))
    x1 = int8((b, m, k), gen)
    x2 = int8((b, n, k), gen).transpose(-1, -2)
    scale = _scale(n, 1 if scale_len == 1 else n, gen, special=out != torch.int32)
    pt = (torch.rand(m, generator=gen) - 0.3) * 4 if pertoken else None
    offset = None
    if offset_len is not None:
        offset = torch.randint(-256, 256, (1 if offset_len == 1 else n,), generator=gen).float()
    bias = None
    if bias_kind is not None:
        rows = 1 if bias_rows == 1 else b
        if bias_kind == "int32":
            bias = torch.randint(-(2**31), 2**31 - 1, (rows, n), generator=gen, dtype=torch.int32)
            bias[0, :2] = torch.tensor([2**31 - 1, -(2**31)], dtype=torch.int32)  # wraps with acc
        else:
            bias = (torch.randn(rows, n, generator=gen) * 1000).to(getattr(torch, bias_kind))
    got = native.quant_matmul(x1, x2, scale, offset, pt, bias, out)
    want = reference.epilogue(exact_acc(x1, x2), scale, offset, pt, bias, out)
    assert_same_bits(got, want)
    assert_same_bits(got, reference.quant_matmul(x1, x2, scale, offset, pt, bias, out))


@pytest.mark.parametrize("x2_layout", ["w.t()", "contiguous (k, n)"])
def test_epilogue_int8_round_half_even_and_saturation(isa, x2_layout):
    values = torch.arange(-128, 128, dtype=torch.int8)
    x1 = torch.ones((1, 1, 1), dtype=torch.int8)
    x2 = values.reshape(1, 1, -1)
    if x2_layout == "w.t()":
        x2 = x2.transpose(1, 2).contiguous().transpose(1, 2)
    half = native.quant_matmul(x1, x2, torch.tensor([0.5]), None, None, None, torch.int8)
    expected = [round(v / 2) for v in range(-128, 128)]  # Python's round() is half-to-even
    assert half.flatten().tolist() == expected
    big = native.quant_matmul(x1, x2, torch.tensor([30.0]), torch.tensor([2.0]), None, None, torch.int8)
    assert big.flatten().tolist() == [max(-128, min(127, 30 * v + 2)) for v in range(-128, 128)]
    nan = native.quant_matmul(x1, x2, torch.tensor([float("nan")]), None, None, None, torch.int8)
    assert not nan.any()  # NaN -> 0, as torch's cast


def test_compute_is_the_operator():
    gen = torch.Generator().manual_seed(6)
    for m in (4, 12):
        x1, x2 = int8((1, m, 12), gen), int8((1, 12, 5), gen)
        scale = torch.rand(5, generator=gen)
        args = (x1, x2, scale, None, None, None, torch.bfloat16)
        want = reference.quant_matmul(*args)
        assert_same_bits(qm._compute(*args), want)
        with _native.force_reference():
            assert_same_bits(qm._compute(*args), want)
    assert native.quant_matmul is torch.ops.npuquant.quant_matmul.default
    assert native.quant_matmul_asymmetric is torch.ops.npuquant.quant_matmul_asymmetric.default


# ------------------------------------------------------------------------------------ asymmetric entry point

# weight (k, n) layouts for quant_matmul_asymmetric (2-D): the first two are read in place for m <= 8.
W_LAYOUTS = {
    "w.t()": lambda k, n, g, mode: int8((n, k), g, mode).t(),
    "w.t() of a column slice": lambda k, n, g, mode: int8((n, k + 7), g, mode)[:, 2 : k + 2].t(),
    "contiguous (k, n)": lambda k, n, g, mode: int8((k, n), g, mode),
    "strided slice": lambda k, n, g, mode: int8((2 * k, n + 2), g, mode)[::2, 1 : n + 1],
}


def asym_case(m, k, n, gen, mode="full", layout="w.t()", x_layout="contiguous"):
    x_q = int8((m, k), gen, mode) if x_layout == "contiguous" else int8((m, 2 * k), gen, mode)[:, ::2]
    x_scale = torch.rand(m, generator=gen) / 100
    x_offset = (torch.rand(m, generator=gen) - 0.5) * 600  # float zero points, as dynamic quant makes them
    w = W_LAYOUTS[layout](k, n, gen, mode)
    w_scale = torch.rand(n, generator=gen) / 100
    return x_q, x_scale, x_offset, w, w_scale


def check_asymmetric(x_q, x_scale, x_offset, w, w_scale, bias, out):
    got = native.quant_matmul_asymmetric(x_q, x_scale, x_offset, w, w_scale, bias, out)
    want = asymmetric.reference(x_q, x_scale, x_offset, w, w_scale, bias, out)
    assert_same_bits(got, want)
    return got


@pytest.mark.parametrize("layout", sorted(W_LAYOUTS))
@pytest.mark.parametrize("m", SWEEP_M)
def test_asymmetric_matches_reference(isa, threads, m, layout):
    k, n = 263, 131
    gen = torch.Generator().manual_seed(zlib.crc32(repr((m, layout)).encode()))
    for x_layout in ("contiguous", "strided"):
        x_q, x_scale, x_offset, w, w_scale = asym_case(m, k, n, gen, "full", layout, x_layout)
        for out, bias_dtype, scale_len in (
            (torch.float32, None, n),
            (torch.float16, torch.float32, 1),
            (torch.bfloat16, torch.bfloat16, n),
            (torch.float32, torch.float16, n),
        ):
            bias = None if bias_dtype is None else (torch.randn(n, generator=gen) * 10).to(bias_dtype)
            ws = w_scale[:scale_len].to(torch.bfloat16) if out == torch.bfloat16 else w_scale[:scale_len]
            got = check_asymmetric(x_q, x_scale, x_offset, w, ws, bias, out)
            assert got.shape == (m, n) and got.dtype == out


@pytest.mark.parametrize("layout", ["w.t()", "contiguous (k, n)"])
@pytest.mark.parametrize("m", [1, 2, 3, 8, 9])
@pytest.mark.parametrize("k", [4099, asymmetric.MAX_K])
def test_asymmetric_minus_128_long_k(isa, m, k, layout):
    """Column sums of all -128 weights (the GEMV flushes its int16 column-sum lanes every 256 steps)."""
    gen = torch.Generator().manual_seed(k + m)
    x_q, x_scale, x_offset, w, w_scale = asym_case(m, k, 11, gen, "neg128", layout)
    for out in (torch.float32, torch.float16, torch.bfloat16):
        check_asymmetric(x_q, x_scale, x_offset, w, w_scale, torch.randn(11, generator=gen), out)
    x_q, x_scale, x_offset, w, w_scale = asym_case(m, k, 11, gen, "edges", layout)
    check_asymmetric(x_q, x_scale, x_offset, w, w_scale, None, torch.float32)


# ------------------------------------------------------------------------------------ results follow the inputs


@pytest.mark.parametrize("m", [3, 12])  # GEMV (reads the weight in place) and packed per call
@pytest.mark.parametrize("batch", ["2-D", "shared", "per batch"])
def test_operator_results_follow_edited_operands(isa, m, batch):
    gen = torch.Generator().manual_seed(m)
    k, n = 40, 24
    w = int8((2 if batch == "per batch" else 1, n, k), gen)
    x1 = int8((2 if batch != "2-D" else 1, m, k), gen)
    scale, pertoken = torch.rand(n, generator=gen), torch.rand(m, generator=gen)

    def x2():
        return w.transpose(1, 2).expand(x1.shape[0], k, n)

    def run():
        return native.quant_matmul(x1, x2(), scale, None, pertoken, None, torch.float16)

    def fresh():
        return reference.quant_matmul(
            x1.clone(), x2().clone(), scale.clone(), None, pertoken.clone(), None, torch.float16
        )

    first = run()
    assert_same_bits(first, fresh())
    w.numpy()[...] = -w.numpy()  # no version bump
    assert_same_bits(run(), fresh())
    assert not torch.equal(run(), first)
    w.data[..., 0, 0] = -128
    scale.numpy()[0] *= 2
    assert_same_bits(run(), fresh())
    x1.numpy()[..., -1, :] = 127
    assert_same_bits(run(), fresh())

    x_scale, x_offset = torch.rand(m, generator=gen), torch.randn(m, generator=gen) * 50
    w2 = w[0].t()
    before = native.quant_matmul_asymmetric(x1[0], x_scale, x_offset, w2, scale, None, torch.float32)
    w.numpy()[0, 1:3] = 7  # two weight rows: two output columns and their column sums
    x_offset.numpy()[0] += 3
    got = native.quant_matmul_asymmetric(x1[0], x_scale, x_offset, w2, scale, None, torch.float32)
    assert not torch.equal(got, before)
    assert_same_bits(
        got, asymmetric.reference(x1[0].clone(), x_scale, x_offset.clone(), w2.clone(), scale, None, torch.float32)
    )


# ------------------------------------------------------------------------------------ C++ wrapper checks


def _qm_args(m=9, k=40, n=24, b=1, out=torch.bfloat16, gemv=True):
    gen = torch.Generator().manual_seed(0)
    x2 = int8((b, n, k), gen).transpose(1, 2) if gemv else int8((b, k, n), gen)
    return dict(
        x1=int8((b, m, k), gen),
        x2=x2,
        scale=torch.rand(n, generator=gen),
        offset=None,
        pertoken_scale=torch.rand(m, generator=gen),
        bias=torch.randn(1, n, generator=gen),
        out_dtype=out,
    )


def _qm(**args):
    return native.quant_matmul(
        args["x1"], args["x2"], args["scale"], args["offset"], args["pertoken_scale"], args["bias"], args["out_dtype"]
    )


QM_ERRORS = [
    (dict(x1=torch.zeros(1, 9, 40)), "x1 must be int8, but got float32"),
    (dict(x2=torch.zeros(1, 40, 24, dtype=torch.int32)), "x2 must be int8, but got int32"),
    (dict(out_dtype=torch.float64), "out_dtype must be int8, float16, bfloat16, int32 or float32"),
    (dict(x1=torch.zeros(9, 40, dtype=torch.int8)), "x1 and x2 must be 3-D"),
    (dict(x2=torch.zeros(40, 24, dtype=torch.int8)), "x1 and x2 must be 3-D"),
    (dict(x2=torch.zeros(2, 40, 24, dtype=torch.int8)), r"x1 \[1, 9, 40\] and x2 \[2, 40, 24\] do not multiply"),
    (dict(x2=torch.zeros(1, 41, 24, dtype=torch.int8)), r"x1 \[1, 9, 40\] and x2 \[1, 41, 24\] do not multiply"),
    (dict(scale=torch.rand(5)), r"scale must be 1-D of length 1 or n \(24\), but has shape \[5\]"),
    (dict(scale=torch.rand(1, 24)), r"scale must be 1-D of length 1 or n \(24\)"),
    (dict(scale=torch.ones(24, dtype=torch.int64)), "scale must be float32 or bfloat16 or float16, but got int64"),
    (dict(pertoken_scale=torch.rand(8)), r"pertoken_scale must hold one value per row \(9\), but has shape \[8\]"),
    (dict(pertoken_scale=torch.rand(9).half()), "pertoken_scale must be float32, but got float16"),
    (dict(bias=torch.zeros(1, 24, dtype=torch.int8)), "bias must be int32 or float32 or float16 or bfloat16"),
    (dict(bias=torch.zeros(24)), r"bias must be \(1, n\) or \(B, n\) = \(1, 24\), but has shape \[24\]"),
    (dict(bias=torch.zeros(2, 24)), r"bias must be \(1, n\) or \(B, n\)"),
    (dict(bias=torch.zeros(1, 23)), r"bias must be \(1, n\) or \(B, n\)"),
    (dict(out_dtype=torch.int32, pertoken_scale=None), "int32 output takes an int32 bias only"),
    (dict(offset=torch.zeros(24), pertoken_scale=None, out_dtype=torch.int8), "offset and a float bias cannot"),
    (dict(offset=torch.zeros(3), bias=None, out_dtype=torch.int8), r"offset must be 1-D of length 1 or n \(24\)"),
    (
        dict(offset=torch.zeros(24, dtype=torch.int32), bias=None, out_dtype=torch.int8),
        "offset must be float32 or bfloat16 or float16, but got int32",
    ),
]


@pytest.mark.parametrize("change, message", QM_ERRORS)
def test_quant_matmul_operator_errors(change, message):
    args = _qm_args()
    args.update(change)
    with pytest.raises(RuntimeError, match=f"npuquant::quant_matmul: {message}"):
        _qm(**args)


QM_TENSORS = ["x1", "x2", "scale", "offset", "pertoken_scale", "bias"]


@pytest.mark.parametrize("gemv", [True, False], ids=["gemv", "packed"])
@pytest.mark.parametrize("name", QM_TENSORS)
def test_quant_matmul_shrunk_storage_raises_naming_the_argument(name, gemv):
    args = _qm_args(gemv=gemv)
    if name == "offset":  # int8 output: the offset is read, the float bias goes
        args.update(offset=torch.randn(24), bias=None, pertoken_scale=None, out_dtype=torch.int8)
    want = _qm(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()})
    shrink_storage(args[name])
    with pytest.raises(RuntimeError, match=rf"npuquant::quant_matmul: {name} of shape \[[0-9, ]+\] reaches outside"):
        _qm(**args)
    assert want.shape == (1, 9, 24)


def test_quant_matmul_storage_offset_past_the_end():
    big = random_int8(1000)
    x1 = big[600:].view(1, 10, 40)  # elements 600..999
    big.untyped_storage().resize_(900)
    args = _qm_args(m=10)
    args.update(x1=x1, pertoken_scale=torch.rand(10))
    with pytest.raises(
        RuntimeError, match=r"x1 of shape \[1, 10, 40\] reaches outside its storage \(storage offset 600"
    ):
        _qm(**args)


def _asym_args(m=5, k=30, n=8):
    gen = torch.Generator().manual_seed(1)
    x_q, x_scale, x_offset, w, w_scale = asym_case(m, k, n, gen)
    return dict(
        x_q=x_q,
        x_scale=x_scale,
        x_offset=x_offset,
        weight=w,
        w_scale=w_scale,
        bias=torch.randn(n, generator=gen),
        out_dtype=torch.float32,
    )


def _asym(a):
    return native.quant_matmul_asymmetric(
        a["x_q"], a["x_scale"], a["x_offset"], a["weight"], a["w_scale"], a["bias"], a["out_dtype"]
    )


ASYM_ERRORS = [
    (dict(x_q=torch.zeros(5, 30)), "x_q must be int8, but got float32"),
    (dict(weight=torch.zeros(30, 8, dtype=torch.int32)), "weight must be int8, but got int32"),
    (dict(out_dtype=torch.int8), "out_dtype must be float32, float16 or bfloat16, but got int8"),
    (dict(x_q=torch.zeros(1, 5, 30, dtype=torch.int8)), r"x_q \[1, 5, 30\] and weight \[30, 8\] must be"),
    (
        dict(weight=torch.zeros(31, 8, dtype=torch.int8)),
        r"x_q \[5, 30\] and weight \[31, 8\] must be \(m, k\) and \(k, n\)",
    ),
    (dict(w_scale=torch.rand(3)), r"w_scale must be 1-D of length 1 or n \(8\)"),
    (dict(w_scale=torch.ones(8, dtype=torch.int64)), "w_scale must be float32 or bfloat16 or float16"),
    (dict(x_scale=torch.rand(4)), r"x_scale must hold one value per row \(5\)"),
    (dict(x_offset=torch.rand(5).bfloat16()), "x_offset must be float32, but got bfloat16"),
    (dict(bias=torch.rand(7)), r"bias must be 1-D of length n \(8\)"),
    (dict(bias=torch.zeros(8, dtype=torch.int32)), "bias must be float32 or float16 or bfloat16, but got int32"),
]


@pytest.mark.parametrize("change, message", ASYM_ERRORS)
def test_asymmetric_operator_errors(change, message):
    args = _asym_args()
    args.update(change)
    with pytest.raises(RuntimeError, match=f"npuquant::quant_matmul_asymmetric: {message}"):
        _asym(args)


@pytest.mark.parametrize("m", [5, 12])
@pytest.mark.parametrize("name", ["x_q", "x_scale", "x_offset", "weight", "w_scale", "bias"])
def test_asymmetric_shrunk_storage_raises_naming_the_argument(name, m):
    args = _asym_args(m=m)
    shrink_storage(args[name], 8)
    with pytest.raises(RuntimeError, match=rf"npuquant::quant_matmul_asymmetric: {name} of shape .* reaches outside"):
        _asym(args)


# ------------------------------------------------------------------------------------ through the public op


@pytest.mark.parametrize(
    "out, with_pertoken, bias_dtype",
    [
        (torch.int8, False, torch.int32),
        (torch.float16, True, torch.float32),
        (torch.bfloat16, True, torch.bfloat16),
        (torch.int32, False, torch.int32),
        (torch.bfloat16, False, None),
    ],
)
@pytest.mark.parametrize("m", [1, 8, 11])
def test_public_op_native_equals_reference(isa, out, with_pertoken, bias_dtype, m):
    gen = torch.Generator().manual_seed(21)
    k, n = 70, 37
    x1 = int8((2, m, k), gen)
    w = int8((n, k), gen)
    scale = torch.rand(n, generator=gen) / 50
    pt = torch.rand(m, generator=gen) if with_pertoken else None
    bias = None if bias_dtype is None else (torch.randn(n, generator=gen) * 100).to(bias_dtype)
    kwargs = dict(pertoken_scale=pt, bias=bias, output_dtype=out)
    for x2 in (w.t(), w.t().contiguous()):
        got = npuquant.npu_quant_matmul(x1, x2, scale, **kwargs)
        with _native.force_reference():
            want = npuquant.npu_quant_matmul(x1, x2, scale, **kwargs)
        assert_same_bits(got, want)


@pytest.mark.parametrize("along_k", [False, True])
@pytest.mark.parametrize("m", [5, 13])
def test_public_a4w4_native_equals_reference(isa, along_k, m):
    gen = torch.Generator().manual_seed(8)
    k, n = 64, 40
    x_values = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8)
    w_values = torch.randint(-8, 8, (k, n), generator=gen, dtype=torch.int8)
    x1 = npuquant.pack_int4(x_values)
    x2 = npuquant.pack_int4(w_values.t().contiguous()).t() if along_k else npuquant.pack_int4(w_values)
    scale = torch.rand(n, generator=gen) / 10
    got = npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float16)
    with _native.force_reference():
        want = npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float16)
    assert_same_bits(got, want)
    fp19_scale = reference.decode_quant_param(npuquant.npu_trans_quant_param(scale))[0]
    assert torch.equal(got, (exact_acc(x_values, w_values).float() * fp19_scale).half())
