"""Native int8 GEMM (csrc/gemm_s8.c, ops/quant_matmul/native.py).

* int32 accumulation is exact on every ISA variant (scalar, AVX2 vpmaddwd, AVX-512 VNNI with the
  -128 * colsum correction) for every int8 input, -128 included: checked against an int64 matmul
  for random, adversarial (the vpmaddubsw saturation cases) and long-K inputs.
* every npu_quant_matmul epilogue matches the reference epilogue bit for bit.
* threads, batch broadcasting, strides, packing and the pack cache's invalidation.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npuquant
from npuquant import _native
from npuquant.ops.quant_matmul import native, reference

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native library missing: {_native.load_error}")


# ------------------------------------------------------------------------------------ helpers


def exact_acc(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Independent golden: int64 matmul, wrapped to int32 like a 32-bit accumulator."""
    acc = torch.matmul(x1.to(torch.int64), x2.to(torch.int64))
    return (((acc + 2**31) % 2**32) - 2**31).to(torch.int32)


def gemm_int32(x1: torch.Tensor, x2: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return native.quant_matmul(x1, x2, torch.ones(1), None, None, bias, torch.int32)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern of a tensor, so NaNs compare equal to themselves."""
    view = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}.get(t.dtype)
    return t if view is None else t.view(view)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    assert got.is_contiguous()
    mismatch = (bits(got) != bits(want)).nonzero()
    assert mismatch.numel() == 0, f"{mismatch.shape[0]} mismatches, first at {mismatch[0].tolist()}"


def int8(shape, gen: torch.Generator, mode: str = "full") -> torch.Tensor:
    if mode == "full":
        return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)
    if mode == "extreme":  # only -128 and 127: the worst cases for int16 pair sums
        pick = torch.randint(0, 2, shape, generator=gen, dtype=torch.int8)
        return torch.where(pick == 0, torch.tensor(-128, dtype=torch.int8), torch.tensor(127, dtype=torch.int8))
    if mode == "neg128":
        return torch.full(shape, -128, dtype=torch.int8)
    return torch.randint(-3, 4, shape, generator=gen, dtype=torch.int8)


def make_x2(b: int, k: int, n: int, gen: torch.Generator, mode: str, layout: str) -> torch.Tensor:
    """x2 (b, k, n) as the op sees it: contiguous, the .t() of a (n, k) weight, or one shared weight."""
    if layout == "transposed":
        return int8((b, n, k), gen, mode).transpose(-1, -2)
    if layout == "shared":
        return int8((1, k, n), gen, mode).expand(b, k, n)
    return int8((b, k, n), gen, mode)


def make_x1(b: int, m: int, k: int, gen: torch.Generator, mode: str, layout: str) -> torch.Tensor:
    if layout == "strided":  # every other row and column of a bigger tensor
        return int8((b, 2 * m, 2 * k), gen, mode)[:, ::2, ::2]
    if layout == "transposed":
        return int8((b, k, m), gen, mode).transpose(-1, -2)
    if layout == "shared":
        return int8((1, m, k), gen, mode).expand(b, m, k)
    return int8((b, m, k), gen, mode)


# ------------------------------------------------------------------------------------ exactness


@given(
    b=st.integers(1, 3),
    m=st.integers(1, 20),
    k=st.integers(1, 300),
    n=st.integers(1, 80),  # up to 5 panels: 4-panel VNNI steps and their tails
    mode=st.sampled_from(["full", "extreme", "neg128", "small"]),
    x1_layout=st.sampled_from(["contiguous", "strided", "transposed", "shared"]),
    x2_layout=st.sampled_from(["contiguous", "transposed", "shared"]),
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
@pytest.mark.parametrize("m, k, n", [(1, 64, 16), (7, 67, 35), (13, 1029, 33)])
def test_int32_adversarial_constants(isa, a_value, w_value, m, k, n):
    """Constant matrices: every pair sum at its extreme (u8s8 + 128 shift saturates on all of these)."""
    x1 = torch.full((1, m, k), a_value, dtype=torch.int8)
    x2 = torch.full((1, k, n), w_value, dtype=torch.int8)
    got = gemm_int32(x1, x2)
    assert torch.equal(got, torch.full((1, m, n), a_value * w_value * k, dtype=torch.int32))


def test_int32_saturating_pairs(isa):
    """The documented vpmaddubsw failures: 211*71 + 171*107 (pytorch#44939), 255-style +128 shifts (oneDNN)."""
    x1 = torch.tensor([[[83, 43, 127, 127, -128, -128, 127, -128]]], dtype=torch.int8)
    x2 = torch.tensor([[71, 107, 127, 127, -128, 127, -128, -128]], dtype=torch.int8).t().unsqueeze(0)
    assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))


