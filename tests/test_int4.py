"""int4 packing (SPEC §2): pack_int4, unpack_int4, npu_convert_weight_to_int4pack; compile and opcheck of
the operators ``torch.ops.npuquant.pack_int4`` / ``unpack_int4``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant


@pytest.mark.parametrize(
    ("values", "word"),
    [
        ([0, 1, 2, 3, 4, 5, 6, 7], 1985229328),
        ([-1, -2, -3, -4, -5, -6, -7, -8], -1985229329),
        ([1, -1, 0, 0, 0, 0, 0, 0], 241),
        ([7, -8] * 4, -2021161081),
        ([-8, -6, -4, -2, 1, 3, 5, 7], 1966206120),
    ],
)
def test_spec_examples(values, word):
    v = torch.tensor(values, dtype=torch.int8)
    assert npuquant.pack_int4(v).tolist() == [word]
    assert npuquant.unpack_int4(torch.tensor([word], dtype=torch.int32)).tolist() == values


def python_pack(values: list[int]) -> int:
    word = 0
    for j, v in enumerate(values):
        word |= (v & 0xF) << (4 * j)
    return word - (1 << 32) if word >= 1 << 31 else word


@given(st.lists(st.integers(-8, 7), min_size=8, max_size=64).filter(lambda v: len(v) % 8 == 0))
def test_pack_matches_python_and_round_trips(values):
    v = torch.tensor(values, dtype=torch.int8)
    packed = npuquant.pack_int4(v)
    assert packed.tolist() == [python_pack(values[i : i + 8]) for i in range(0, len(values), 8)]
    assert npuquant.unpack_int4(packed).tolist() == values


@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8))
def test_unpack_pack_round_trip_any_word(words):
    w = torch.tensor(words, dtype=torch.int32)
    assert torch.equal(npuquant.pack_int4(npuquant.unpack_int4(w)), w)


def test_batched_and_non_contiguous():
    v = torch.randint(-8, 8, (3, 16, 4), dtype=torch.int8).transpose(1, 2)  # (3, 4, 16), strided
    packed = npuquant.pack_int4(v)
    assert packed.shape == (3, 4, 2) and packed.is_contiguous()
    assert torch.equal(npuquant.unpack_int4(packed), v)
    assert torch.equal(npuquant.unpack_int4(packed.transpose(0, 1)), v.transpose(0, 1))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8])
def test_pack_accepts_integer_dtypes(dtype):
    v = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7], dtype=dtype)
    assert npuquant.pack_int4(v).tolist() == [1985229328]


def test_empty():
    assert npuquant.pack_int4(torch.empty(0, 8, dtype=torch.int8)).shape == (0, 1)
    assert npuquant.pack_int4(torch.empty(3, 0, dtype=torch.int8)).shape == (3, 0)
    assert npuquant.unpack_int4(torch.empty(2, 0, dtype=torch.int32)).shape == (2, 0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (torch.ones(8), "values must have an integer dtype"),
        (torch.ones(8, dtype=torch.bool), "values must have an integer dtype"),
        (torch.ones(7, dtype=torch.int8), "the last dim of values must be a multiple of 8, but it is 7"),
        (torch.tensor(1, dtype=torch.int8), "values must have at least 1 dimension"),
        (torch.tensor([8, 0, 0, 0, 0, 0, 0, 0], dtype=torch.int8), "values must hold int4 values in [-8, 7]"),
        (torch.tensor([0, 0, 0, 0, 0, 0, 0, -9], dtype=torch.int32), "found values in [-9, 0]"),
    ],
)
def test_pack_errors(values, message):
    with pytest.raises(RuntimeError) as info:
        npuquant.pack_int4(values)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("packed", "message"),
    [
        (torch.ones(2, dtype=torch.int8), "packed must be int32 (8 int4 per word), but got torch.int8"),
        (torch.tensor(1, dtype=torch.int32), "packed must have at least 1 dimension"),
    ],
)
def test_unpack_errors(packed, message):
    with pytest.raises(RuntimeError) as info:
        npuquant.unpack_int4(packed)
    assert message in str(info.value)


# ---------------------------------------------------------------- npu_convert_weight_to_int4pack


@pytest.mark.parametrize("shape", [(16, 8), (4, 32), (2, 3, 16)])
def test_convert_weight(shape):
    w = torch.randint(-8, 8, shape, dtype=torch.int32)
    packed = npuquant.npu_convert_weight_to_int4pack(w)
    assert packed.shape == (*shape[:-1], shape[-1] // 8) and packed.dtype == torch.int32
    assert torch.equal(npuquant.unpack_int4(packed).to(torch.int32), w)


@pytest.mark.parametrize(
    ("weight", "kwargs", "message"),
    [
        (torch.zeros(16, 8, dtype=torch.int32).t(), {}, "weight should be contiguous"),
        (torch.zeros(8, dtype=torch.int32), {}, "weight shape only support dim num 2/3, but it is 1"),
        (torch.zeros(1, 1, 1, 8, dtype=torch.int32), {}, "weight shape only support dim num 2/3, but it is 4"),
        (torch.zeros(2, 8, dtype=torch.int8), {}, "weight dtype only support int32 and float32, but it is torch.int8"),
        (torch.zeros(0, 8, dtype=torch.int32), {}, "weight dim should be greater than 0"),
        (torch.zeros(2, 12, dtype=torch.int32), {}, "weight last dim should be the multiple of 8, but it is 12"),
        (torch.zeros(2, 8), {}, "float32 weight (FP4-E2M1 packing, Ascend 950 only) is not supported"),
        (torch.zeros(2, 8, dtype=torch.int32), {"inner_k_tiles": 2}, "inner_k_tiles must be 0"),
        (torch.full((2, 8), 9, dtype=torch.int32), {}, "weight must hold int4 values in [-8, 7]"),
    ],
)
def test_convert_weight_errors(weight, kwargs, message):
    with pytest.raises(RuntimeError) as info:
        npuquant.npu_convert_weight_to_int4pack(weight, **kwargs)
    assert message in str(info.value)


# ---------------------------------------------------------------- compile / opcheck


@pytest.mark.parametrize("dynamic", [True, False])
def test_compile_fullgraph(dynamic):
    def fn(v):
        return npuquant.unpack_int4(npuquant.pack_int4(v)).sum()

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    for rows in (2, 3):
        v = torch.randint(-8, 8, (rows, 16), dtype=torch.int8)
        assert torch.equal(compiled(v), fn(v))


def test_compile_convert_weight():
    compiled = torch.compile(npuquant.npu_convert_weight_to_int4pack, fullgraph=True, backend="aot_eager")
    w = torch.randint(-8, 8, (4, 16), dtype=torch.int32)
    assert torch.equal(compiled(w), npuquant.pack_int4(w))


OPCHECK_VALUES = {
    "int8": lambda: torch.randint(-8, 8, (3, 16), dtype=torch.int8),
    "uint8-3d": lambda: torch.randint(0, 8, (2, 3, 8), dtype=torch.uint8),
    "int32-strided": lambda: torch.randint(-8, 8, (16, 4), dtype=torch.int32).t(),
    "int64-empty": lambda: torch.empty(0, 8, dtype=torch.int64),
}


@pytest.mark.parametrize("case", sorted(OPCHECK_VALUES))
def test_opcheck_pack(case):
    torch.library.opcheck(torch.ops.npuquant.pack_int4.default, (OPCHECK_VALUES[case](),))
    torch.library.opcheck(torch.ops.npuquant.pack_int4.default, (OPCHECK_VALUES[case](), "weight"))


def test_opcheck_unpack():
    words = torch.randint(-(2**31), 2**31 - 1, (3, 2), dtype=torch.int32)
    torch.library.opcheck(torch.ops.npuquant.unpack_int4.default, (words,))
    torch.library.opcheck(torch.ops.npuquant.unpack_int4.default, (words.t(),))
    torch.library.opcheck(torch.ops.npuquant.unpack_int4.default, (torch.empty(4, 0, dtype=torch.int32),))


def test_compile_reports_range_errors():
    compiled = torch.compile(npuquant.pack_int4, fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"values must hold int4 values in \[-8, 7\], but found values in \[0, 8\]"):
        compiled(torch.tensor([[0] * 7 + [8]], dtype=torch.int8))
