"""Native per-row / per-column dequantize kernel (csrc/dequantize.c, operator
``torch.ops.npuquant.dequantize``) against the pure-torch reference, bit for bit, for every kernel
variant (scalar / AVX2 / AVX-512) and thread count: edge values, odd sizes, strided tiles, empty
tensors, 1-4 dims, both axes, with and without zero points; the operator's argument and storage
checks; the C entry point's argument and bounds checks; dispatch."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import assert_same_bits, shrink_storage
from npuquant import _native
from npuquant.ops import dequantize as dq
from npuquant.ops.dequantize import dequantize_per_row_col, native, reference

DTYPES = [torch.int8, torch.int16]
AXES = [-1, -2]


def both_nan(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor | None:
    """Elements whose zero point and scale are both NaN (None when there are none)."""
    if zp is None:
        return None
    mask = (zp.isnan() & scale.isnan()).unsqueeze(-1 if axis == -1 else -2).expand(x.shape)
    return mask if mask.any() else None


def both(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> torch.Tensor:
    """The operator's CPU kernel == the reference, bit for bit (NaN payloads and signs included)."""
    out = native.dequantize(x, scale, zp, axis)
    assert out.dtype == torch.float32
    assert_same_bits(out, reference.dequantize(x, scale, zp, axis), both_nan(x, scale, zp, axis))
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
def test_random_all_modes(isa, dtype):
    gen = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        every_mode(random_int(dtype, *shape, gen=gen), gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_one_dim(isa, dtype):
    for n in (1, 5, 16, 37):
        x = random_int(dtype, n)
        both(x, torch.tensor(0.5), None, -1)
        both(x, torch.tensor(0.25), torch.tensor(-3.0), -1)
    x = random_int(dtype, 40)[::3]  # 1-D with an element stride: made contiguous first
    both(x, torch.tensor(1.5), torch.tensor(2.0), -1)


def test_threaded_splits(isa, threads):
    # Above the kernel's grain (2^18 elements) so the work is split, at element boundaries mid-row.
    gen = torch.Generator().manual_seed(2)
    for x in (random_int(torch.int8, 600, 1001, gen=gen), random_int(torch.int16, 3, 130, 997, gen=gen)):
        every_mode(x, gen)
    every_mode(random_int(torch.int8, 1, 600_001, gen=gen), gen)  # one long row over all threads


def test_thread_count_does_not_change_bits(isa):
    x = random_int(torch.int8, 700, 777)
    scale, zp = params(x.shape, -2)
    results = []
    previous = torch.get_num_threads()
    try:
        for n in (1, 2, 5):
            torch.set_num_threads(n)
            results.append(native.dequantize(x, scale, zp, -2))
    finally:
        torch.set_num_threads(previous)
    for r in results[1:]:
        assert_same_bits(r, results[0])


def test_large_output_streaming_stores(isa):
    # >= 16 MiB of output switches to non-temporal stores; odd column counts put rows at every
    # alignment, so the aligned-head / streamed-body / tail split is exercised.
    gen = torch.Generator().manual_seed(3)
    x = random_int(torch.int8, 2051, 2047, gen=gen)
    scale, zp = params(x.shape, -1, gen)
    both(x, scale, zp, -1)
    scale, zp = params(x.shape, -2, gen)
    both(x, scale, None, -2)
    both(random_int(torch.int16, 2, 1000, 2101, gen=gen)[:, :, 3:], *params((2, 1000, 2098), -1, gen), -1)


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
    out = native.dequantize(torch.ones(2, 21, dtype=torch.int8), both_scale, both_zp, -1)
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
    got = reference.dequantize(x, edges, zp, -1).numpy()
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(got[finite].view(np.int32), expected[finite].view(np.int32))


# ---------------------------------------------------------------- layouts


def copies_of_x(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, axis: int) -> int:
    """How many tensor copies (aten::clone, e.g. a contiguous x) the operator makes inside, by the profiler."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = native.dequantize(x, scale, zp, axis)
    assert_same_bits(out, reference.dequantize(x, scale, zp, axis), both_nan(x, scale, zp, axis))
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
    x = random_int(torch.int8, 30, 20, gen=gen).t()  # last-dim stride 20: copied once per call
    assert copies_of_x(x, *params(x.shape, -1, gen), -1) == 1


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
    out = native.dequantize(x, scale, scale, axis)
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
    first, second = native.dequantize(x, scale, None, -1), native.dequantize(x, scale, None, -1)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    first.fill_(7.0)
    assert_same_bits(second, reference.dequantize(x, scale, None, -1))


# ---------------------------------------------------------------- the operator's own checks

X = torch.zeros(2, 3, dtype=torch.int8)
S = torch.ones(2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((X.float(), S, None, -1), "x must be int8 or int16, but got float32"),
        ((X.int(), S, None, -1), "x must be int8 or int16, but got int32"),
        ((X, S.half(), None, -1), "scale must be float32, but got float16"),
        ((X, S, S.int(), -1), "zero_points must be float32, but got int32"),
        ((X[0, 0], S, None, -1), "x must have at least 1 dimension"),
        ((X, S, None, 0), "axis must be -1 or -2, but got 0"),
        ((X, S, None, -3), "axis must be -1 or -2, but got -3"),
        ((X[0], torch.ones(3), None, -2), "axis -2 needs x with at least 2 dimensions"),
        ((X, S, torch.ones(3), -1), "scale and zero_points must have the shape axis -1 implies for x of shape [2, 3]"),
        (
            (X, torch.ones(3), None, -1),
            "scale and zero_points must have the shape axis -1 implies for x of shape [2, 3]",
        ),
        ((X, S, None, -2), "scale and zero_points must have the shape axis -2 implies for x of shape [2, 3]"),
        ((X, torch.ones(3), torch.ones(3), -1), "must have the shape axis -1 implies"),
    ],
)
def test_operator_argument_errors(args, message):
    with pytest.raises(RuntimeError) as info:
        native.dequantize(*args)
    assert str(info.value).startswith("npuquant::dequantize: ") and message in str(info.value)


@pytest.mark.parametrize("arg", ["x", "scale", "zero_points"])
def test_operator_refuses_tensors_outside_their_storage(arg):
    args = {"x": random_int(torch.int8, 8, 40), "scale": torch.rand(8), "zero_points": torch.rand(8)}
    shrink_storage(args[arg], 4 if arg == "x" else 16)
    with pytest.raises(RuntimeError, match=f"npuquant::dequantize: {arg} of shape .* reaches outside its storage"):
        native.dequantize(args["x"], args["scale"], args["zero_points"], -1)


def test_operator_refuses_a_strided_tile_outside_its_storage():
    x = random_int(torch.int16, 6, 50)[1:5:2, 10:30]  # last element: storage element 3 * 50 + 29
    shrink_storage(x, 2 * (3 * 50 + 29))  # one element short
    with pytest.raises(RuntimeError, match="x of shape \\[2, 20\\] reaches outside its storage"):
        native.dequantize(x, torch.rand(2), None, -1)


# ---------------------------------------------------------------- the C entry point refuses bad arguments

_I64P = ctypes.POINTER(ctypes.c_int64)
I64x1 = ctypes.c_int64 * 1
I64x9 = ctypes.c_int64 * 9
NPQ_F32, NPQ_BF16, NPQ_I8, NPQ_I16, NPQ_I32 = 0, 2, 3, 5, 6  # dtype codes of csrc/npq.h


def c_library() -> ctypes.CDLL:
    """The C kernel's own entry point (exported by the operator library), below the C++ checks."""
    lib = ctypes.CDLL(str(Path(_native.__file__).with_name("_C.abi3.so")))
    lib.npq_dequantize.restype = ctypes.c_int
    lib.npq_dequantize.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, _I64P, _I64P, ctypes.c_int64, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
    ]  # fmt: skip
    return lib