@pytest.mark.parametrize("k", [65535, 131071])
def test_int32_long_k_exact(isa, k):
    gen = torch.Generator().manual_seed(k)
    x1 = torch.full((1, 2, k), -128, dtype=torch.int8)
    x2 = torch.full((1, k, 17), -128, dtype=torch.int8)
    got = gemm_int32(x1, x2)
    assert int(got[0, 0, 0]) == 16384 * k  # the largest exact int32 sum at this k
    assert torch.equal(got, exact_acc(x1, x2))
    x1 = int8((1, 3, k), gen)
    x2 = int8((1, 5, k), gen).transpose(-1, -2)
    assert torch.equal(gemm_int32(x1, x2), exact_acc(x1, x2))


def test_int32_wraps_beyond_int32(isa):
    """Past 2**31 the result wraps modulo 2**32, as the reference's int32 accumulator does."""
    k = 140001
    x1 = torch.full((1, 1, k), -128, dtype=torch.int8)
    x2 = torch.full((1, k, 3), -128, dtype=torch.int8)
    got = gemm_int32(x1, x2)
    assert torch.equal(got, exact_acc(x1, x2))
    assert torch.equal(got, reference.int_matmul(x1, x2))


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
}


def _epilogue_cases():
    for out in (torch.int8, torch.float16, torch.bfloat16, torch.int32):
        for bias, pertoken, offset, scale_len, bias_rows in itertools.product(
            BIAS_KINDS[out], (False, True), (None, 1, "n"), (1, "n"), (1, "B")
        ):
            if offset is not None and out != torch.int8:
                continue
            if pertoken and out not in (torch.float16, torch.bfloat16):
                continue
            if bias is None and bias_rows == "B":
                continue
            yield out, bias, pertoken, offset, scale_len, bias_rows


@pytest.mark.parametrize("out, bias_kind, pertoken, offset_len, scale_len, bias_rows", list(_epilogue_cases()))
def test_epilogue_matches_reference(isa, out, bias_kind, pertoken, offset_len, scale_len, bias_rows):
    b, m, k, n = 2, 9, 37, 21
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


def test_epilogue_int8_round_half_even_and_saturation(isa):
    values = torch.arange(-128, 128, dtype=torch.int8)
    x1 = torch.ones((1, 1, 1), dtype=torch.int8)
    x2 = values.reshape(1, 1, -1)
    half = native.quant_matmul(x1, x2, torch.tensor([0.5]), None, None, None, torch.int8)
    expected = [round(v / 2) for v in range(-128, 128)]  # Python's round() is half-to-even
    assert half.flatten().tolist() == expected
    big = native.quant_matmul(x1, x2, torch.tensor([30.0]), torch.tensor([2.0]), None, None, torch.int8)
    assert big.flatten().tolist() == [max(-128, min(127, 30 * v + 2)) for v in range(-128, 128)]
    nan = native.quant_matmul(x1, x2, torch.tensor([float("nan")]), None, None, None, torch.int8)
    assert not nan.any()  # NaN -> 0, as torch's cast


def test_epilogue_two_float_adds_falls_back_to_reference(isa):
    """Not a valid torch_npu combination (validation stops it), but the native entry keeps the reference's order."""
    gen = torch.Generator().manual_seed(3)
    x1, x2 = int8((1, 4, 8), gen), int8((1, 8, 5), gen)
    scale, offset, bias = torch.rand(5, generator=gen), torch.ones(5), torch.randn(1, 5, generator=gen)
    got = native.quant_matmul(x1, x2, scale, offset, None, bias, torch.int8)
    assert_same_bits(got, reference.quant_matmul(x1, x2, scale, offset, None, bias, torch.int8))


# ------------------------------------------------------------------------------------ threads, batches


def test_threads_match_single_thread(isa, threads):
    gen = torch.Generator().manual_seed(11)
    b, m, k, n = 2, 70, 300, 100
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


def test_batch_broadcast_and_batched_bias(isa):
    gen = torch.Generator().manual_seed(5)
    x1 = int8((1, 6, 40), gen).expand(3, 6, 40)  # one activation, three weights
    x2 = int8((3, 40, 19), gen)
    bias = torch.randint(-1000, 1000, (3, 19), generator=gen, dtype=torch.int32)
    assert torch.equal(gemm_int32(x1, x2, bias), exact_acc(x1, x2) + bias.unsqueeze(1))
    fbias = torch.randn(3, 19, generator=gen)
    got = native.quant_matmul(x1, x2, torch.rand(19, generator=gen), None, None, fbias, torch.bfloat16)
    assert got.shape == (3, 6, 19)


