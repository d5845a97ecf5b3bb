"""npu_trans_quant_param (SPEC §5): the §5.4 table bit-exactly, round_mode 1 corner cases, offset
rounding and broadcasting, every error rule, decoding, torch.compile and opcheck; a property test
against an independent pure-python bit-level formula."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from npuquant.ops.quant_matmul import reference

# (scale, offset, round_mode, int64 result, (decoded scale, decoded offset)) — SPEC §5.4
TABLE = [
    (1.0, None, 0, 70369809530880, (1.0, 0)),
    (1.0, 2.0, 0, 70644687437824, (1.0, 2)),
    (0.1, None, 0, 70369781006336, (0.0999755859375, 0)),
    (0.1, -3.0, 0, 140326208323584, (0.0999755859375, -3)),
    (0.5, -1.0, 0, 140601106366464, (0.5, -1)),
    (2.5, 2.5, 0, 70644697923584, (2.5, 2)),
    (2.5, 3.5, 0, 70919575830528, (2.5, 4)),
    (-0.5, 300.0, 0, 105418881761280, (-0.5, 255)),
    (1.0, -1000.0, 0, 105554181619712, (1.0, -256)),
    (0.7, None, 0, 70369804492800, (0.69970703125, 0)),
    (0.7, None, 1, 70369804500992, (0.7001953125, 0)),
]


def f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def f32_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def py_trans(scale: float, offset: float | None, round_mode: int, bits: int | None = None) -> int:
    """Independent bit-level formula (SPEC §5.2), one value at a time in Python integers.

    ``bits`` (the float32 bit pattern) overrides ``scale`` so NaN payloads are exact."""
    u = f32_bits(scale) if bits is None else bits & 0xFFFFFFFF
    sign, exponent, mantissa = u >> 31, (u >> 23) & 0xFF, u & 0x7FFFFF
    if round_mode == 0 or exponent == 255:
        fp19 = u & 0xFFFFE000
    elif exponent == 0:
        fp19 = sign << 31
    else:
        m19 = mantissa >> 13
        if (mantissa >> 12) & 1 and ((mantissa & 0xFFF) or (m19 & 1)):
            m19 += 1
        if m19 == 1 << 10:
            m19, exponent = 0, exponent + 1
        fp19 = (sign << 31) | (exponent << 23) | (m19 << 13)
    out = fp19 | (1 << 46)
    if offset is not None:
        o = 0 if math.isnan(offset) else max(-256, min(255, round(offset) if math.isfinite(offset) else offset))
        out = (out & 0x4000FFFFFFFF) | ((int(o) & 0x1FF) << 37)
    return out


@pytest.mark.parametrize("scale, offset, round_mode, expected, decoded", TABLE)
def test_spec_table(scale, offset, round_mode, expected, decoded):
    off = None if offset is None else torch.tensor([offset])
    out = npuquant.npu_trans_quant_param(torch.tensor([scale]), off, round_mode)
    assert out.dtype == torch.int64 and out.shape == (1,)
    assert out.item() == expected
    dec_scale, dec_offset = reference.decode_quant_param(out)
    assert (dec_scale.item(), int(dec_offset.item())) == decoded


def test_doc_outputs_decode():
    q = torch.tensor([70507248869376, 140463653937152])
    scale, offset = reference.decode_quant_param(q)
    assert scale.tolist() == [1.0458984375, 0.1741943359375]
    assert offset.tolist() == [1.0, -2.0]


def test_step_by_step_layout():
    out = npuquant.npu_trans_quant_param(torch.tensor([0.1]), torch.tensor([-3.0])).item()
    assert out == 0x7FA03DCCC000
    assert out & 0x1FFF == 0 and (out >> 32) & 0x1F == 0 and (out >> 46) & 1 == 1 and out >> 47 == 0


def test_vector_and_broadcasting():
    scale = torch.tensor([1.0, 0.1, 0.5, 2.5])
    offset = torch.tensor([0.0, -3.0, -1.0, 2.5])
    out = npuquant.npu_trans_quant_param(scale, offset)
    assert out.tolist() == [py_trans(s, o, 0) for s, o in zip(scale.tolist(), offset.tolist())]
    # scale (1,) + offset (4,) -> (4,) (OP-TEST), scale (4,) + offset (1,) -> (4,)
    out = npuquant.npu_trans_quant_param(torch.tensor([1.0]), offset)
    assert out.shape == (4,) and out.tolist() == [py_trans(1.0, o, 0) for o in offset.tolist()]
    out = npuquant.npu_trans_quant_param(scale, torch.tensor([2.0]))
    assert out.tolist() == [py_trans(s, 2.0, 0) for s in scale.tolist()]
    # (1, n) scale keeps its shape, with or without a (1, n) offset
    out = npuquant.npu_trans_quant_param(scale.reshape(1, 4))
    assert out.shape == (1, 4) and out[0].tolist() == [py_trans(s, None, 0) for s in scale.tolist()]
    out = npuquant.npu_trans_quant_param(scale.reshape(1, 4), offset.reshape(1, 4), 1)
    assert out[0].tolist() == [py_trans(s, o, 1) for s, o in zip(scale.tolist(), offset.tolist())]


def test_non_contiguous_inputs():
    scale = torch.tensor([0.1, 9.0, 0.7, 9.0, 0.3])[::2]
    offset = torch.tensor([1.5, 0.0, -2.5, 0.0, 7.0])[::2]
    out = npuquant.npu_trans_quant_param(scale, offset)
    assert out.tolist() == [py_trans(s, o, 0) for s, o in zip(scale.tolist(), offset.tolist())]


@pytest.mark.parametrize(
    "offset, expected",
    [
        (2.5, 2),
        (3.5, 4),
        (-2.5, -2),
        (-3.5, -4),
        (0.5, 0),
        (255.4, 255),
        (255.6, 255),
        (-256.6, -256),
        (float("inf"), 255),
        (float("-inf"), -256),
        (float("nan"), 0),
    ],
)
def test_offset_rounding_half_even_and_clamp(offset, expected):
    out = npuquant.npu_trans_quant_param(torch.tensor([1.0]), torch.tensor([offset]))
    assert int(reference.decode_quant_param(out)[1].item()) == expected


@pytest.mark.parametrize(
    "bits, expected_bits",
    [
        (0x3F801000, 0x3F800000),  # tie, kept LSB even -> down
        (0x3F803000, 0x3F804000),  # tie, kept LSB odd -> up
        (0x3F801001, 0x3F802000),  # above half -> up
        (0x3F800FFF, 0x3F800000),  # below half -> down
        (0x3FFFF000, 0x40000000),  # mantissa overflow carries into the exponent (1.99.. -> 2.0)
        (0x7F7FFFFF, 0x7F800000),  # largest finite rounds to +inf
        (0xBFFFF000, 0xC0000000),  # negative carry keeps the sign
        (0x00000FFF, 0x00000000),  # denormal flushed to +0
        (0x807FFFFF, 0x80000000),  # negative denormal flushed to -0
        (0x7F800000, 0x7F800000),  # inf kept
        (0x7FC01FFF, 0x7FC00000),  # NaN truncated (stays NaN)
    ],
)
def test_round_mode_1_corners(bits, expected_bits):
    scale = torch.tensor([bits if bits < 2**31 else bits - 2**32], dtype=torch.int32).view(torch.float32)
    out = npuquant.npu_trans_quant_param(scale, round_mode=1).item()
    assert out & 0xFFFFFFFF == expected_bits
    assert out >> 32 == 1 << 14
    assert out == py_trans(0.0, None, 1, bits=bits)


def test_round_mode_0_truncates_specials():
    bits = [0x7F800000, 0xFF800000, 0x7FC00123, 0x00000001, 0x80000000]
    scale = torch.tensor([b if b < 2**31 else b - 2**32 for b in bits], dtype=torch.int32).view(torch.float32)
    out = npuquant.npu_trans_quant_param(scale)
    assert [v & 0xFFFFFFFF for v in out.tolist()] == [b & 0xFFFFE000 for b in bits]


finite_or_special = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.integers(0, 2**32 - 1).map(f32_from_bits),
)


@given(
    scales=st.lists(finite_or_special, min_size=1, max_size=8),
    offsets=st.one_of(st.none(), st.lists(st.floats(-600, 600, width=32), min_size=1, max_size=1)),
    round_mode=st.sampled_from([0, 1]),
)
def test_property_matches_python_formula(scales, offsets, round_mode):
    scale = torch.tensor(scales, dtype=torch.float32)
    offset = None if offsets is None else torch.tensor(offsets, dtype=torch.float32)
    out = npuquant.npu_trans_quant_param(scale, offset, round_mode).tolist()
    o = None if offsets is None else offset.item()
    for value, bits in zip(out, scale.view(torch.int32).tolist()):
        assert value == py_trans(0.0, o, round_mode, bits=bits)


def test_decode_inverts_encode():
    scale = torch.tensor([0.75, -3.0, 1e-3, 12345.0])
    offset = torch.tensor([-256.0, 255.0, 0.0, -7.0])
    dec_scale, dec_offset = reference.decode_quant_param(npuquant.npu_trans_quant_param(scale, offset))
    assert torch.equal(dec_scale, reference._float32_from_bits(reference._float32_bits(scale) & 0xFFFFE000))
    assert torch.equal(dec_offset, offset)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "scale, offset, round_mode, message",
    [
        (torch.ones(2, 3), None, 0, "the scale shape support only (1, ) and (1, n)"),
        (torch.ones(1, 2, 3), None, 0, "the scale shape support only (1, ) and (1, n)"),
        (torch.tensor(1.0), None, 0, "the scale shape support only (1, ) and (1, n)"),
        (torch.ones(3), None, 2, "round_mode must be 0 or 1. but now is 2"),
        (torch.ones(3), None, -1, "round_mode must be 0 or 1. but now is -1"),
        (
            torch.ones(3),
            torch.ones(2),
            0,
            "offset first dim should be equal to scale first dim if none of them are equal to one",
        ),
        (
            torch.ones(1, 3),
            torch.ones(3),
            0,
            "when the input shape of scale is (1, n), shape of scale and offset should be equal",
        ),
        (torch.ones(3), torch.ones(1, 3), 0, "offset must be 1-D when scale is 1-D"),
        (torch.ones(3, dtype=torch.float16), None, 0, "scale's type supported for float32"),
        (torch.ones(3), torch.ones(3, dtype=torch.bfloat16), 0, "offset's type supported for float32"),
        (torch.ones(0), None, 0, "scale must not be an empty tensor"),
        (torch.ones(1), torch.ones(0), 0, "offset must not be an empty tensor"),
    ],
)
def test_errors(scale, offset, round_mode, message):
    with pytest.raises(RuntimeError) as err:
        npuquant.npu_trans_quant_param(scale, offset, round_mode)
    assert message in str(err.value)


def test_errors_in_fake_mode_too():
    with torch._subclasses.FakeTensorMode(), pytest.raises(RuntimeError, match="round_mode must be 0 or 1"):
        npuquant.npu_trans_quant_param(torch.ones(3), None, 5)


# ---------------------------------------------------------------- torch.compile / opcheck


def test_compile_fullgraph_dynamic():
    fn = torch.compile(npuquant.npu_trans_quant_param, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (3, 5, 9):
        scale, offset = torch.rand(n) + 0.1, torch.randn(n) * 10
        assert torch.equal(fn(scale, offset), npuquant.npu_trans_quant_param(scale, offset))


@pytest.mark.parametrize(
    "args",
    [
        (torch.rand(5),),
        (torch.rand(1), torch.randn(4) * 5),
        (torch.rand(1, 6), torch.randn(1, 6), 1),
    ],
)
def test_opcheck(args):
    torch.library.opcheck(torch.ops.npuquant.npu_trans_quant_param.default, args)