def call_kernel(buf: torch.Tensor, extent: int, rows: int, row_stride: int, cols: int, *, dtype: int = NPQ_I8,
                axis: int = -1, n_param: int | None = None, rows_per_matrix: int = 1, nd: int = 1,
                zp: bool = True, null_x: bool = False) -> int:  # fmt: skip
    n = rows * cols if 0 < rows * cols <= 10**6 else 1  # huge sizes are refused before any write
    out = torch.full((n + 64,), 7.0)
    if n_param is None:
        n_param = rows if axis == -1 else rows // max(rows_per_matrix, 1) * cols
    scale = torch.ones(max(n_param, 1))
    sizes, strides = (I64x1(rows), I64x1(row_stride)) if nd == 1 else (I64x9(*[1] * 9), I64x9(*[0] * 9))
    rc = c_library().npq_dequantize(
        None if null_x else buf.data_ptr(), dtype, extent, nd, sizes, strides, cols, scale.data_ptr(),
        scale.data_ptr() if zp else None, n_param, axis, rows_per_matrix, out.data_ptr(), 1,
    )  # fmt: skip
    if rc != 0:
        assert (out == 7.0).all(), "a refused call must not write"
    else:
        assert (out[max(rows * cols, 0) :] == 7.0).all(), "wrote past the output"
    return rc