# ------------------------------------------------------------------------------------ packing


def test_pack_roundtrip_and_colsum():
    gen = torch.Generator().manual_seed(9)
    for shape in [(1, 1), (5, 17), (67, 33), (3, 40, 21)]:
        w = int8(shape, gen)
        packed = native.pack_weight(w)
        assert torch.equal(packed.unpack(), w)
        colsum = w.to(torch.int64).sum(-2).reshape(packed.batch, -1).to(torch.int32)
        assert torch.equal(packed.colsum[:, : colsum.shape[1]], colsum)
        assert not packed.colsum[:, colsum.shape[1] :].any()
        assert packed.nbytes == packed.data.numel() + 4 * packed.colsum.numel()
        assert "PackedWeight" in repr(packed)
    strided = int8((40, 21), gen)[::2, 1::2]  # (20, 10) view, no unit stride
    assert torch.equal(native.pack_weight(strided).unpack(), strided)


def test_pack_rejects_bad_weights():
    with pytest.raises(ValueError, match="int8"):
        native.pack_weight(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="int8"):
        native.pack_weight(torch.zeros(4, dtype=torch.int8))
    with pytest.raises(ValueError, match="CPU"):
        native.pack_weight(torch.zeros(4, 4, dtype=torch.int8, device="meta"))


def test_pack_cache_reuses_and_invalidates():
    gen = torch.Generator().manual_seed(1)
    w = int8((24, 40), gen)  # a Linear weight (n, k); x2 = w.t()
    x1 = int8((1, 3, 40), gen)
    first = native.packed_weight(w.t())
    assert native.packed_weight(w.t()) is first  # a fresh view object, same storage and view: hit
    assert first.matches(w.t()) and not first.matches(w)
    assert torch.equal(gemm_int32(x1, w.t().unsqueeze(0)), exact_acc(x1, w.t()))

    w.add_(1)  # in-place edit bumps the shared version counter
    assert not first.matches(w.t())
    second = native.packed_weight(w.t())
    assert second is not first and torch.equal(second.unpack(), w.t())
    assert torch.equal(gemm_int32(x1, w.t().unsqueeze(0)), exact_acc(x1, w.t()))

    w.t()[0, 0] = 7  # through another view
    assert torch.equal(gemm_int32(x1, w.t().unsqueeze(0)), exact_acc(x1, w.t()))

    clone = w.clone()  # equal values, different storage: its own pack
    assert native.packed_weight(clone.t()) is not native.packed_weight(w.t())


def test_pack_cache_edits_behind_the_version_counter_need_clear():
    gen = torch.Generator().manual_seed(2)
    w = int8((8, 16), gen)
    p = torch.nn.Parameter(w, requires_grad=False)
    stale = native.packed_weight(p.t())
    p.data.copy_(torch.zeros_like(w))  # .data has its own version counter: invisible, as for autograd
    assert native.packed_weight(p.t()) is stale
    native.clear_pack_cache()
    fresh = native.packed_weight(p.t())
    assert fresh is not stale and not fresh.unpack().any()


def test_pack_cache_drops_dead_storages_and_can_be_disabled():
    native.clear_pack_cache()
    w = torch.ones(16, 8, dtype=torch.int8)
    native.packed_weight(w)
    assert len(native._cache) == 1
    del w
    gc.collect()
    assert len(native._cache) == 0
    w = torch.ones(16, 8, dtype=torch.int8)
    previous = native.set_pack_cache(False)
    try:
        assert native.packed_weight(w) is not native.packed_weight(w)
        assert len(native._cache) == 0
    finally:
        native.set_pack_cache(previous)
    assert native.packed_weight(w) is native.packed_weight(w)


def test_pack_cache_skips_inference_tensors():
    with torch.inference_mode():
        w = torch.ones(16, 8, dtype=torch.int8)
        first = native.packed_weight(w)
        assert native.packed_weight(w) is not first
        assert first.version is None and not first.matches(w)


