"""Per-row / per-column dequantize's native path (a shape adapter over
``torch.ops.npuquant.dequant_affine``, csrc/dequant.c) against the reference path, bit for bit, on
what is particular to it: edge values and NaN payloads, strided tiles read in place, empty tensors,
1-10 dims, both axes, storage checks, dispatch. The kernel x granularity x encoder x ISA x threads
table is test_dequant_affine.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import assert_same_bits, shrink_storage
from npuquant import _native
from npuquant.ops import dequantize as dq
from npuquant.ops.dequantize import dequantize_per_row_col

DTYPES = [torch.int8, torch.int16]
AXES = [-1, -2]


def both_nan(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor | None:
    """Elements whose zero point and scale are both NaN (None when there are none)."""
    if zp is None:
        return None
    mask = (zp.isnan() & scale.isnan()).unsqueeze(-1 if axis == -1 else -2).expand(x.shape)
    return mask if mask.any() else None


def reference_dequantize(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    with _native.force_reference():
        return dq.dequantize(x, scale, zp, axis)


def both(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    """The operator's CPU kernel == the reference, bit for bit (NaN payloads and signs included)."""
    out = dq.dequantize(x, scale, zp, axis)
    assert out.dtype == torch.float32
    assert_same_bits(out, reference_dequantize(x, scale, zp, axis), both_nan(x, scale, zp, axis))
    return out


def random_int(dtype: torch.dtype, *shape: int, gen: torch.Generator | None = None) -> torch.Tensor:
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max + 1, shape, dtype=torch.int32, generator=gen).to(dtype)


def params(x_shape, axis: int, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    shape = dq.param_shape(x_shape, axis)
    return torch.randn(shape, generator=gen) * 0.05, torch.randn(shape, generator=gen) * 40


def every_mode(x: torch.Tensor, gen: torch.Generator | None = None) -> None:
    for axis in AXES if x.dim() >= 2 else [-1]:
        scale, zp = params(x.shape, axis, gen)
        both(x, scale, None, axis)
        both(x, scale, zp, axis)


def f32_from_bits(bits: list[int]) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)


# ---------------------------------------------------------------- every variant vs reference

# Column counts around the vector widths (8 / 16 for AVX2, 16 / 32 for AVX-512) and odd ones.
SHAPES = [(1, 1), (1, 7), (3, 8), (2, 15), (5, 16), (4, 17), (3, 31), (2, 32), (2, 33), (3, 63), (2, 64), (2, 65),
          (2, 100), (9, 1), (1, 129), (2, 3, 17), (2, 1, 4, 45), (3, 2, 1, 1), (1, 1, 1, 33)]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_dim(isa, dtype):
    for n in (1, 5, 16, 37):
        x = random_int(dtype, n)
        both(x, torch.tensor(0.5), None, -1)
        both(x, torch.tensor(0.25), torch.tensor(-3.0), -1)
    x = random_int(dtype, 40)[::3]  # 1-D with an element stride: made contiguous first
    both(x, torch.tensor(1.5), torch.tensor(2.0), -1)


# ---------------------------------------------------------------- edge values

EDGE_BITS = [
    0x00000000, 0x80000000,  # +0, -0
    0x3F800000, 0xBF800000,  # 1, -1
    0x7F800000, 0xFF800000,  # +inf, -inf
    0x7FC00000, 0xFFC00000, 0x7FC12345, 0xFFD54321, 0x7F800001,  # quiet NaNs (both signs, payloads), a signalling NaN
    0x00000001, 0x80000001, 0x007FFFFF, 0x00400000,  # denormals
    0x00800000, 0x80800000,  # smallest normals
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F000000,  # largest finite, huge
    0x33800000, 0x0C000000, 0x2F800000,  # tiny (2^-24, ~1e-31, 2^-32)
    0x4B000000, 0x46FFFE00, 0xC3000000,  # 2^23, 32767, -128
]  # fmt: skip
EDGE_X = {torch.int8: [-128, 127, 0, -1, 1, 64, -127], torch.int16: [-32768, 32767, 0, -1, 1, 255, -256, 128]}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_edge_scales_zero_points_and_values(isa, dtype):
    edges = f32_from_bits(EDGE_BITS)
    n = edges.numel()
    values = torch.tensor(EDGE_X[dtype], dtype=dtype)
    for shift in range(0, n, 3):  # every scale meets many zero points
        zp = edges.roll(shift)
        # per-row: row r has scale edges[r]; 37 columns (odd) cycling through the extreme values
        x = values.repeat(6)[:37].expand(n, 37).contiguous()
        both(x, edges, zp, -1)
        both(x, edges, None, -1)
        # per-column: column c has scale edges[c]
        xt = values.repeat(n)[: 3 * n].reshape(3, n)
        both(xt, edges, zp, -2)
        both(xt, edges, None, -2)