def test_kernel_bounds_checks():
    buf = random_int(torch.int8, 100)
    assert call_kernel(buf, 100, rows=10, row_stride=10, cols=10) == 0
    assert call_kernel(buf, 99, rows=10, row_stride=10, cols=10) == -2  # last element outside
    assert call_kernel(buf, 100, rows=10, row_stride=10, cols=11) == -2
    assert call_kernel(buf, 100, rows=1, row_stride=0, cols=101) == -2
    assert call_kernel(buf, 100, rows=2, row_stride=2**62, cols=1) == -2  # offset overflow
    assert call_kernel(buf, 100, rows=2**62, row_stride=0, cols=1, n_param=1) == -1  # parameter count
    assert call_kernel(buf, 100, rows=4, row_stride=0, cols=2**62, n_param=4) == -1  # size overflow
    assert call_kernel(buf, 100, rows=-1, row_stride=1, cols=4) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=-1, cols=4) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, cols=-4, n_param=1) == -1
    assert call_kernel(buf, -1, rows=1, row_stride=1, cols=4) == -1
    for bad_dtype in (NPQ_F32, NPQ_BF16, NPQ_I32, 99):
        assert call_kernel(buf, 100, rows=1, row_stride=1, cols=4, dtype=bad_dtype) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, cols=4, axis=0) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, cols=4, nd=9) == -1
    assert call_kernel(buf, 100, rows=1, row_stride=1, cols=4, null_x=True) == -1
    assert call_kernel(buf, 100, rows=4, row_stride=4, cols=4, n_param=3) == -1
    assert call_kernel(buf, 100, rows=4, row_stride=4, cols=4, n_param=5, zp=False) == -1
    # per-column: rows must be whole matrices of rows_per_matrix rows, one parameter per matrix column
    assert call_kernel(buf, 100, rows=6, row_stride=10, cols=10, axis=-2, rows_per_matrix=3) == 0
    assert call_kernel(buf, 100, rows=6, row_stride=10, cols=10, axis=-2, rows_per_matrix=4, n_param=10) == -1
    assert call_kernel(buf, 100, rows=6, row_stride=10, cols=10, axis=-2, rows_per_matrix=0, n_param=10) == -1
    assert call_kernel(buf, 100, rows=6, row_stride=10, cols=10, axis=-2, rows_per_matrix=3, n_param=10) == -1
    assert call_kernel(buf, 100, rows=0, row_stride=10, cols=10) == 0  # empty: nothing to do
    words = random_int(torch.int16, 50)
    assert call_kernel(words, 50, rows=5, row_stride=10, cols=10, dtype=NPQ_I16) == 0
    assert call_kernel(words, 49, rows=5, row_stride=10, cols=10, dtype=NPQ_I16) == -2


