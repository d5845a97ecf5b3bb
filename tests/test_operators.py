"""The native operators (torch.ops.npuquant.*): opcheck on each, storage checks before any kernel
touches memory, TypeErrors for missing tensors, and purity (results follow the inputs' contents)."""

from __future__ import annotations

import pytest
import torch

import npuquant
from helpers import assert_matches_reference, assert_same_bits, is_w4a16_gemv, random_int8, random_words, shrink_storage
from npuquant import _native
from npuquant.nn.linear import W4A16Linear, W8A8Linear, W8A8SymLinear

OPS = torch.ops.npuquant


def _linear_w4a16_args():
    layer = W4A16Linear.from_linear(torch.nn.Linear(40, 24), group_size=16)
    return (
        torch.randn(3, 40),
        layer.weight,
        layer.weight_scale,
        layer.weight_offset,
        layer.bias,
        layer.in_features,
        5,
    )


def _int8_layer_args(smooth: bool):
    w = random_int8(24, 40)
    return (
        torch.randn(2, 3, 40).to(torch.bfloat16),
        w,
        torch.rand(24) / 100,
        (torch.rand(40) + 0.5) if smooth else None,
        torch.randn(24).to(torch.bfloat16),
    )


# Every operator with tensors in, and sample arguments for it.
SAMPLES = {
    "dequant_affine_last_dim": lambda: (random_int8(3, 16), torch.rand(16), torch.randn(16), torch.float16),
    "dequant_affine_int4": lambda: (random_words(3, 2), torch.rand(1), None, torch.bfloat16),
    "dequant_affine_grouped": lambda: (random_words(4, 4), torch.rand(4, 2), torch.randn(4, 2), torch.float32),
    "dequant_affine_column": lambda: (random_int8(2, 3, 8), torch.rand(2, 8), torch.randn(2, 8), torch.float32),
    "dequant_affine_int16_row": lambda: (torch.randint(-9, 9, (4, 8), dtype=torch.int16), torch.rand(4, 1), None,
                                         torch.float32),
    "dynamic_quant": lambda: (torch.randn(5, 16).half(), torch.rand(16).half(), None, True, False),
    "dynamic_quant_int4": lambda: (torch.randn(5, 16), None, None, False, True),
    "unpack_int4": lambda: (random_words(3, 5),),
    "pack_int4": lambda: (torch.randint(-8, 8, (3, 16), dtype=torch.int8), "values"),
    "quant_matmul": lambda: (
        random_int8(2, 3, 32),
        random_int8(2, 40, 32).transpose(1, 2),
        torch.rand(40),
        None,
        torch.rand(3),
        torch.randn(1, 40),
        torch.bfloat16,
    ),
    "quant_matmul_large_m": lambda: (
        random_int8(1, 20, 32),
        random_int8(1, 32, 24),
        torch.rand(1),
        torch.tensor([3.0]),
        None,
        torch.randint(-100, 100, (1, 24), dtype=torch.int32),
        torch.int8,
    ),
    "quant_matmul_asymmetric": lambda: (
        random_int8(4, 32),
        torch.rand(4),
        torch.randn(4),
        random_int8(24, 32).t(),
        torch.rand(24),
        torch.randn(24),
        torch.float16,
    ),
    "linear_w8a8": lambda: _int8_layer_args(True),
    "linear_w8a8_sym": lambda: _int8_layer_args(False),
    "linear_w4a16": _linear_w4a16_args,
}


def _op(case: str):
    """The operator a sample case exercises (``dequant_affine_int4`` -> ``torch.ops.npuquant.dequant_affine``)."""
    name = case
    while not hasattr(OPS, name):
        assert "_" in name, f"no operator for sample {case!r}"
        name = name.rsplit("_", 1)[0]
    return getattr(OPS, name)


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_opcheck(case: str) -> None:
    torch.library.opcheck(_op(case), SAMPLES[case]())


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_native_matches_reference(case: str) -> None:
    args = SAMPLES[case]()
    got = _op(case)(*args)
    ref = _reference_of(case)(*args)
    gemv = is_w4a16_gemv(case, args[0])
    for g, r in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
        assert_matches_reference(g, r, gemv)


def _reference_of(case: str):
    """The Python reference wired to the operator (what other devices run)."""
    op = _op(case)

    def run(*args):
        with _native.force_reference():
            return _reference_impls()[op._qualified_op_name.split("::")[1]](*args)

    return run


def _reference_impls():
    from npuquant.nn import linear
    from npuquant.ops import dequant_affine, dynamic_quant, int4
    from npuquant.ops import quant_matmul as qm
    from npuquant.ops.quant_matmul import asymmetric

    return {
        "dequant_affine": dequant_affine.reference.dequant_affine,
        "dynamic_quant": dynamic_quant._reference,
        "unpack_int4": int4.reference.unpack_int4,
        "pack_int4": int4._pack_reference,
        "quant_matmul": qm.reference.quant_matmul,
        "quant_matmul_asymmetric": asymmetric._reference_2d,
        "linear_w8a8": linear._linear_w8a8_reference,
        "linear_w8a8_sym": linear._linear_w8a8_sym_reference,
        "linear_w4a16": linear._linear_w4a16_reference,
    }


