"""The dequantize op family behind pypto.dequantize: the public ``dequantize_per_row_col`` (validation,
messages) against an independent numpy formula, and the operator under it, ``torch.ops.npuquant.dequant_affine``
(opcheck, torch.compile). Native-vs-reference tests: test_dequantize_native.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_same_bits
from npuquant.ops import dequantize as dq
from npuquant.ops.dequantize import dequantize_per_row_col


def numpy_formula(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    """Independent golden: numpy float32, add then multiply, parameters re-expanded on the reduced axis."""
    xf = x.numpy().astype(np.float32)
    expand = -1 if axis == -1 else -2
    s = np.expand_dims(scale.numpy(), expand)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / inf inputs are part of the tests
        if zp is not None:
            xf = xf + np.expand_dims(zp.numpy(), expand)
        return torch.from_numpy(np.ascontiguousarray(xf * s, dtype=np.float32))


def params_for(x: torch.Tensor, axis: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = dq.param_shape(x.shape, axis)
    return torch.randn(shape, generator=gen) * 3, torch.randn(shape, generator=gen) * 50


def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """float32, contiguous, and the formula's bits (signed zeros, NaN payloads) exactly."""
    assert actual.dtype == torch.float32
    assert_same_bits(actual, expected)


SHAPE_AXES = [((7,), -1)] + [(s, a) for s in [(3, 5), (2, 3, 9), (2, 1, 4, 6)] for a in (-1, -2)]


@pytest.mark.parametrize(("shape", "axis"), SHAPE_AXES)
@pytest.mark.parametrize("dtype", [torch.int8, torch.int16])
@pytest.mark.parametrize("with_zp", [False, True])
def test_matches_numpy_formula(shape, axis, dtype, with_zp):
    gen = torch.Generator().manual_seed(hash((shape, axis)) % 1000)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max + 1, shape, dtype=dtype, generator=gen)
    scale, zp = params_for(x, axis, gen)
    zp = zp if with_zp else None
    out = dequantize_per_row_col(x, scale, zero_points=zp, axis=axis)
    assert out.shape == x.shape
    assert_same(out, numpy_formula(x, scale, zp, axis))


def test_positive_axis_means_the_same():
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (2, 3, 4), dtype=torch.int8, generator=gen)
    for neg, pos in ((-1, 2), (-2, 1)):
        scale, zp = params_for(x, neg, gen)
        assert_same(
            dequantize_per_row_col(x, scale, zero_points=zp, axis=pos),
            dequantize_per_row_col(x, scale, zero_points=zp, axis=neg),
        )


def test_add_then_multiply_in_float32():
    # (x + zp) * s, not x * s + zp * s: these differ in float32 for these values.
    x = torch.tensor([[3]], dtype=torch.int8)
    scale = torch.tensor([0.1])
    zp = torch.tensor([0.7])
    out = dequantize_per_row_col(x, scale, zero_points=zp)
    expected = (torch.tensor(3.0) + torch.tensor(0.7)) * torch.tensor(0.1)
    assert out.item() == expected.item()
    assert dequantize_per_row_col(torch.tensor([[1, 2, 3, 4]], dtype=torch.int8), torch.ones(1),
                                  zero_points=torch.full((1,), -2.0)).tolist() == [[-1.0, 0.0, 1.0, 2.0]]


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(2)
    base = torch.randint(-128, 128, (6, 10), dtype=torch.int8, generator=gen)
    x = base.t()[1:, ::2]  # (9, 3), strided both ways
    for axis in (-1, -2):
        scale_full = torch.randn(2 * dq.param_shape(x.shape, axis)[0], generator=gen)
        scale = scale_full[::2]  # non-contiguous parameter too
        zp = torch.randn(scale.shape, generator=gen)
        assert_same(dequantize_per_row_col(x, scale, zero_points=zp, axis=axis), numpy_formula(x, scale, zp, axis))


def test_special_values():
    x = torch.tensor([[-128, 127, 0, -1]], dtype=torch.int8)
    for scale_v, zp_v in ((float("nan"), 0.0), (float("inf"), 1.0), (float("-inf"), -1.0), (2.0, float("nan"))):
        scale, zp = torch.tensor([scale_v]), torch.tensor([zp_v])
        assert_same(dequantize_per_row_col(x, scale, zero_points=zp), numpy_formula(x, scale, zp, -1))
    x16 = torch.tensor([[-32768, 32767]], dtype=torch.int16)
    assert dequantize_per_row_col(x16, torch.tensor([0.5])).tolist() == [[-16384.0, 16383.5]]


