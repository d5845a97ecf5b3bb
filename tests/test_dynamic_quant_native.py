"""Native dynamic-quant kernels (csrc/dynamic_quant.c, operator ``torch.ops.npuquant.dynamic_quant``)
against the pure-torch reference, bit for bit: every kernel variant (scalar / avx2 / avx512 via the
`isa` fixture) and thread count, on random and edge inputs (NaN, +-inf, denormals, tiny and huge
values, odd sizes, 1-row / 1-column, strided, empty); the operator's own argument and storage checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import assert_same_bits, shrink_storage
from npuquant import _native
from npuquant.ops import dynamic_quant as dq
from npuquant.ops.dynamic_quant import native, reference

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
MODES = [(True, False), (True, True), (False, False), (False, True)]  # (asymmetric, int4)
MODE_IDS = ["asym-int8", "asym-int4", "sym-int8", "sym-int4"]


def assert_same(x, smooth=None, group_index=None, *, asym, int4):
    """Native == reference, float outputs compared by their bits (NaN payloads included).

    The operator returns an empty float32 offset for the symmetric op (the reference: None).
    """
    want_y, want_scale, want_offset = reference.dynamic_quant(x, smooth, group_index, int4, asym)
    y, scale, offset = native.dynamic_quant(x, smooth, group_index, asym, int4)
    assert_same_bits(y, want_y)
    assert_same_bits(scale, want_scale)
    if asym:
        assert_same_bits(offset, want_offset)
    else:
        assert want_offset is None
        assert offset.shape == (0,) and offset.dtype == torch.float32


def edge_values(dtype: torch.dtype) -> list[float]:
    info = torch.finfo(dtype)
    return [
        0.0,
        -0.0,
        float("nan"),
        float("inf"),
        -float("inf"),
        info.tiny,  # smallest normal
        info.tiny / 4,  # a denormal
        -info.tiny / 8,
        info.max,
        -info.max,
        info.max / 3,
        info.eps,
        1e-30 if dtype != torch.float16 else 6e-8,
        1.0,
        -1.0,
        0.5,
        127.5,
    ]


def random_rows(rows, cols, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g).mul(20).exp2().mul(1e-3)
    return (x + torch.randn(rows, 1, generator=g)).to(dtype)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_sizes_every_variant(isa, dtype, asym, int4):
    sizes = [8, 16, 24, 40, 56, 64, 72, 264, 1032] if int4 else [1, 2, 3, 7, 15, 16, 17, 31, 33, 63, 65, 129, 1000]
    for i, cols in enumerate(sizes):
        x = random_rows(5, cols, dtype, i)
        assert_same(x, asym=asym, int4=int4)
        smooth = (torch.rand(cols, generator=torch.Generator().manual_seed(i)) * 3).to(dtype)
        assert_same(x, smooth, asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_values_every_variant(isa, dtype, asym, int4):
    values = torch.tensor(edge_values(dtype), dtype=torch.float32).to(dtype)
    g = torch.Generator().manual_seed(1)
    cols = 40
    # Rows mixing random data with one or two edge values at varied positions (vector body and tail),
    # plus rows made only of each edge value.
    rows = []
    for k, v in enumerate(values):
        row = torch.randn(cols, generator=g).to(dtype)
        row[(7 * k) % cols] = v
        row[(13 * k + 5) % cols] = values[(k + 3) % len(values)]
        rows.append(row)
        rows.append(torch.full((cols,), float(v), dtype=torch.float32).to(dtype))
    rows.append(torch.tensor([float(values[i % len(values)]) for i in range(cols)], dtype=torch.float32).to(dtype))
    x = torch.stack(rows)
    assert_same(x, asym=asym, int4=int4)
    smooth = torch.tensor([float(values[(3 * i) % len(values)]) for i in range(cols)], dtype=torch.float32)
    assert_same(x, smooth.to(dtype), asym=asym, int4=int4)
    assert_same(x, torch.full((cols,), 1e-3).to(dtype), asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_one_row_and_one_column(isa, asym, int4):
    for dtype in DTYPES:
        assert_same(random_rows(1, 64, dtype, 3), asym=asym, int4=int4)
        assert_same(random_rows(1, 8, dtype, 4), asym=asym, int4=int4)
        if not int4:
            assert_same(random_rows(37, 1, dtype, 5), asym=asym, int4=int4)
            assert_same(random_rows(1, 1, dtype, 6), asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_strided_inputs(isa, asym, int4):
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 10, 48, generator=g).half()
    views = [
        base[:, 3],  # row stride 480, contiguous rows
        base[::2, 1:9, 8:40],  # leading strides with gaps, offset start
        base[:, :, ::2],  # last-dim stride 2: gathered per row
        base.transpose(0, 1),  # non-mergeable leading dims
        base.permute(2, 0, 1)[:, :, :8],  # last dim stride 48
        base[0, :8].t(),  # 2-D transpose
        base[:1, :1, :16].expand(3, 4, 16),  # zero strides
        torch.randn(2, 1, 3, 1, 2, 1, 2, 1, 2, 3, 16, generator=g).bfloat16()[..., ::2, :],  # many dims
        torch.randn(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 16, generator=g).permute(*range(9, -1, -1), 10),  # > 8 lead dims
    ]
    for x in views:
        if int4 and x.shape[-1] % 8:
            continue
        assert_same(x, asym=asym, int4=int4)
        assert_same(x, torch.rand(x.shape[-1], generator=g).to(x.dtype), asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_empty(isa, asym, int4):
    for shape in [(0, 8), (3, 0), (0, 0), (2, 0, 16), (4, 2, 0)]:
        if int4 and shape[-1] % 8:
            continue
        x = torch.empty(shape, dtype=torch.float16)
        assert_same(x, asym=asym, int4=int4)
        assert_same(x, torch.ones(shape[-1], dtype=torch.float16), asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_moe_groups(isa, dtype, asym, int4):
    g = torch.Generator().manual_seed(11)
    x = random_rows(12, 48, dtype, 12).reshape(3, 4, 48)
    for groups in ([12], [0, 12], [3, 3, 5, 12, 12], [0, 0, 0, 1, 2, 3, 12], list(range(1, 13))):
        smooth = (torch.rand(len(groups), 48, generator=g) * 2).to(dtype)
        assert_same(x, smooth, torch.tensor(groups, dtype=torch.int32), asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_threads(isa, threads, asym, int4):
    # Enough rows that the pool splits them (grain = 16384 / cols rows), with uneven splits and
    # MoE groups that straddle the split points.
    x = random_rows(3100, 16, torch.bfloat16, 21)
    assert_same(x, asym=asym, int4=int4)
    groups = torch.tensor([0, 700, 1033, 1033, 2066, 3000, 3100], dtype=torch.int32)
    smooth = torch.rand(7, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    assert_same(x, smooth, groups, asym=asym, int4=int4)
    assert_same(random_rows(700, 64, torch.float16, 22)[:, ::2], asym=asym, int4=int4)


@given(
    lead=st.lists(st.integers(0, 5), min_size=1, max_size=3),
    cols=st.integers(0, 90),
    dtype=st.sampled_from(DTYPES),
    mode=st.sampled_from(MODES),
    smooth=st.booleans(),
    step=st.sampled_from([1, 2, 3]),
    transpose=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_native_matches_reference(lead, cols, dtype, mode, smooth, step, transpose, seed):
    asym, int4 = mode
    if int4:
        cols -= cols % 8
    g = torch.Generator().manual_seed(seed)
    rows = 1
    for size in lead:
        rows *= size
    full = random_rows(rows * step, cols, dtype, seed)
    if seed % 7 == 0 and full.numel():
        full.view(-1)[seed % full.numel()] = float("nan") if seed % 2 else float("inf")
    x = full[::step].reshape(*lead, cols)
    if transpose and x.dim() > 2:
        x = x.transpose(0, 1)
    s = (torch.rand(cols, generator=g) * 2).to(dtype) if smooth else None
    for isa in _native.supported_isas():
        with _native.isa_limit(isa):
            assert_same(x, s, asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_int64_group_index_same_as_int32(isa, asym, int4):
    x = random_rows(12, 16, torch.float16, 31)
    smooth = torch.rand(4, 16, generator=torch.Generator().manual_seed(3)).half()
    groups = [2, 2, 9, 12]
    want = native.dynamic_quant(x, smooth, torch.tensor(groups, dtype=torch.int32), asym, int4)
    got = native.dynamic_quant(x, smooth, torch.tensor(groups, dtype=torch.int64), asym, int4)
    for g, w in zip(got, want):
        assert_same_bits(g, w)
    assert_same(x, smooth, torch.tensor(groups, dtype=torch.int64), asym=asym, int4=int4)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_outputs_are_fresh_tensors(asym, int4):
    x = random_rows(9, 32, torch.float16, 1)
    first = native.dynamic_quant(x, None, None, asym, int4)
    second = native.dynamic_quant(x, None, None, asym, int4)
    y_shape, s_shape = dq.output_shapes(x, int4)
    y, scale, offset = first
    assert y.shape == y_shape and y.dtype == (torch.int32 if int4 else torch.int8)
    assert scale.shape == s_shape and scale.dtype == torch.float32
    assert offset.shape == (s_shape if asym else (0,)) and offset.dtype == torch.float32
    for a, b in zip(first, second):
        assert a.is_contiguous() and torch.equal(a, b)
        assert a.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr()
    y.zero_()  # writing one result does not touch the next call's
    assert torch.equal(native.dynamic_quant(x, None, None, asym, int4)[0], second[0])


def test_smooth_in_another_dtype_than_x_is_rounded_to_x_dtype_first():
    # The schema takes any float smooth_scales (the public ops only pass x's dtype): the operator
    # and its reference both use them rounded to x's dtype.
    x = random_rows(5, 16, torch.float16, 41)
    smooth = torch.rand(16, generator=torch.Generator().manual_seed(4)) * 1.37  # float32, not exact in float16
    got = native.dynamic_quant(x, smooth, None, True, False)
    with _native.force_reference():
        want = dq._dynamic_quant(x, smooth, None, True, False)
    for g, w in zip(got, want):
        assert_same_bits(g, w)
    rounded = native.dynamic_quant(x, smooth.half(), None, True, False)
    for g, w in zip(got, rounded):
        assert_same_bits(g, w)


# ---------------------------------------------------------------- the operator's own checks


def test_native_rejects_bad_group_index():
    x = torch.randn(4, 8).half()
    smooth = torch.ones(2, 8).half()
    for groups in ([1, 3], [3, 1], [-1, 4], [2, 5]):
        with pytest.raises(RuntimeError, match="npuquant::dynamic_quant: group_index must be non-decreasing"):
            native.dynamic_quant(x, smooth, torch.tensor(groups, dtype=torch.int32), True, False)
    with pytest.raises(RuntimeError, match="group_index must be non-decreasing"):  # symmetric, int4 too
        native.dynamic_quant(x, smooth, torch.tensor([3, 1], dtype=torch.int64), False, True)
    with pytest.raises(RuntimeError, match="npuquant::dynamic_quant: group_index needs smooth_scales"):
        native.dynamic_quant(x, None, torch.tensor([4], dtype=torch.int32), True, False)
    with pytest.raises(RuntimeError, match="smooth_scales must hold 2 x 8 values, but has shape \\[8\\]"):
        native.dynamic_quant(x, torch.ones(8).half(), torch.tensor([1, 4], dtype=torch.int32), True, False)
    with pytest.raises(RuntimeError, match="smooth_scales must hold 1 x 8 values, but has shape \\[7\\]"):
        native.dynamic_quant(x, torch.ones(7).half(), None, False, False)
    with pytest.raises(RuntimeError, match="group_index must be int32 or int64, but got float32"):
        native.dynamic_quant(x, smooth, torch.tensor([1.0, 4.0]), True, False)


@pytest.mark.parametrize(("asym", "int4"), MODES, ids=MODE_IDS)
def test_native_argument_errors(asym, int4):
    def call(x, smooth=None):
        return native.dynamic_quant(x, smooth, None, asym, int4)

    with pytest.raises(
        RuntimeError, match="npuquant::dynamic_quant: x must be float32 or float16 or bfloat16, but got"
    ):
        call(torch.zeros(2, 8, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="x must have at least 1 dimension"):
        call(torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="smooth_scales must be float32 or float16 or bfloat16, but got int32"):
        call(torch.randn(2, 8), torch.ones(8, dtype=torch.int32))
    if int4:
        with pytest.raises(
            RuntimeError, match="int4 output needs the last dim of x to be a multiple of 8, but it is 6"
        ):
            call(torch.randn(2, 6).half())
    else:
        assert_same(torch.randn(2, 6).half(), asym=asym, int4=int4)  # any last dim for int8


@pytest.mark.parametrize("arg", ["x", "smooth_scales", "group_index"])
def test_native_refuses_tensors_outside_their_storage(arg):
    args = {
        "x": torch.randn(64, 32).half(),
        "smooth_scales": torch.rand(2, 32).half(),
        "group_index": torch.tensor([20, 30, 40, 50, 60, 64], dtype=torch.int32)[-2:],  # a view into the storage
    }
    shrink_storage(args[arg])
    with pytest.raises(RuntimeError, match=f"npuquant::dynamic_quant: {arg} of shape .* reaches outside its storage"):
        native.dynamic_quant(args["x"], args["smooth_scales"], args["group_index"], True, False)


def test_native_refuses_strided_x_outside_its_storage():
    x = torch.randn(40, 32).half()[::4, ::2]  # (10, 16): the last element is storage element 36 * 32 + 30
    shrink_storage(x, (36 * 32 + 30) * 2)  # one element short
    with pytest.raises(RuntimeError, match="x of shape \\[10, 16\\] reaches outside its storage"):
        native.dynamic_quant(x, None, None, False, False)