# ------------------------------------------------------------------------------ storage checks


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_shrunk_storage_is_refused_before_the_kernel(case: str) -> None:
    """Every tensor argument: a storage too small for its sizes raises, naming the argument."""
    args = SAMPLES[case]()
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor) or a.numel() * a.element_size() <= 16:
            continue
        fresh = list(SAMPLES[case]())
        shrink_storage(fresh[i])  # a view shrinks the storage it shares
        with pytest.raises(RuntimeError, match="reaches outside its storage"):
            _op(case)(*fresh)


def test_shrunk_storage_public_dynamic_quant_raises_not_crashes() -> None:
    x = torch.randn(2048, 16384).half()
    shrink_storage(x)
    with pytest.raises(RuntimeError, match="x of shape .* reaches outside its storage"):
        npuquant.npu_dynamic_quant_asymmetric(x)


def test_storage_offset_past_the_end_is_refused() -> None:
    x = random_int8(64)[32:].view(4, 8)  # elements 32..63 of the storage
    x.untyped_storage().resize_(40)
    with pytest.raises(RuntimeError, match="x of shape \\[4, 8\\] reaches outside its storage"):
        OPS.dequant_affine(x, torch.rand(1), None, torch.float16)


# ------------------------------------------------------------------------------ missing tensors

PUBLIC_CALLS = {
    "npu_anti_quant": (lambda x, s: npuquant.npu_anti_quant(x, s), ("x", "scale")),
    "npu_dynamic_quant": (lambda x: npuquant.npu_dynamic_quant(x), ("x",)),
    "npu_dynamic_quant_asymmetric": (lambda x: npuquant.npu_dynamic_quant_asymmetric(x), ("x",)),
    "npu_quant_matmul": (lambda a, b, s: npuquant.npu_quant_matmul(a, b, s), ("x1", "x2", "scale")),
    "npu_trans_quant_param": (lambda s: npuquant.npu_trans_quant_param(s), ("scale",)),
    "npu_convert_weight_to_int4pack": (lambda w: npuquant.npu_convert_weight_to_int4pack(w), ("weight",)),
    "pack_int4": (lambda v: npuquant.pack_int4(v), ("values",)),
    "unpack_int4": (lambda p: npuquant.unpack_int4(p), ("packed",)),
    "npu_quantize": (lambda x, s: npuquant.npu_quantize(x, s, None, torch.qint8), ("input", "scales")),
    "quant_matmul_asymmetric": (
        lambda q, s, o, w, ws: npuquant.quant_matmul_asymmetric(q, s, o, w, ws),
        ("x_q", "x_scale", "x_offset", "weight", "w_scale"),
    ),
}


@pytest.mark.parametrize("name", sorted(PUBLIC_CALLS))
@pytest.mark.parametrize("bad", [None, 3.0, [1, 2]])
def test_missing_tensor_is_a_type_error_naming_the_argument(name: str, bad: object) -> None:
    call, params = PUBLIC_CALLS[name]
    for i, param in enumerate(params):
        args = [torch.zeros(8, 8, dtype=torch.int8)] * len(params)
        args[i] = bad
        with pytest.raises(TypeError, match=f"argument '{param}'"):
            call(*args)


@pytest.mark.parametrize("rank", [1, 9, 10, 12])
def test_pack_unpack_accept_any_rank_and_strides(rank: int) -> None:
    shape = [2] * (rank - 1) + [16]
    values = torch.randint(-8, 8, shape, dtype=torch.int8)
    strided = values.transpose(0, rank - 2) if rank > 2 else values
    packed = npuquant.pack_int4(strided)
    assert torch.equal(npuquant.unpack_int4(packed), strided)
    noncontig = packed.transpose(0, rank - 2) if rank > 2 else packed
    assert torch.equal(npuquant.unpack_int4(noncontig), npuquant.unpack_int4(noncontig.contiguous()))


# ------------------------------------------------------------------------------ purity


def test_quant_matmul_sees_writes_that_bypass_the_version_counter() -> None:
    x = random_int8(16, 64)
    w = random_int8(32, 64)
    scale = torch.rand(32)
    for m in (1, 16):  # the in-place GEMV and the per-call packed GEMM
        a = x[:m]
        first = npuquant.npu_quant_matmul(a, w.t(), scale, output_dtype=torch.float16)
        w.numpy()[:] = -w.numpy()  # no version bump
        second = npuquant.npu_quant_matmul(a, w.t(), scale, output_dtype=torch.float16)
        with _native.force_reference():
            want = npuquant.npu_quant_matmul(a, w.t(), scale, output_dtype=torch.float16)
        assert_same_bits(second, want)
        assert not torch.equal(first, second)


@pytest.mark.parametrize("cls", [W8A8Linear, W8A8SymLinear, W4A16Linear])
def test_layers_follow_weight_edits_through_data(cls) -> None:
    layer = cls.from_linear(torch.nn.Linear(64, 32))
    x = torch.randn(3, 64)
    before = layer(x)
    layer.weight.data.copy_(torch.flip(layer.weight.data, [0]))  # .data: bypasses the version counter
    after = layer(x)
    with _native.force_reference():
        want = layer(x)
    assert_matches_reference(after, want, is_w4a16_gemv(layer, x))
    assert not torch.equal(before, after)