def test_empty_dims():
    x = torch.zeros((0, 4), dtype=torch.int8)
    assert dequantize_per_row_col(x, torch.zeros(0)).shape == (0, 4)
    x = torch.zeros((3, 0), dtype=torch.int8)
    assert dequantize_per_row_col(x, torch.zeros(0), axis=-2).shape == (3, 0)


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    axis=st.sampled_from([-1, -2]),
    dtype=st.sampled_from([torch.int8, torch.int16]),
    with_zp=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_numpy(shape, axis, dtype, with_zp, seed):
    if axis == -2 and len(shape) < 2:
        axis = -1
    gen = torch.Generator().manual_seed(seed)
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max + 1, shape, dtype=dtype, generator=gen)
    scale, zp = params_for(x, axis, gen)
    zp = zp if with_zp else None
    assert_same(dequantize_per_row_col(x, scale, zero_points=zp, axis=axis), numpy_formula(x, scale, zp, axis))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"x": torch.zeros(2, 3)}, "x must be int8 or int16, but got torch.float32"),
        ({"x": torch.zeros(2, 3, dtype=torch.int32)}, "x must be int8 or int16"),
        ({"x": torch.zeros((), dtype=torch.int8), "scale": torch.zeros(())}, "x must have at least 1 dimension"),
        ({"x": torch.zeros(2, 3, 4, dtype=torch.int8), "axis": 0}, "but got axis=0 (normalized=-3)"),
        ({"axis": -3}, "but got axis=-3 (normalized=-3)"),
        ({"x": torch.zeros(3, dtype=torch.int8), "scale": torch.zeros(3), "axis": -2}, "1D input only supports axis=-1"),
        ({"scale": torch.zeros(2, dtype=torch.float16)}, "scale must be float32, but got torch.float16"),
        ({"scale": torch.zeros(3)}, "scale shape must be [2] for x of shape [2, 3] and axis=-1, but got [3]"),
        ({"scale": torch.zeros(2, 1)}, "scale shape must be [2]"),
        ({"axis": -2}, "scale shape must be [3] for x of shape [2, 3] and axis=-2, but got [2]"),
        ({"zero_points": torch.zeros(2, dtype=torch.float64)}, "zero_points must be float32"),
        ({"zero_points": torch.zeros(4)}, "zero_points shape must be [2]"),
    ],
)
def test_errors(kwargs, message):
    args = {"x": torch.zeros(2, 3, dtype=torch.int8), "scale": torch.zeros(2), "zero_points": None, "axis": -1}
    args.update(kwargs)
    with pytest.raises(RuntimeError) as info:
        dequantize_per_row_col(args["x"], args["scale"], zero_points=args["zero_points"], axis=args["axis"])
    assert str(info.value).startswith("dequantize: ") and message in str(info.value)


def test_device_errors():
    x = torch.zeros(2, 3, dtype=torch.int8)
    message = r"dequantize: scale must be on the same device as x \(cpu\), but is on meta"
    with pytest.raises(RuntimeError, match=message):
        dequantize_per_row_col(x, torch.zeros(2, device="meta"))
    with pytest.raises(RuntimeError, match="dequantize: zero_points must be on the same device as x"):
        dequantize_per_row_col(x, torch.zeros(2), zero_points=torch.zeros(2, device="meta"))


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((None, torch.zeros(2)), {}, "x"),
        ((torch.zeros(2, 3, dtype=torch.int8), [1.0, 2.0]), {}, "scale"),
        ((torch.zeros(2, 3, dtype=torch.int8), torch.zeros(2)), {"zero_points": 0.5}, "zero_points"),
    ],
)
def test_non_tensor_arguments(args, kwargs, name):
    message = f"dequantize_per_row_col\\(\\): argument '{name}' must be a torch.Tensor"
    with pytest.raises(TypeError, match=message):
        dequantize_per_row_col(*args, **kwargs)


def test_dispatch_function_matches_the_formula():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-128, 128, (4, 5), dtype=torch.int8, generator=gen)
    scale, zp = params_for(x, -2, gen)
    assert_same(dq.dequantize(x, scale, zp, -2), numpy_formula(x, scale, zp, -2))


OP = torch.ops.npuquant.dequant_affine.default


def params_2d(x: torch.Tensor, p: torch.Tensor | None, axis: int) -> torch.Tensor | None:
    """The adapter's parameter shapes: (rows, 1) per row, (matrices, cols) per matrix column."""
    if p is None or x.numel() == 0:
        return p
    return p.reshape(-1, 1) if axis == -1 else p.reshape(-1, x.shape[-1])


def test_opcheck():
    gen = torch.Generator().manual_seed(4)
    x = torch.randint(-128, 128, (3, 4), dtype=torch.int8, generator=gen)
    for axis in (-1, -2):
        scale, zp = params_for(x, axis, gen)
        torch.library.opcheck(OP, (x, params_2d(x, scale, axis), params_2d(x, zp, axis), torch.float32))
        torch.library.opcheck(OP, (x, params_2d(x, scale, axis), params_2d(x, None, axis), torch.float32))
    x16 = torch.randint(-32768, 32768, (2, 5, 6), dtype=torch.int16, generator=gen)[:, 1:4]  # strided, 3-D
    for axis in (-1, -2):
        scale, zp = params_for(x16, axis, gen)
        torch.library.opcheck(OP, (x16, params_2d(x16, scale, axis), params_2d(x16, zp, axis), torch.float32))
    empty = torch.zeros(0, 4, dtype=torch.int8)
    torch.library.opcheck(OP, (empty, params_2d(empty, torch.zeros(0), -1), params_2d(empty, None, -1), torch.float32))


@pytest.mark.parametrize("dynamic", [False, True])
def test_compile_fullgraph(dynamic):
    def fn(x, s, z):
        return dequantize_per_row_col(x, s, zero_points=z, axis=-1) * 2

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    gen = torch.Generator().manual_seed(5)
    for rows in (3, 5):
        x = torch.randint(-128, 128, (rows, 8), dtype=torch.int8, generator=gen)
        s, z = params_for(x, -1, gen)
        assert_same(compiled(x, s, z), fn(x, s, z))


def test_compile_inductor():
    def fn(x, s):
        return dequantize_per_row_col(x, s, axis=-2) + 1

    gen = torch.Generator().manual_seed(6)
    x = torch.randint(-32768, 32768, (4, 6), dtype=torch.int16, generator=gen)
    s = torch.randn(6, generator=gen)
    assert_same(torch.compile(fn, fullgraph=True)(x, s), fn(x, s))