def test_quant_param_decode_cache_reuses_and_invalidates():
    gen = torch.Generator().manual_seed(5)
    m, k, n = 3, 20, 9
    x1 = int8((m, k), gen)
    w = int8((n, k), gen)
    acc = exact_acc(x1, w.t())
    scale_f32 = torch.rand(n, generator=gen) / 20
    offset = torch.randint(-20, 20, (n,), generator=gen).float()
    q = npuquant.npu_trans_quant_param(scale_f32, offset)  # int64: FP19 scale and an encoded offset
    decoded = reference.decode_quant_param(q)

    def want(quant_param: torch.Tensor) -> torch.Tensor:
        s, o = reference.decode_quant_param(quant_param)
        return reference.epilogue(acc.unsqueeze(0), s, o, None, None, torch.int8)[0]

    first = native.decoded_quant_param(q, lambda: reference.decode_quant_param(q))
    assert all(torch.equal(a, b) for a, b in zip(first, decoded))
    assert native.decoded_quant_param(q, lambda: pytest.fail("decoded twice")) is first
    assert_same_bits(npuquant.npu_quant_matmul(x1, w.t(), q), want(q))
    q.copy_(npuquant.npu_trans_quant_param(scale_f32 * 3, -offset))  # in place: the version counter moves
    assert native.decoded_quant_param(q, lambda: reference.decode_quant_param(q)) is not first
    assert_same_bits(npuquant.npu_quant_matmul(x1, w.t(), q), want(q))
    q[0] = npuquant.npu_trans_quant_param(torch.tensor([0.5]))[0]  # an element, through indexing
    assert_same_bits(npuquant.npu_quant_matmul(x1, w.t(), q), want(q))

    # A float32 scale torch_npu FP19-encodes: cached by the scale alone when there is no offset,
    # decoded per call with one (the result depends on both).
    for out, off in ((torch.int8, None), (torch.int8, offset), (torch.float16, None)):
        got = npuquant.npu_quant_matmul(x1, w.t(), scale_f32, offset=off, output_dtype=out)
        with _native.force_reference():
            assert_same_bits(got, npuquant.npu_quant_matmul(x1, w.t(), scale_f32, offset=off, output_dtype=out))
    scale_f32.mul_(2)
    got = npuquant.npu_quant_matmul(x1, w.t(), scale_f32, output_dtype=torch.float16)
    with _native.force_reference():
        assert_same_bits(got, npuquant.npu_quant_matmul(x1, w.t(), scale_f32, output_dtype=torch.float16))

    previous = native.set_pack_cache(False)
    try:
        calls = []
        for _ in range(2):
            native.decoded_quant_param(q, lambda: calls.append(1) or reference.decode_quant_param(q))
        assert len(calls) == 2
    finally:
        native.set_pack_cache(previous)


def test_compute_takes_the_path_it_is_given():
    gen = torch.Generator().manual_seed(6)
    x1, x2 = int8((1, 4, 12), gen), int8((1, 12, 5), gen)
    scale = torch.rand(5, generator=gen)
    args = (x1, x2, scale, None, None, None, torch.bfloat16)
    from npuquant.ops import quant_matmul as qm

    want = reference.quant_matmul(*args)
    for on_native in (None, True, False):
        assert_same_bits(qm._compute(*args, on_native=on_native), want)


# ------------------------------------------------------------------------------------ C argument checks


def _args(**overrides) -> native._GemmArgs:
    x1 = torch.ones(2, 3, dtype=torch.int8)
    packed = native.pack_weight(torch.ones(3, 4, dtype=torch.int8))
    out = torch.empty(2, 4, dtype=torch.int32)
    idx = torch.zeros(1, dtype=torch.int64)
    fields = dict(
        batch=1,
        m=2,
        n=4,
        k=3,
        a=x1.data_ptr(),
        a_sm=3,
        a_sk=1,
        a_nbatch=1,
        a_boff=idx.data_ptr(),
        a_bidx=idx.data_ptr(),
        w=packed.data.data_ptr(),
        w_nbatch=1,
        colsum=packed.colsum.data_ptr(),
        w_bidx=idx.data_ptr(),
        out_kind=0,
        out=out.data_ptr(),
    )
    fields.update(overrides)
    args = native._GemmArgs(**fields)
    args._keep = (x1, packed, out, idx)
    return args


