"""The one affine dequantization kernel (csrc/dequant.c, ``torch.ops.npuquant.dequant_affine``)
against its pure-torch reference, bit for bit: every decoder x granularity x encoder x kernel
variant x thread count, contiguous and strided inputs, edge values, and the argument errors.

The front-ends (npu_anti_quant, grouped int4 tiles, dequantize / pypto, aclnn) are shape adapters
over this operator; their own test files check their rules, messages and worked examples."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_same_bits, random_words, shrink_storage
from npuquant.ops.dequant_affine import reference

WHOLE = None  # a block as large as the view along that axis

OP = torch.ops.npuquant.dequant_affine.default
ENCODERS = [torch.float32, torch.float16, torch.bfloat16]
DECODERS = ["int8", "int16", "int4"]
# name -> (row_block, col_block) over a (rows, cols) view (the parameters' shape is (rows / row_block,
# cols / col_block), 1-D when there is one block row); "matrix_column" has 3 rows per matrix.
GRANULARITIES = {
    "tensor": (WHOLE, WHOLE),
    "last_dim": (WHOLE, 1),
    "row": (1, WHOLE),
    "row_group8": (1, 8),
    "row_group24": (1, 24),
    "row_group32": (1, 32),
    "matrix_column": (3, 1),
    "block_2x16": (2, 16),
    "block_3x5": (3, 5),  # neither a vector nor groups of 8: the scalar path in every variant
    "row_group5": (1, 5),
    "row_group20": (1, 20),
}
SHAPES = [(3, 8), (6, 40), (3, 264), (9, 1032), (6, 7), (3, 131), (6, 120), (3, 15)]  # odd widths: int8 / int16 only


def values(decoder: str, rows: int, cols: int, gen: torch.Generator) -> torch.Tensor:
    """Raw inputs covering the whole range of the decoder (-128, -32768, -8 included)."""
    if decoder == "int4":
        return random_words(rows, cols // 8, generator=gen)
    dtype = torch.int8 if decoder == "int8" else torch.int16
    info = torch.iinfo(dtype)
    x = torch.randint(info.min, info.max + 1, (rows, cols), generator=gen, dtype=torch.int32).to(dtype)
    x.view(-1)[:2] = torch.tensor([info.min, info.max], dtype=dtype)[: x.numel()]
    return x


EDGES = [float("nan"), float("inf"), -float("inf"), -0.0, 1e38, -3e-39, 65520.0, 1e-8]


def params(n: int, gen: torch.Generator, offset: bool) -> torch.Tensor:
    """Random float32 parameters with NaN, infinities, -0, overflowing and denormal values mixed in."""
    p = torch.randn(n, generator=gen) * (0.5 if offset else 0.01)
    if offset:
        p = p + torch.randint(-8, 8, (n,), generator=gen)
    k = torch.randint(0, n, (min(n, 4),), generator=gen)
    p[k] = torch.tensor(EDGES)[torch.randint(0, len(EDGES), (k.numel(),), generator=gen)]
    return p


def param_shape(rows: int, cols: int, block: tuple[int | None, int | None]) -> tuple[int, ...] | None:
    """The parameters' shape for blocks of (row_block, col_block); None when they do not divide the view."""
    rb, cb = block[0] or rows, block[1] or cols
    if rows % rb or cols % cb:
        return None
    return (cols // cb,) if rows == rb else (rows // rb, cols // cb)


def n_params(rows: int, cols: int, block) -> int:
    shape = param_shape(rows, cols, block)
    return shape[0] * (shape[1] if len(shape) > 1 else 1)


def check(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None, dst, half_steps: bool = False) -> None:
    actual = OP(x, scale, offset, dst, half_steps)
    expected = reference.dequant_affine(x, scale, offset, dst, half_steps)
    nan_any = None
    if offset is not None and actual.numel():  # both parameters NaN: torch returns either payload
        view = actual.reshape(-1, actual.shape[-1] if actual.dim() else 1).shape
        both = reference.per_element(offset.isnan().float() * scale.isnan().float(), *view) > 0
        nan_any = both.expand(view).reshape(actual.shape)
    assert_same_bits(actual, expected, nan_any)


def shape_cases(decoder: str, granularity: str, gen: torch.Generator):
    """(x, random scale, random offset) for every shape of SHAPES the decoder and granularity fit."""
    block = GRANULARITIES[granularity]
    for rows, cols in SHAPES:
        if decoder == "int4" and cols % 8:
            continue
        shape = param_shape(rows, cols, block)
        if shape is None:
            continue
        x = values(decoder, rows, cols, gen)
        n = n_params(rows, cols, block)
        yield x, params(n, gen, offset=False).reshape(shape), params(n, gen, offset=True).reshape(shape)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("dst", ENCODERS)
def test_kernel_matches_reference(isa, threads, decoder, granularity, dst):
    gen = torch.Generator().manual_seed(hash((decoder, granularity, str(dst))) % 2**31)
    for x, scale, offset in shape_cases(decoder, granularity, gen):
        check(x, scale, None, dst)
        check(x, scale, offset, dst)


@pytest.mark.parametrize("granularity", ["last_dim", "row", "row_group8", "matrix_column", "block_3x5"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_strided_inputs(isa, decoder, granularity):
    """Rows numbered by permuted leading dims, and rows whose elements are strided, read in place."""
    gen = torch.Generator().manual_seed(7)
    block = GRANULARITIES[granularity]
    base = values(decoder, 2 * 3 * 6, 80, gen).reshape(2, 3, 6, -1)
    for x in (base.permute(1, 0, 2, 3), base[:, :, :, ::2], base.transpose(0, 2)[:, :, :, 1:]):
        rows, cols = x[..., 0].numel(), x.shape[-1] * (8 if decoder == "int4" else 1)
        shape = param_shape(rows, cols, block)
        if shape is None:
            continue
        n = n_params(rows, cols, block)
        check(x, params(n, gen, False).reshape(shape), params(n, gen, True).reshape(shape), torch.float16)


@pytest.mark.parametrize("decoder", DECODERS)
def test_large_output_streams_and_splits(isa, decoder):
    """16 MiB and more of output: non-temporal stores and a split over threads."""
    gen = torch.Generator().manual_seed(3)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = values(decoder, 1024, 4096, gen)
        check(x, params(1024 * 128, gen, False).reshape(1024, 128), params(1024 * 128, gen, True).reshape(1024, 128),
              torch.float32)  # fmt: skip
        check(x, params(4096, gen, False), None, torch.float32)
    finally:
        torch.set_num_threads(previous)


def test_rank_zero_and_empty(isa):
    x = torch.tensor(-128, dtype=torch.int8)
    check(x, torch.tensor([0.5]), torch.tensor([1.0]), torch.float16)
    for x in (torch.zeros(0, 5, dtype=torch.int8), torch.zeros(3, 0, dtype=torch.int32)):
        out = OP(x, torch.ones(1), None, torch.bfloat16)
        assert out.shape == reference.dequant_affine(x, torch.ones(1), None, torch.bfloat16).shape


def test_bfloat16_parameters_are_read_as_float32(isa):
    gen = torch.Generator().manual_seed(5)
    x = values("int8", 4, 24, gen)
    s, o = params(24, gen, False).bfloat16(), params(24, gen, True).bfloat16()
    check(x, s, o, torch.float16)


X28 = torch.zeros(2, 8, dtype=torch.int8)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((torch.zeros(2, 8, dtype=torch.uint8), torch.ones(1), None), "x must be int8 or int16 or int32"),
        ((X28, torch.ones(1, dtype=torch.float64), None), "scale must be float32 or bfloat16 or float16"),
        ((X28, torch.ones(1), torch.ones(1).bfloat16()), "offset must have scale's dtype"),
        ((X28, torch.ones(3), None), r"scale of shape \[3\] does not split x, seen as 2 x 8, into equal blocks"),
        ((X28, torch.ones(3, 1), None), r"scale of shape \[3, 1\] does not split x"),
        ((X28, torch.ones(0), None), r"scale of shape \[0\] does not split x"),
        ((X28, torch.ones(1, 1, 1), None), "scale must have at most 2 dimensions"),
        ((X28, torch.ones(2, 4), torch.ones(3)), "offset must have scale's 8 elements"),
        ((torch.tensor(1, dtype=torch.int32), torch.ones(1), None), "at least 1 dimension"),
    ],
)
def test_argument_errors(args, message):
    with pytest.raises(RuntimeError, match=message):
        OP(*args, torch.float16)
    with pytest.raises(RuntimeError, match="out_dtype must be"):
        OP(X28, torch.ones(1), None, torch.int8)


@pytest.mark.parametrize("granularity", ["tensor", "last_dim", "row_group8", "row_group32", "block_3x5"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_half_steps_match_torch_float16_arithmetic(isa, threads, decoder, granularity):
    """``half_steps``: fp16(fp16(q + offset) * scale), bit for bit with the reference and with torch's
    own float16 add and multiply (npu_weight_quant_batchmatmul's float16 anti-quantization)."""
    gen = torch.Generator().manual_seed(hash((decoder, granularity)) % 2**31)
    for x, scale, offset in shape_cases(decoder, granularity, gen):
        check(x, scale.half(), offset.half(), torch.float16, True)
        check(x, scale.half(), None, torch.float16, True)
    # torch's float16 arithmetic, independently: an int8 tensor, per-last-dim parameters
    x = values("int8", 6, 40, gen)
    scale, offset = torch.rand(40, generator=gen).half(), (torch.randn(40, generator=gen) * 4).half()
    assert_same_bits(OP(x, scale, offset, torch.float16, True), (x.half() + offset) * scale)
    assert not torch.equal(OP(x, scale, offset, torch.float16, True), OP(x, scale, offset, torch.float16))


def test_half_steps_errors():
    with pytest.raises(RuntimeError, match="half_steps .* needs float16 scale, offset and out_dtype"):
        OP(X28, torch.ones(1), None, torch.float16, True)
    with pytest.raises(RuntimeError, match="half_steps .* needs float16 scale, offset and out_dtype"):
        OP(X28, torch.ones(1).half(), None, torch.float32, True)


def test_storage_too_small_is_refused():
    x = shrink_storage(torch.zeros(64, 64, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="reaches outside its storage"):
        OP(x, torch.ones(1), None, torch.float32)


def test_opcheck():
    gen = torch.Generator().manual_seed(1)
    for args in (
        (values("int8", 3, 16, gen), torch.rand(16), torch.rand(16), torch.float16),
        (values("int4", 4, 32, gen), torch.rand(4, 4), None, torch.bfloat16),
        (values("int16", 6, 5, gen), torch.rand(2, 5), torch.rand(2, 5), torch.float32),
        (values("int8", 6, 8, gen)[::2], torch.rand(1, 1), None, torch.float16),
        (values("int4", 4, 32, gen), torch.rand(4, 4).half(), torch.rand(4, 4).half(), torch.float16, True),
    ):
        torch.library.opcheck(OP, args)