def test_nan_payloads(isa):
    # One NaN operand: its payload (quieted) comes through exactly, as in torch.
    x = torch.tensor([[1], [2], [3], [0], [5]], dtype=torch.int8).expand(5, 19).contiguous()
    zp = f32_from_bits([0x7FC11111, 0xFFC22222, 0x3F800000, 0x3F800000, 0x7F800005])
    scale = f32_from_bits([0x3F800000, 0x40000000, 0xFFC33333, 0x7F800000, 0xC0000000])
    out = both(x, scale, zp, -1)
    assert (out[0].view(torch.int32) == 0x7FC11111).all() and (out[4].view(torch.int32) == 0x7FC00005).all()
    both(x.t().contiguous(), scale, zp, -2)
    # 0 * inf with no zero point: x86's default NaN, in torch and here
    both(torch.zeros(2, 9, dtype=torch.int16), torch.tensor([float("inf"), -float("inf")]), None, -1)
    # Both NaN: a NaN, payload of either operand (torch's own choice varies with its loop).
    both_zp, both_scale = f32_from_bits([0x7FC11111, 0xFFC22222]), f32_from_bits([0xFFC33333, 0x7FC44444])
    out = dq.dequantize(torch.ones(2, 21, dtype=torch.int8), both_scale, both_zp, -1)
    assert out.isnan().all()
    payloads = {0x7FC11111, 0xFFC22222, 0xFFC33333, 0x7FC44444}
    assert set((out.view(torch.int32).long() & 0xFFFFFFFF).flatten().tolist()) <= payloads


def test_reference_matches_numpy_formula_on_edges():
    # The golden itself against an independent float32 formula (NaN positions, infinities, signed zeros).
    edges = f32_from_bits(EDGE_BITS)
    x = torch.tensor(EDGE_X[torch.int16], dtype=torch.int16).repeat(4)[:27].expand(edges.numel(), 27)
    zp = edges.roll(5)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = (x.numpy().astype(np.float32) + zp.numpy()[:, None]) * edges.numpy()[:, None]
    got = reference_dequantize(x, edges, zp, -1).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(got[finite].view(np.int32), expected[finite].view(np.int32))


# ---------------------------------------------------------------- layouts


