"""npuquant.pypto: PyPTO-compatible tensors, tile shapes and dequantize (SPEC §8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from npuquant import pypto


@pytest.fixture(autouse=True)
def _restore_tile_shape():
    saved = pypto._vec_tile_shapes
    yield
    pypto._vec_tile_shapes = saved


def pto(t: torch.Tensor) -> pypto.Tensor:
    return pypto.from_torch(t.contiguous())


def golden(x: torch.Tensor, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    """Independent formula: plain numpy float32 with explicit broadcasting of the reduced-shape parameters."""
    expand = -1 if axis == -1 else -2
    xf = x.numpy().astype(np.float32)
    if zp is not None:
        xf = xf + np.expand_dims(zp, expand)
    return xf * np.expand_dims(scale, expand)


def random_case(shape, axis, dtype=torch.int8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max + 1, shape, dtype=dtype, generator=gen)
    pshape = shape[:-1] if axis == -1 else shape[:-2] + shape[-1:]
    scale = torch.randn(pshape, generator=gen)
    zp = torch.randn(pshape, generator=gen) * 20
    return x, scale, zp


# ---------------------------------------------------------------- seed and SPEC examples


def test_seed_example_exactly():
    pypto.set_vec_tile_shapes(4, 16)
    x = pypto.tensor([3, 4], pypto.DT_INT8)
    scale = pypto.tensor([3, 1], pypto.DT_FP32)
    zero_points = pypto.tensor([3, 1], pypto.DT_FP32)
    x.to_torch()[:] = torch.tensor([1, 2, 3, 4], dtype=torch.int8)
    scale.to_torch().fill_(1.0)
    zero_points.to_torch().fill_(-2.0)

    y1 = pypto.dequantize(x, scale, pypto.DT_FP32, -1, None)
    y2 = pypto.dequantize(x, scale, pypto.DT_FP32, -1, zero_points)

    assert isinstance(y1, pypto.Tensor) and y1.dtype == pypto.DT_FP32 and y1.shape == [3, 4]
    assert y1.to_torch().tolist() == [[1.0, 2.0, 3.0, 4.0]] * 3
    assert y2.to_torch().tolist() == [[-1.0, 0.0, 1.0, 2.0]] * 3
    assert y2.to_torch().dtype == torch.float32


def test_spec_axis_minus_two_example():
    pypto.set_vec_tile_shapes(8, 8)
    x = pto(torch.tensor([[1, 2], [3, 4]], dtype=torch.int8))
    y = pypto.dequantize(x, pto(torch.tensor([10.0, 100.0])), pypto.DT_FP32, -2, pto(torch.tensor([1.0, 2.0])))
    assert y.to_torch().tolist() == [[20.0, 400.0], [40.0, 600.0]]


def test_zero_points_are_added_not_subtracted():
    # The seed's formula; the vendor kernel's (x - zp) * s would give [3, 4, 5, 6].
    pypto.set_vec_tile_shapes(8, 8)
    x = pto(torch.tensor([[1, 2, 3, 4]], dtype=torch.int8))
    y = pypto.dequantize(x, pto(torch.ones(1)), pypto.DT_FP32, -1, pto(torch.full((1,), -2.0)))
    assert y.to_torch().tolist() == [[-1.0, 0.0, 1.0, 2.0]]


# ---------------------------------------------------------------- numerics vs an independent formula

CASES = [((5, 12), (2, 8)), ((3, 4, 10), (2, 3, 8)), ((2, 3, 5, 9), (1, 2, 2, 8))]


@pytest.mark.parametrize(("shape", "tile"), CASES)
@pytest.mark.parametrize("axis", [-1, -2])
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16])
@pytest.mark.parametrize("keep_dim", [False, True])
def test_matches_independent_formula(shape, tile, axis, dtype, keep_dim):
    x, scale, zp = random_case(shape, axis, dtype, seed=len(shape) * 10 - axis)
    expected_sym = golden(x, scale.numpy(), None, axis)
    expected_asym = golden(x, scale.numpy(), zp.numpy(), axis)
    if keep_dim:  # the seed example's [..., row, 1] / [..., 1, col] form
        scale, zp = scale.unsqueeze(axis), zp.unsqueeze(axis)
    pypto.set_vec_tile_shapes(*tile)
    y_sym = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, axis)
    y_asym = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, axis, pto(zp))
    np.testing.assert_array_equal(y_sym.to_torch().numpy(), expected_sym)
    np.testing.assert_array_equal(y_asym.to_torch().numpy(), expected_asym)


@pytest.mark.parametrize(("shape", "tile"), CASES)
def test_positive_axis_equivalents(shape, tile):
    pypto.set_vec_tile_shapes(*tile)
    ndim = len(shape)
    for neg in (-1, -2):
        x, scale, zp = random_case(shape, neg, seed=ndim)
        a = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, neg, pto(zp)).to_torch()
        b = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, ndim + neg, pto(zp)).to_torch()
        assert torch.equal(a, b)


def test_otype_and_dtype_given_as_ints():
    pypto.set_vec_tile_shapes(8, 8)
    x = pypto.tensor([2, 2], 1)  # DT_INT8
    assert x.dtype is pypto.DT_INT8
    y = pypto.dequantize(x, pto(torch.ones(2)), 7, -1)
    assert y.to_torch().tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_empty_zero_points_mean_symmetric():
    pypto.set_vec_tile_shapes(8, 8)
    x, scale, _ = random_case((3, 8), -1)
    empty = pypto.tensor([0], pypto.DT_FP32)
    y = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, -1, empty)
    np.testing.assert_array_equal(y.to_torch().numpy(), golden(x, scale.numpy(), None, -1))


# ---------------------------------------------------------------- tiles


TILES_3D = [(1, 1, 8), (2, 3, 8), (1, 4, 16), (5, 7, 24), (64, 64, 64), (3, 1, 8)]


@pytest.mark.parametrize("axis", [-1, -2])
def test_tile_shape_never_changes_the_numbers(axis):
    x, scale, zp = random_case((4, 7, 19), axis, seed=9)
    results = []
    for tile in TILES_3D:
        pypto.set_vec_tile_shapes(*tile)
        results.append(pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, axis, pto(zp)).to_torch())
    for r in results[1:]:
        assert torch.equal(r, results[0])
    np.testing.assert_array_equal(results[0].numpy(), golden(x, scale.numpy(), zp.numpy(), axis))


@given(
    shape=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    tile_seed=st.integers(0, 2**16),
    axis=st.sampled_from([-1, -2]),
    with_zp=st.booleans(),
)
def test_property_any_tile_matches_formula(shape, tile_seed, axis, with_zp):
    rng = np.random.default_rng(tile_seed)
    tile = [int(rng.integers(1, 7)) for _ in shape[:-1]] + [8 * int(rng.integers(1, 3))]
    x, scale, zp = random_case(tuple(shape), axis, seed=tile_seed)
    pypto.set_vec_tile_shapes(*tile)
    y = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, axis, pto(zp) if with_zp else None)
    np.testing.assert_array_equal(y.to_torch().numpy(), golden(x, scale.numpy(), zp.numpy() if with_zp else None, axis))


def test_execution_walks_the_output_tile_by_tile(monkeypatch):
    calls = []
    real = pypto.dequantize_op

    def spy(x, scale, zp, axis):
        calls.append((tuple(x.shape), tuple(scale.shape), None if zp is None else tuple(zp.shape), axis))
        return real(x, scale, zp, axis)

    monkeypatch.setattr(pypto, "dequantize_op", spy)
    x, scale, zp = random_case((5, 20), -1)
    pypto.set_vec_tile_shapes(2, 8)
    y = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, -1, pto(zp))
    # rows split 2+2+1, columns 8+8+4: 9 tiles, each no larger than the tile shape
    assert len(calls) == 9
    assert sorted(calls) == sorted([((r, c), (r,), (r,), -1) for r in (2, 2, 1) for c in (8, 8, 4)])
    np.testing.assert_array_equal(y.to_torch().numpy(), golden(x, scale.numpy(), zp.numpy(), -1))
    # per-column, positive axis, keep-dim scale, no zero points: the operator gets axis -2 and [col] slices
    calls.clear()
    x, scale, _ = random_case((3, 5, 12), -2, seed=3)
    pypto.set_vec_tile_shapes(2, 4, 8)
    y = pypto.dequantize(pto(x), pto(scale.unsqueeze(-2)), pypto.DT_FP32, 1)
    assert sorted(calls) == sorted([((b, r, c), (b, c), None, -2) for b in (2, 1) for r in (4, 1) for c in (8, 4)])
    np.testing.assert_array_equal(y.to_torch().numpy(), golden(x, scale.numpy(), None, -2))


def test_set_and_get_vec_tile_shapes():
    pypto.set_vec_tile_shapes(1, 1, 8, 8)
    assert pypto.get_vec_tile_shapes() == [1, 1, 8, 8]
    got = pypto.get_vec_tile_shapes()
    got.append(3)
    assert pypto.get_vec_tile_shapes() == [1, 1, 8, 8]
    pypto.set_vec_tile_shapes(16)
    assert pypto.get_vec_tile_shapes() == [16]


def test_get_vec_tile_shapes_unset():
    pypto._vec_tile_shapes = None
    assert pypto.get_vec_tile_shapes() == []


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ((), "takes 1 to 4 dims, but got 0"),
        ((1, 2, 3, 4, 8), "takes 1 to 4 dims, but got 5"),
        ((4, 0), "every tile dim must be > 0"),
        ((-1, 8), "every tile dim must be > 0"),
        ((2.0, 8), "takes ints"),
        ((True, 8), "takes ints"),
    ],
)
def test_set_vec_tile_shapes_errors(dims, message):
    pypto.set_vec_tile_shapes(4, 8)
    with pytest.raises(ValueError, match=message):
        pypto.set_vec_tile_shapes(*dims)
    assert pypto.get_vec_tile_shapes() == [4, 8]  # unchanged by the failed call


def test_tile_shape_required():
    pypto._vec_tile_shapes = None
    x, scale, _ = random_case((2, 8), -1)
    with pytest.raises(RuntimeError, match="call pypto.set_vec_tile_shapes"):
        pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, -1)


def test_tile_rank_must_match_output():
    x, scale, _ = random_case((2, 3, 8), -1)
    pypto.set_vec_tile_shapes(4, 8)
    with pytest.raises(ValueError, match="tile rank must match the output rank"):
        pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, -1)


@pytest.mark.parametrize("last", [1, 4, 12, 20])
def test_tile_last_dim_32_byte_alignment(last):
    x, scale, _ = random_case((2, 8), -1)
    pypto.set_vec_tile_shapes(2, last)
    with pytest.raises(ValueError, match="need to 32Byte align"):
        pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, -1)


# ---------------------------------------------------------------- dequantize rule errors (SPEC §8.1)


def _call(x=None, scale=None, otype=pypto.DT_FP32, axis=-1, zp=None):
    pypto.set_vec_tile_shapes(8, 8)
    x = pto(torch.ones(2, 3, dtype=torch.int8)) if x is None else x
    scale = pto(torch.ones(2)) if scale is None else scale
    return pypto.dequantize(x, scale, otype, axis, zp)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": pto(torch.ones(2, 3))}, "Dequantize input dtype must be INT8 or INT16, but got dtype=7"),
        ({"x": pto(torch.ones(2, 3, dtype=torch.int32))}, "Dequantize input dtype must be INT8 or INT16, but got dtype=3"),
        ({"otype": pypto.DT_FP16}, "Dequantize output type must be FP32, but got dtype=6"),
        ({"otype": pypto.DT_BF16}, "Dequantize output type must be FP32, but got dtype=8"),
        ({"x": pto(torch.ones(3, dtype=torch.int8)), "scale": pto(torch.ones(1))}, "only supports 2-4 dims, but got 1"),
        ({"x": pto(torch.ones(1, 1, 1, 1, 2, dtype=torch.int8))}, "only supports 2-4 dims, but got 5"),
        ({"x": pto(torch.ones(0, 3, dtype=torch.int8)), "scale": pto(torch.ones(0))}, "input must not be empty"),
        ({"x": pto(torch.ones(2, 3, 4, dtype=torch.int8)), "scale": pto(torch.ones(2, 3)), "axis": 0},
         "but got axis=0 (normalized=-3)"),
        ({"axis": 2}, "Dequantize axis must be -1 (per-row) or -2 (per-column), but got axis=2 (normalized=0)"),
        ({"axis": -3}, "but got axis=-3 (normalized=-3)"),
        ({"scale": pto(torch.ones(2, dtype=torch.float16))}, "Dequantize scale dtype must be FP32, but got dtype=6"),
        ({"scale": pto(torch.ones(0))}, "Dequantize scale must not be empty"),
        ({"scale": pto(torch.ones(3))}, "Dequantize scale shape must be [2] (or keep-dim [2, 1])"),
        ({"scale": pto(torch.ones(1, 2))}, "but got [1, 2]"),
        ({"axis": -2}, "scale shape must be [3] (or keep-dim [1, 3]) for input shape [2, 3] and axis=-2, but got [2]"),
        ({"zp": pto(torch.ones(2, dtype=torch.bfloat16))}, "Dequantize zero_points dtype must be FP32, but got dtype=8"),
        ({"zp": pto(torch.ones(2, 2))}, "Dequantize zero_points shape must be [2]"),
    ],
)
def test_dequantize_rule_errors(kwargs, message):
    with pytest.raises(RuntimeError) as info:
        _call(**kwargs)
    assert message in str(info.value)


def test_axis_checked_for_4d_too():
    x = pto(torch.ones(2, 2, 2, 8, dtype=torch.int8))
    pypto.set_vec_tile_shapes(1, 1, 1, 8)
    with pytest.raises(RuntimeError, match=r"axis=1 \(normalized=-3\)"):
        pypto.dequantize(x, pto(torch.ones(2, 2, 2)), pypto.DT_FP32, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"x": torch.ones(2, 3, dtype=torch.int8)},
        {"scale": torch.ones(2)},
        {"zp": torch.ones(2)},
        {"axis": 1.0},
        {"axis": True},
        {"otype": "DT_FP32"},
    ],
)
def test_type_errors(kwargs):
    with pytest.raises(TypeError):
        _call(**kwargs)


def test_unknown_otype_value():
    with pytest.raises(ValueError, match="must be a pypto.DataType"):
        _call(otype=99)


# ---------------------------------------------------------------- DataType, tensor, from_torch

DATATYPE_VALUES = {
    "DT_INT4": 0, "DT_INT8": 1, "DT_INT16": 2, "DT_INT32": 3, "DT_INT64": 4, "DT_FP8": 5, "DT_FP16": 6,
    "DT_FP32": 7, "DT_BF16": 8, "DT_HF4": 9, "DT_HF8": 10, "DT_UINT8": 11, "DT_UINT16": 12, "DT_UINT32": 13,
    "DT_UINT64": 14, "DT_BOOL": 15, "DT_DOUBLE": 16, "DT_FP8E4M3": 17, "DT_FP8E5M2": 18, "DT_FP8E8M0": 19,
    "DT_FP4_E2M1X2": 20, "DT_FP4_E1M2X2": 21, "DT_FP4_E2M1": 22, "DT_FP4_E1M2": 23, "DT_BOTTOM": 24,
}  # fmt: skip


def test_datatype_values_and_aliases():
    assert {m.name: int(m) for m in pypto.DataType} == DATATYPE_VALUES
    for name, value in DATATYPE_VALUES.items():
        alias = getattr(pypto, name)
        assert alias is pypto.DataType(value) and int(alias) == value
    assert repr(pypto.DT_FP32) == "DataType.DT_FP32"
    assert int(pypto.DT_INT8) == 1 and int(pypto.DT_FP32) == 7


def test_tensor_constructor():
    t = pypto.tensor([3, 4], pypto.DT_INT8, name="x")
    assert t.shape == [3, 4] and t.dtype is pypto.DT_INT8 and t.name == "x"
    assert t.format is pypto.TILEOP_ND
    data = t.to_torch()
    assert data.dtype == torch.int8 and data.shape == (3, 4) and not data.any()
    assert pypto.Tensor is pypto.tensor
    default = pypto.tensor([2])
    assert default.dtype is pypto.DT_FP32
    a, b = pypto.tensor([1]), pypto.tensor([1])
    assert a.name.startswith("TENSOR_") and a.name != b.name
    assert pypto.tensor().shape == []
    assert "DT_INT8" in repr(t)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (([2, -1], pypto.DT_FP32), ValueError),
        (([2, 1.5], pypto.DT_FP32), TypeError),
        (("ab", pypto.DT_FP32), TypeError),
        (([2], pypto.DT_INT4), ValueError),
        (([2], pypto.DT_HF8), ValueError),
        (([2], 99), ValueError),
        (([2], torch.float32), TypeError),
    ],
)
def test_tensor_constructor_errors(args, error):
    with pytest.raises(error):
        pypto.tensor(*args)


def test_tensor_nz_format_refused():
    with pytest.raises(ValueError, match="ND"):
        pypto.Tensor([2, 16], pypto.DT_FP16, "", pypto.TILEOP_NZ)


def test_from_torch_shares_memory():
    t = torch.zeros(2, 3)
    p = pypto.from_torch(t, name="t")
    assert p.shape == [2, 3] and p.dtype is pypto.DT_FP32 and p.name == "t"
    p.to_torch()[0, 0] = 5.0
    assert t[0, 0] == 5.0
    t[1, 2] = 7.0
    assert p.to_torch()[1, 2] == 7.0
    assert p.to_torch().data_ptr() == t.data_ptr()


def test_from_torch_scalar_and_errors():
    s = pypto.from_torch(torch.tensor(3.0))
    assert s.shape == [1] and s.dtype is pypto.DT_FP32
    with pytest.raises(RuntimeError, match="not all tensors are contiguous"):
        pypto.from_torch(torch.zeros(3, 4).t())
    with pytest.raises(TypeError, match="input type is not currently supported."):
        pypto.from_torch(np.zeros(3))
    with pytest.raises(ValueError, match="Input torch.dtype is not supported. Got torch.complex64"):
        pypto.from_torch(torch.zeros(2, dtype=torch.complex64))
    assert pypto.from_torch(torch.zeros(2), dynamic_axis=[0]).shape == [2]


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, "DT_FP16"), (torch.bfloat16, "DT_BF16"), (torch.float32, "DT_FP32"),
        (torch.float64, "DT_DOUBLE"), (torch.int8, "DT_INT8"), (torch.uint8, "DT_UINT8"), (torch.int16, "DT_INT16"),
        (torch.uint16, "DT_UINT16"), (torch.int32, "DT_INT32"), (torch.uint32, "DT_UINT32"),
        (torch.int64, "DT_INT64"), (torch.uint64, "DT_UINT64"), (torch.bool, "DT_BOOL"),
        (torch.float8_e4m3fn, "DT_FP8E4M3"), (torch.float8_e5m2, "DT_FP8E5M2"),
        (torch.float8_e8m0fnu, "DT_FP8E8M0"), (torch.float4_e2m1fn_x2, "DT_FP4_E2M1X2"),
    ],
)  # fmt: skip
def test_from_torch_dtype_map(dtype, expected):
    assert pypto.from_torch(torch.empty(2, dtype=dtype)).dtype is getattr(pypto, expected)


def test_result_is_a_fresh_contiguous_tensor():
    pypto.set_vec_tile_shapes(2, 8)
    x, scale, _ = random_case((3, 9), -1)
    y = pypto.dequantize(pto(x), pto(scale), pypto.DT_FP32, -1)
    assert y.to_torch().is_contiguous() and y.name.startswith("TENSOR_")