def test_c_entry_validates_before_touching_memory():
    lib = _native.lib
    assert lib.npq_gemm_s8(ctypes.byref(_args()), 1) == 0
    assert lib.npq_gemm_s8(ctypes.byref(_args(batch=-1)), 1) == -1
    assert lib.npq_gemm_s8(ctypes.byref(_args(k=-3)), 1) == -1
    assert lib.npq_gemm_s8(ctypes.byref(_args(out=None)), 1) == -2
    assert lib.npq_gemm_s8(ctypes.byref(_args(a=None)), 1) == -2
    bad = torch.tensor([5], dtype=torch.int64)
    assert lib.npq_gemm_s8(ctypes.byref(_args(w_bidx=bad.data_ptr())), 1) == -4
    assert lib.npq_gemm_s8(ctypes.byref(_args(a_bidx=bad.data_ptr())), 1) == -4
    assert lib.npq_gemm_s8(ctypes.byref(_args(out_kind=9)), 1) == -5
    assert lib.npq_gemm_s8(None, 1) == -2
    assert lib.npq_gemm_s8(ctypes.byref(_args(m=0, out=None)), 1) == 0  # empty: nothing to do
    out = torch.empty(16, dtype=torch.uint8)
    assert lib.npq_gemm_pack_b(None, -1, 4, 1, 1, out.data_ptr(), out.data_ptr(), 1) == -1
    assert lib.npq_gemm_pack_b(None, 4, 4, 1, 1, None, out.data_ptr(), 1) == -2
    assert lib.npq_gemm_packed_bytes(-1, 3) == -1 and lib.npq_gemm_panels(-1) == -1


def test_python_entry_errors():
    packed = native.pack_weight(torch.ones(3, 4, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="k=5 but the packed weight has k=3"):
        native._run(torch.ones(1, 2, 5, dtype=torch.int8), packed, True, torch.int32)
    with pytest.raises(RuntimeError, match="a size is negative"):
        native._check_rc(-1, "npq_gemm_s8")
    with pytest.raises(RuntimeError, match="error -99"):
        native._check_rc(-99, "npq_gemm_s8")


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
def test_public_op_native_equals_reference(isa, out, with_pertoken, bias_dtype):
    gen = torch.Generator().manual_seed(21)
    m, k, n = 11, 70, 37
    x1 = int8((2, m, k), gen)
    w = int8((n, k), gen)
    scale = torch.rand(n, generator=gen) / 50
    pt = torch.rand(m, generator=gen) if with_pertoken else None
    bias = None if bias_dtype is None else (torch.randn(n, generator=gen) * 100).to(bias_dtype)
    kwargs = dict(pertoken_scale=pt, bias=bias, output_dtype=out)
    got = npuquant.npu_quant_matmul(x1, w.t(), scale, **kwargs)
    with _native.force_reference():
        want = npuquant.npu_quant_matmul(x1, w.t(), scale, **kwargs)
    assert_same_bits(got, want)


# ------------------------------------------------------------------------------------ A4W4


def test_int4_weight_unpack_cache():
    gen = torch.Generator().manual_seed(4)
    values = torch.randint(-8, 8, (16, 24), generator=gen, dtype=torch.int8)  # logical (k, n)
    along_n = npuquant.pack_int4(values)  # (k, n/8)
    along_k = npuquant.pack_int4(values.t().contiguous())  # (n, k/8); x2 = its .t()
    assert torch.equal(native.unpacked_int4_weight(along_n, False), values)
    assert torch.equal(native.unpacked_int4_weight(along_k.t(), True), values)
    first = native.unpacked_int4_weight(along_n, False)
    assert native.unpacked_int4_weight(along_n, False) is first
    along_n.bitwise_not_()  # in place: every nibble v becomes -1 - v
    assert torch.equal(native.unpacked_int4_weight(along_n, False), -1 - values)
    with _native.force_reference():  # the pure-torch unpack behind the cache
        assert torch.equal(native.unpacked_int4_weight(along_k.t(), True), values)


@pytest.mark.parametrize("along_k", [False, True])
def test_public_a4w4_native_equals_reference(isa, along_k):
    gen = torch.Generator().manual_seed(8)
    m, k, n = 5, 64, 40
    x_values = torch.randint(-8, 8, (m, k), generator=gen, dtype=torch.int8)
    w_values = torch.randint(-8, 8, (k, n), generator=gen, dtype=torch.int8)
    x1 = npuquant.pack_int4(x_values)
    x2 = npuquant.pack_int4(w_values.t().contiguous()).t() if along_k else npuquant.pack_int4(w_values)
    scale = torch.rand(n, generator=gen) / 10
    got = npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float16)
    with _native.force_reference():
        want = npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float16)
    assert_same_bits(got, want)
    assert torch.equal(native.unpacked_int4_weight(x2, along_k), w_values)
    fp19_scale = reference.decode_quant_param(npuquant.npu_trans_quant_param(scale))[0]
    assert torch.equal(got, (exact_acc(x_values, w_values).float() * fp19_scale).half())