def test_kernel_result_through_the_entry_point():
    # 2 leading dims with strides: x[b, r, c] = base[b * 50 + r * 12 + c]
    base = random_int(torch.int8, 100)
    x = base.as_strided((2, 3, 10), (50, 12, 1))
    scale = torch.rand(2, 10)
    out = torch.empty(2, 3, 10)
    rc = c_library().npq_dequantize(
        base.data_ptr(), NPQ_I8, 100, 2, (ctypes.c_int64 * 2)(2, 3), (ctypes.c_int64 * 2)(50, 12), 10, scale.data_ptr(),
        None, 20, -2, 3, out.data_ptr(), 1,
    )  # fmt: skip
    assert rc == 0
    assert_same_bits(out, reference.dequantize(x, scale, None, -2))


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
    expected = reference.dequantize(x, s, None, -1)
    with OpLog() as log:  # CPU: the operator (its native kernel), nothing else
        out = dequantize_per_row_col(x, s)
        col = dequantize_per_row_col(x, col_scale, zero_points=col_zp, axis=0)  # axis 0 of 2-D = -2: native too
    assert log.ops == ["npuquant.dequantize.default"] * 2
    assert_same_bits(out, expected)
    assert_same_bits(col, reference.dequantize(x, col_scale, col_zp, -2))
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


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(1, 4))
    shape = draw(st.lists(st.integers(1, 40), min_size=ndim, max_size=ndim))
    pad = draw(st.lists(st.integers(0, 3), min_size=ndim, max_size=ndim))
    step = draw(st.lists(st.integers(1, 2), min_size=ndim, max_size=ndim))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    big = [s * k + p for s, k, p in zip(shape, step, pad)]
    base = random_int(dtype, *big, gen=gen)
    if draw(st.booleans()):  # sprinkle the integer extremes
        info = torch.iinfo(dtype)
        flat = base.view(-1)
        flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 8),), generator=gen)] = info.min
        flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 8),), generator=gen)] = info.max
    x = base[tuple(slice(p, p + s * k, k) for s, k, p in zip(shape, step, pad))]
    if ndim >= 2 and draw(st.booleans()):
        x = x.transpose(0, -1)
    axis = draw(st.sampled_from(AXES if ndim >= 2 else [-1]))
    pshape = dq.param_shape(x.shape, axis)
    magnitude = draw(st.sampled_from([1e-38, 1e-3, 1.0, 1e4, 1e36]))
    scale = torch.randn(pshape, generator=gen) * magnitude
    zp = torch.randn(pshape, generator=gen) * 100 if draw(st.booleans()) else None
    if draw(st.booleans()) and scale.numel():  # edge floats in random places
        idx = torch.randint(0, EDGE_POOL.numel(), scale.shape, generator=gen)
        mask = torch.rand(scale.shape, generator=gen) < 0.3
        scale = torch.where(mask, EDGE_POOL[idx], scale)
        if zp is not None:
            zp = torch.where(torch.rand(zp.shape, generator=gen) < 0.3, EDGE_POOL[idx.flip(-1)], zp)
    return x, scale, zp, axis


@given(cases(), st.sampled_from(_native.supported_isas() or ["scalar"]), st.sampled_from([1, 2]))
def test_property_native_equals_reference(case, isa_name, nthreads):
    x, scale, zp, axis = case
    previous = torch.get_num_threads()
    torch.set_num_threads(nthreads)
    try:
        with _native.isa_limit(isa_name):
            out = both(x, scale, zp, axis)
    finally:
        torch.set_num_threads(previous)
    # and the golden against an independent numpy float32 formula (NaN positions and finite bits)
    reduced = -1 if axis == -1 else -2
    with np.errstate(invalid="ignore", over="ignore"):
        xf = x.numpy().astype(np.float32)
        if zp is not None:
            xf = xf + np.expand_dims(zp.numpy(), reduced)
        expected = xf * np.expand_dims(scale.numpy(), reduced)
    got = out.numpy()
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    finite = ~np.isnan(expected)
    assert np.array_equal(got[finite].view(np.int32), expected[finite].view(np.int32))