def copies_of_x(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> int:
    """How many tensor copies (aten::clone, e.g. a contiguous x) the operator makes inside, by the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = dq.dequantize(x, scale, zp, axis)
    assert_same_bits(out, reference_dequantize(x, scale, zp, axis), both_nan(x, scale, zp, axis))
    return sum(event.name == "aten::clone" for event in prof.events())


def test_row_strided_views_are_read_in_place(isa):
    gen = torch.Generator().manual_seed(4)
    base = random_int(torch.int8, 40, 300, gen=gen)
    big = random_int(torch.int16, 5, 30, 70, gen=gen)
    four = random_int(torch.int8, 3, 4, 24, 64, gen=gen)
    views = [
        base[3:37:2, 5:250],  # row stride 600, column offset
        big[1:4, 2:29:3, 7:60],  # batch and row strides
        four[1:, 1:3, 8:24, 16:48],  # a pypto-style tile of a 4-D tensor
        random_int(torch.int8, 6, gen=gen)[:, None, None].expand(6, 3, 1),  # one column, stride-0 rows
        random_int(torch.int8, 1, 9, gen=gen).expand(5, 9),  # row stride 0
    ]
    for x in views:
        for axis in AXES:
            scale, zp = params(x.shape, axis, gen)
            assert copies_of_x(x, scale, zp, axis) == 0, "x with last-dim stride 1 must be read in place"
            assert copies_of_x(x, scale, None, axis) == 0
    x = random_int(torch.int8, 30, 20, gen=gen).t()  # last-dim stride 20: gathered inside the kernel
    assert copies_of_x(x, *params(x.shape, -1, gen), -1) == 0


def test_general_layouts(isa):
    gen = torch.Generator().manual_seed(5)
    every_mode(random_int(torch.int8, 6, 5, 40, gen=gen).permute(2, 0, 1), gen)  # inner stride 30
    every_mode(random_int(torch.int16, 7, 1, gen=gen).expand(7, 9), gen)  # last-dim stride 0
    every_mode(random_int(torch.int8, 9, 4, gen=gen).t()[:, :1], gen)  # one column, odd stride
    every_mode(random_int(torch.int8, 2, 3, 4, 5, gen=gen)[:, 1:, ::2, 1:4], gen)
    deep = random_int(torch.int8, *([1] * 7), 3, 4, 6, gen=gen)  # 10 dims: more leading dims than the kernel walks
    every_mode(deep[..., 1:], gen)
    every_mode(random_int(torch.int8, *([2] * 8), 5, gen=gen)[..., 1:], gen)  # 9 dims: 8 strided leading dims


EMPTY_CASES = [((0,), -1)] + [(s, a) for s in [(0, 4), (3, 0), (2, 0, 5), (0, 3, 4), (2, 3, 0, 1)] for a in AXES]


@pytest.mark.parametrize(("shape", "axis"), EMPTY_CASES)
def test_empty(isa, shape, axis):
    x = torch.empty(shape, dtype=torch.int8)
    scale = torch.empty(dq.param_shape(shape, axis))
    out = dq.dequantize(x, scale, scale, axis)
    assert out.shape == shape and out.dtype == torch.float32 and out.is_contiguous()
    assert_same_bits(dequantize_per_row_col(x, scale, axis=axis), out)


def test_strided_parameters(isa):
    # The pypto front-end slices the parameters with the tile: they are made contiguous first.
    x = random_int(torch.int8, 4, 6, 40)
    scale_big, zp_big = torch.randn(4, 12, 3), torch.randn(4, 12, 3)
    both(x, scale_big[:, ::2, 1], zp_big[:, 1::2, 2], -1)
    col_scale = torch.randn(4, 80)[:, ::2]
    both(x, col_scale, torch.randn(40, 4).t(), -2)


def test_results_are_fresh_tensors():
    x, scale = random_int(torch.int8, 4, 6), torch.rand(4)
    first, second = dq.dequantize(x, scale, None, -1), dq.dequantize(x, scale, None, -1)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    first.fill_(7.0)
    assert_same_bits(second, reference_dequantize(x, scale, None, -1))


# ---------------------------------------------------------------- the operator's own checks

X = torch.zeros(2, 3, dtype=torch.int8)
S = torch.ones(2)


@pytest.mark.parametrize("arg", ["x", "scale", "zero_points"])
def test_operator_refuses_tensors_outside_their_storage(arg):
    args = {"x": random_int(torch.int8, 8, 40), "scale": torch.rand(8), "zero_points": torch.rand(8)}
    shrink_storage(args[arg], 4 if arg == "x" else 16)
    with pytest.raises(
        RuntimeError,
        match=f"npuquant::dequant_affine: {dict(zero_points='offset').get(arg, arg)} of shape .* reaches outside",
    ):
        dq.dequantize(args["x"], args["scale"], args["zero_points"], -1)


def test_operator_refuses_a_strided_tile_outside_its_storage():
    x = random_int(torch.int16, 6, 50)[1:5:2, 10:30]  # last element: storage element 3 * 50 + 29
    shrink_storage(x, 2 * (3 * 50 + 29))  # one element short
    with pytest.raises(RuntimeError, match="x of shape \\[2, 20\\] reaches outside its storage"):
        dq.dequantize(x, torch.rand(2), None, -1)


# ---------------------------------------------------------------- dispatch


class OpLog(TorchDispatchMode):
    """Records the operators called from Python (not the ones a kernel runs inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def native_dispatch():
    """CPU calls take the native path, whatever NPUQUANT_FORCE_REFERENCE said at import."""
    with _native.force_reference(False):
        yield


def test_dispatch_cpu_native_else_reference(native_dispatch):
    x, s = random_int(torch.int8, 3, 4), torch.rand(3)
    col_scale, col_zp = torch.rand(4), torch.rand(4)
    expected = reference_dequantize(x, s, None, -1)
    with OpLog() as log:  # CPU: the operator (its native kernel), nothing else
        out = dequantize_per_row_col(x, s)
        col = dequantize_per_row_col(x, col_scale, zero_points=col_zp, axis=0)  # axis 0 of 2-D = -2: native too
    assert [op for op in log.ops if op != "aten.view.default"] == ["npuquant.dequant_affine.default"] * 2
    assert_same_bits(out, expected)
    assert_same_bits(col, reference_dequantize(x, col_scale, col_zp, -2))
    with _native.force_reference(), OpLog() as log:  # the reference's torch ops, not the operator
        out = dequantize_per_row_col(x, s)
    assert log.ops and not any(op.startswith("npuquant") for op in log.ops)
    assert_same_bits(out, expected)
    meta = dq.dequantize(x.to("meta"), s.to("meta"), None, -1)  # the meta device: the fake kernel
    assert meta.device.type == "meta" and meta.shape == (3, 4) and meta.dtype == torch.float32


def test_public_op_both_paths_agree(isa):
    gen = torch.Generator().manual_seed(6)
    x = random_int(torch.int16, 2, 5, 33, gen=gen)
    for axis, pos in ((-1, 2), (-2, 1)):
        scale, zp = params(x.shape, axis, gen)
        out = dequantize_per_row_col(x, scale, zero_points=zp, axis=pos)
        with _native.force_reference():
            assert_same_bits(out, dequantize_per_row_col(x, scale, zero_points=zp, axis=pos))


# ---------------------------------------------------------------- property: any layout, any mode

EDGE_POOL = f32_from_bits(EDGE_BITS)
