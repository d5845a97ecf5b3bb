"""npu_grouped_matmul: worked examples, every form, torch_npu's error rules, native against
reference bit for bit (random expert counts, empty experts, uneven splits), opcheck, torch.compile."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits
from npuquant import _native

gmm = npuquant.npu_grouped_matmul
i8 = torch.int8


def _ref(*args, **kwargs):
    with _native.force_reference():
        return gmm(*args, **kwargs)


# ------------------------------------------------------------------------- worked examples
# Values computed by hand, not by the code under test.

X = torch.tensor([[1, 2], [3, 4], [5, 6]], dtype=i8)
W = torch.tensor([[[1, 0], [0, 1]], [[1, 1], [1, -1]]], dtype=i8)  # (E=2, k=2, n=2)


def test_a8w8_int32_cumsum_and_counts():
    # expert 0 takes row 0 (identity), expert 1 rows 1-2: [a+b, a-b]
    expected = torch.tensor([[1, 2], [7, -1], [11, -1]], dtype=torch.int32)
    for gl, glt in ((torch.tensor([1, 3]), 0), (torch.tensor([1, 2]), 1), (torch.tensor([[0, 1], [1, 2]]), 2)):
        y = gmm([X], [W], group_list=gl, group_list_type=glt, group_type=0, split_item=3, output_dtype=torch.int32)
        assert len(y) == 1
        assert torch.equal(y[0], expected)


def test_a8w8_bf16_pertoken():
    scale = torch.tensor([[0.5, 2.0], [0.5, 2.0]], dtype=torch.bfloat16)
    pertoken = torch.tensor([1.0, 0.5, 2.0])
    y = gmm([X], [W], scale=[scale], per_token_scale=[pertoken], group_list=torch.tensor([1, 3]), group_type=0,
            split_item=2, output_dtype=torch.bfloat16)[0]
    expected = torch.tensor([[0.5, 4.0], [1.75, -1.0], [11.0, -4.0]], dtype=torch.bfloat16)
    assert torch.equal(y, expected)


def test_a8w8_int8_output_with_int32_bias_and_int64_scale():
    # (acc + bias) * 0.5, rounded half to even: expert 0 rows [1,2]+[1,1] -> [1, 1.5] -> [1, 2]
    scale = [npuquant.npu_trans_quant_param(torch.tensor([0.5, 0.5])) for _ in range(2)]
    bias = [torch.tensor([1, 1], dtype=torch.int32), torch.tensor([0, 0], dtype=torch.int32)]
    y = gmm([X], list(W.unbind(0)), scale=scale, bias=bias, group_list=[1, 3], split_item=3)[0]
    assert y.dtype == i8
    assert torch.equal(y, torch.tensor([[1, 2], [4, -0], [6, -0]], dtype=i8))  # 3.5 -> 4, 5.5 -> 6, -0.5 -> -0


def test_float_multi_tensor_with_bias():
    x = [torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[1.0], [2.0]]])]  # 3-D x (their dims must agree)
    w = [torch.tensor([[1.0], [1.0]]), torch.tensor([[3.0, 4.0]])]
    b = [torch.tensor([0.5]), torch.tensor([1.0, -1.0])]
    y = gmm(x, w, bias=b, split_item=0)
    assert torch.equal(y[0], torch.tensor([[[3.5]]]))
    assert torch.equal(y[1], torch.tensor([[[4.0, 3.0], [7.0, 7.0]]]))


def test_float16_single_rounding():
    # 2048 + 1 + 1 in float32, one rounding at the end (float16 spacing at 2048 is 2)
    x = torch.tensor([[2048.0, 1.0, 1.0]], dtype=torch.float16)
    w = torch.ones(3, 1, dtype=torch.float16)
    assert gmm([x], [w])[0].item() == 2050.0


def test_antiquant_int8_per_channel():
    x = torch.tensor([[1.0, 1.0]], dtype=torch.bfloat16)
    w = torch.tensor([[1], [2]], dtype=i8)  # (w + 1) * 2 = [[4], [6]]
    y = gmm([x], [w], antiquant_scale=[torch.tensor([2.0], dtype=torch.bfloat16)],
            antiquant_offset=[torch.tensor([1.0], dtype=torch.bfloat16)])
    assert y[0].item() == 10.0


def test_antiquant_float16_bias_is_added_to_the_rounded_product():
    # op-plugin's golden: y = x @ w in float16, then y += bias in float16 (two roundings). Here
    # 1 + 2**-11 is not a float16, so rounding first then adding 2**-11 ties to even at 1.0 both
    # times, while one rounding of 1 + 2**-11 + 2**-11 would give 1 + 2**-10.
    x = torch.tensor([[1.0, 2.0**-11]], dtype=torch.float16)
    w = torch.tensor([[1], [1]], dtype=i8)
    one = [torch.tensor([1.0], dtype=torch.float16)]
    zero = [torch.tensor([0.0], dtype=torch.float16)]
    bias = [torch.tensor([2.0**-11], dtype=torch.float16)]
    y = gmm([x], [w], bias=bias, antiquant_scale=one, antiquant_offset=zero)[0]
    product = npuquant.npu_weight_quant_batchmatmul(x, w, one[0], zero[0])
    assert_same_bits(y, product + bias[0])
    assert y.item() == 1.0
    # a float32 bias (bfloat16 x) goes into the weight-only op's one rounding
    xb, b32 = x.to(torch.bfloat16), [torch.tensor([0.5])]
    ones_b, zeros_b = [one[0].to(torch.bfloat16)], [zero[0].to(torch.bfloat16)]
    yb = gmm([xb], [w], bias=b32, antiquant_scale=ones_b, antiquant_offset=zeros_b)[0]
    assert_same_bits(yb, npuquant.npu_weight_quant_batchmatmul(xb, w, ones_b[0], zeros_b[0], bias=b32[0]))


def test_antiquant_int4_per_group_stacked():
    k, n, e = 64, 8, 2
    v = torch.randint(-8, 8, (e, k, n), dtype=i8)
    words = npuquant.pack_int4(v)  # (e, k, n/8)
    x = torch.randn(5, k, dtype=torch.float16)
    scale = torch.rand(e, 2, n, dtype=torch.float16)  # 2 groups of 32 rows of k
    offset = torch.rand(e, 2, n, dtype=torch.float16)
    y = gmm([x], [words], antiquant_scale=[scale], antiquant_offset=[offset], group_list=torch.tensor([2, 5]),
            group_type=0, split_item=3)[0]
    rows = [x[:2], x[2:]]
    for i in range(e):
        expected = npuquant.npu_weight_quant_batchmatmul(rows[i], words[i], scale[i], offset[i], antiquant_group_size=32)
        assert_same_bits(y[2 * i : 2 * i + rows[i].shape[0]].contiguous(), expected)


def test_empty_experts_and_rows_past_type2_groups():
    x = torch.randint(-5, 5, (6, 4), dtype=i8)
    w = torch.randint(-5, 5, (3, 4, 2), dtype=i8)
    gl = torch.tensor([[0, 2], [2, 1], [1, 0]])  # expert 1 empty; rows 3..5 not covered -> zeros
    y = gmm([x], [w], group_list=gl, group_list_type=2, group_type=0, split_item=3, output_dtype=torch.int32)[0]
    assert torch.equal(y[:2], x[:2].int() @ w[0].int())
    assert torch.equal(y[2:3], x[2:3].int() @ w[2].int())
    assert torch.equal(y[3:], torch.zeros(3, 2, dtype=torch.int32))
    for impl in (gmm, _ref):
        ys = impl([x], [w], group_list=torch.tensor([0, 0, 6]), group_type=0, split_item=0, output_dtype=torch.int32)
        assert [t.shape for t in ys] == [(0, 2), (0, 2), (6, 2)]


# ------------------------------------------------------------------------------- errors

F16 = torch.float16
XF = [torch.randn(4, 8, dtype=F16)]
WF = [torch.randn(8, 6, dtype=F16), torch.randn(8, 6, dtype=F16)]
XQ = [torch.randint(-5, 5, (4, 8), dtype=i8)]
WQ = [torch.randint(-5, 5, (2, 8, 6), dtype=i8)]
GL = torch.tensor([1, 4])

ERRORS = [
    (dict(x=[], weight=WF), "Invalid inputs: neither x nor weight could be empty."),
    (dict(x=XF, weight=WF, split_item=4), "Invalid value of split_item [4], which should only be one of 0/1/2/3."),
    (dict(x=XF * 2, weight=WF, group_list=[1, 4], split_item=1), "(1) length of x equals 1"),
    (dict(x=XF, weight=WF, split_item=0), "the num of x tensors must equal the num of weight tensors"),
    (dict(x=XF, weight=WF, group_list=GL, split_item=3), "Requires manual passing group_type, current is None."),
    (dict(x=XF, weight=WF, group_list=GL, split_item=3, group_type=1),
     "group_type currently only support -1 and 0, current value is 1"),
    (dict(x=XF, weight=WF, group_list=GL, split_item=3, group_type=-1),
     "groupListOptional should be nullptr when groupType is -1."),
    (dict(x=XF, weight=WF, split_item=3, group_type=-1), "When splitItem is 2/3, groupType can not be -1."),
    (dict(x=XF, weight=WF, group_list=GL.int(), split_item=3, group_type=0),
     "Invalid dtype: Only int64 is supported for groupList."),
    (dict(x=XF, weight=WF, group_list=torch.zeros(1025, dtype=torch.int64), split_item=3, group_type=0),
     "should be less than or equal to 1024."),
    (dict(x=XF, weight=WF, group_list=list(range(129)), split_item=3), "should be less than or equal to 128."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([1, 2, 4]), split_item=3, group_type=0),
     "size of groupList(tensor) 3 should be equal to groupNum 2."),
    (dict(x=XF, weight=WF, split_item=3), "groupListOptional(tensor) is required in this case, but get nullptr."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([3, 1]), split_item=3, group_type=0),
     "group_list[1] - group_list[0] should be larger than or equal to 0, but now is -2."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([-1, 4]), split_item=3, group_type=0),
     "group_list[0] should be larger than or equal to 0, but now is -1."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([1, 3]), split_item=3, group_type=0),
     "When splited axis is M, the last value of group list(3) must equal with x shape[0] (4)."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([1, 2]), split_item=3, group_type=0, group_list_type=1),
     "When splited axis is M, the sum of group list(3) must equal with x shape[0] (4)."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([1, -1]), split_item=3, group_type=0, group_list_type=1),
     "group_list[1] should be larger than or equal to 0, but now is -1."),
    (dict(x=XF * 2, weight=WF, group_list=[1, 4], split_item=3),
     "x[0] dim 0 value 4 should be equal to groupListOptional[0] 1."),
    (dict(x=XF, weight=WF, group_list=torch.tensor([[0, 1], [1, 3]]), split_item=3, group_type=0,
          group_list_type=2), "group_list_type 2 is only supported when x and weight are int8"),
    (dict(x=XF, weight=[torch.randn(8, 6, dtype=F16), torch.randn(8, 5, dtype=F16)], group_list=GL, split_item=3,
          group_type=0), "Dim 1 value of weight[1] 5 should be equal with dim 1 value of weight[0] 6."),
    (dict(x=XF, weight=[torch.randn(7, 6, dtype=F16)] * 2, group_list=GL, split_item=3, group_type=0),
     "Dim 1 value of x[0] should be equal with dim 0 value of weight[0], but now is 8 and 7 respectively."),
    (dict(x=[torch.randn(4, 8, 1, dtype=F16)], weight=WF, group_list=GL, split_item=3, group_type=0),
     "x[0] dim num should be 2 in this case, but now is 3."),
    (dict(x=[torch.randn(1, 1, 1, 1, 1, 4, 8, dtype=F16)], weight=WF[:1]), "x[0] dimNum is 7 , but only support 2-6."),
    (dict(x=XF, weight=[torch.randn(1, 8, 6, dtype=F16)] * 2, group_list=GL, split_item=3, group_type=0),
     "weight[0] dimNum is 3 , but only support 2 when weight separated."),
    (dict(x=XF, weight=[WF[0], WF[1].t().contiguous().t()], group_list=GL, split_item=3, group_type=0),
     "The transpose state must be the same for each tensor in weight."),
    (dict(x=XF, weight=[torch.randn(8, 65536, dtype=F16)]), "should less or equal to 65535, but now is 65536."),
    (dict(x=XF, weight=WF, bias=[torch.randn(6)] * 2, group_list=GL, split_item=3, group_type=0),
     "GMM: bias dtype does not match with required dtype[DT_FLOAT16]."),
    (dict(x=XF, weight=WF, bias=[torch.randn(6, dtype=F16)], group_list=GL, split_item=3, group_type=0),
     "bias size[1] must be equal with weight size[2]."),
    (dict(x=XF, weight=WF, bias=[torch.randn(5, dtype=F16)] * 2, group_list=GL, split_item=3, group_type=0),
     "NDim[5] of bias[0] should be equal with NDim[6] of weight[0]."),
    (dict(x=XF, weight=WF, scale=[torch.ones(6)] * 2, group_list=GL, split_item=3, group_type=0),
     "Detected nonquant, but quant inputs is not empty!"),
    (dict(x=XF, weight=WF[:1], output_dtype=torch.float32), "GMM: y dtype does not match with required dtype[DT_FLOAT16]."),
    (dict(x=XF, weight=[torch.randn(8, 6)]), "does not support x of dtype torch.float16 with a weight of dtype"),
    (dict(x=XQ, weight=[torch.zeros(8, 1, dtype=torch.int32)]), "A8W4 / A4W4 grouped matmul) is not supported"),
    (dict(x=XQ, weight=WQ, group_list=GL, split_item=3, group_type=0),
     "GMM: scale must not be nullptr in quant, but now is nullptr."),
    (dict(x=XQ, weight=WQ, scale=[torch.ones(2, 6)], group_list=GL, split_item=3, group_type=0),
     "per-channel quant case only supports scale with data type int64/uint64 when output is int8"),
    (dict(x=XQ, weight=WQ, scale=[torch.ones(2, 6)], per_token_scale=[torch.ones(4)], group_list=GL, split_item=3,
          group_type=0, output_dtype=torch.bfloat16), "per-token quant case only supports scale data type bfloat16"),
    (dict(x=XQ, weight=WQ, scale=[torch.ones(2, 6, dtype=torch.bfloat16)], per_token_scale=[torch.ones(3)],
          group_list=GL, split_item=3, group_type=0, output_dtype=torch.bfloat16),
     "MDim[3] of perTokenScaleOptional should be equal with MDim[4] of x."),
    (dict(x=XQ, weight=list(WQ[0].unbind(0)), scale=[torch.ones(6, dtype=torch.bfloat16)] * 2,
          per_token_scale=[torch.ones(4)], group_list=GL, split_item=3, group_type=0, output_dtype=torch.bfloat16),
     "per-token quant case is only supported when x, weight and y are all single tensor"),
    (dict(x=XQ, weight=WQ, scale=[torch.ones(6, dtype=torch.bfloat16)], group_list=GL, split_item=3, group_type=0,
          output_dtype=torch.bfloat16), "scale Dim must be 2, but now is 1."),
    (dict(x=XQ, weight=WQ, scale=[torch.ones(3, 6, dtype=torch.bfloat16)], group_list=GL, split_item=3,
          group_type=0, output_dtype=torch.bfloat16), "scale batch size[3] should be euqal with groupList length[2]."),
    (dict(x=XQ, weight=WQ, scale=[torch.ones(2, 6, dtype=torch.bfloat16)], offset=[torch.ones(2, 6)], group_list=GL,
          split_item=3, group_type=0, output_dtype=torch.bfloat16),
     "GMM: offset must be nullptr in quant, but now is not nullptr."),
    (dict(x=XQ, weight=WQ, bias=[torch.ones(2, 6)], group_list=GL, split_item=3, group_type=0,
          output_dtype=torch.int32), "GMM: bias dtype does not match with required dtype[DT_INT32]."),
    (dict(x=XQ, weight=WQ, group_list=GL, split_item=3, group_type=0, output_dtype=torch.float32),
     "Expect yDtype is int8, int32, float16 or bfloat16 in quant case, but now y[0] dtype is DT_FLOAT"),
    (dict(x=XF, weight=[torch.zeros(8, 6, dtype=i8)], antiquant_scale=[torch.ones(6, dtype=F16)]),
     "GMM: antiquantOffset must not be nullptr in antiquant, but now is nullptr."),
    (dict(x=XF, weight=[torch.zeros(8, 6, dtype=i8)]),
     "GMM: antiquantScale must not be nullptr in antiquant, but now is nullptr."),
    (dict(x=XF, weight=[torch.zeros(8, 6, dtype=i8)], antiquant_scale=[torch.ones(2, 6, dtype=F16)],
          antiquant_offset=[torch.ones(2, 6, dtype=F16)]), "antiquantScale Dim must be 1, but now is 2."),
    (dict(x=XF, weight=[torch.zeros(8, 1, dtype=torch.int32)], antiquant_scale=[torch.ones(3, 8, dtype=F16)],
          antiquant_offset=[torch.ones(3, 8, dtype=F16)]),
     "perGroupNum must be larger than 0, and can evenly divided by K[8] in A16W4-pergroup case"),
    (dict(x=XF, weight=[torch.zeros(8, 6, dtype=i8)], antiquant_scale=[torch.ones(6)],
          antiquant_offset=[torch.ones(6)]), "GMM: antiquantScale dtype does not match with x dtype[DT_FLOAT16]."),
    (dict(x=XF, weight=[torch.zeros(8, 6, dtype=i8)], antiquant_scale=[torch.ones(6, dtype=F16)],
          antiquant_offset=[torch.ones(6, dtype=F16)], scale=[torch.ones(6)]),
     "Detected antiquant, but quant inputs is not empty!"),
    (dict(x=XF, weight=WF[:1], act_type=5), "act_type 5 (fused activation) is not supported by npuquant"),
    (dict(x=XF, weight=WF[:1], activation_input=[XF[0]]), "activation_input is a reserved argument"),
    (dict(x=XF, weight=WF[:1], x_dtype=290), "x_dtype (an Ascend 950 storage dtype) is not supported"),
]


@pytest.mark.parametrize("index", range(len(ERRORS)))
def test_errors(index):
    kwargs, message = ERRORS[index]
    kwargs = dict(kwargs)
    x, w = kwargs.pop("x"), kwargs.pop("weight")
    with pytest.raises(RuntimeError) as info:
        gmm(x, w, **kwargs)
    assert message in str(info.value)


def test_type_errors():
    with pytest.raises(TypeError, match="'x' must be a list of tensors"):
        gmm(XF[0], WF)
    with pytest.raises(TypeError, match="'group_list'"):
        gmm(XF, WF, group_list="1,4", split_item=3)


def test_native_kernel_rejects_bad_group_sizes():
    x, w = XQ[0], WQ[0]
    for bad in (torch.tensor([3, 2]), torch.tensor([-1, 2])):
        with pytest.raises(RuntimeError, match="non-negative counts summing to at most 4"):
            torch.ops.npuquant.grouped_matmul_s8([x], [w], bad, None, None, None, None, torch.int32, True)
    short = torch.ones(5)  # scale must hold 2 * 6 values
    with pytest.raises(RuntimeError, match="must hold 12 values"):
        torch.ops.npuquant.grouped_matmul_s8([x], [w], torch.tensor([1, 3]), short, None, None, None, torch.float16,
                                             True)


# --------------------------------------------------------------- native against reference


def _counts(draw, experts: int, rows: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, rows), min_size=experts - 1, max_size=experts - 1)))
    ends = [*cuts, rows]
    return [b - a for a, b in zip([0, *ends[:-1]], ends)]


@st.composite
def a8w8_cases(draw):
    experts = draw(st.integers(1, 64))
    rows = draw(st.integers(0, 80))
    k, n = draw(st.integers(1, 40)), draw(st.integers(1, 24))
    counts = _counts(draw, experts, rows)
    mode = draw(st.sampled_from(["bf16", "bf16_pertoken", "fp16", "fp16_pertoken", "int8", "int32"]))
    stacked = draw(st.booleans()) or mode.endswith("pertoken")
    transposed = draw(st.booleans())
    glt = draw(st.sampled_from([0, 1, 2]))
    split = draw(st.sampled_from([0, 1, 2, 3]))
    if mode.endswith("pertoken") and experts > 1:
        split |= 2  # per-token scales need one output (torch_npu's rule)
    seed = draw(st.integers(0, 2**31 - 1))
    return experts, rows, k, n, counts, mode, stacked, transposed, glt, split, seed


@given(a8w8_cases())
def test_a8w8_native_matches_reference(case):
    experts, rows, k, n, counts, mode, stacked, transposed, glt, split, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-128, 128, (rows, k), dtype=i8, generator=gen)
    w = torch.randint(-128, 128, (experts, n, k) if transposed else (experts, k, n), dtype=i8, generator=gen)
    if transposed:
        w = w.transpose(1, 2)
    kwargs: dict = {}
    out = {"bf16": torch.bfloat16, "fp16": torch.float16, "int8": i8, "int32": torch.int32}[mode.split("_")[0]]
    scale = torch.rand(experts, n, generator=gen) / 64
    if mode.startswith("bf16"):
        scale = scale.to(torch.bfloat16)
    elif mode == "int8":
        scale = npuquant.npu_trans_quant_param(scale.reshape(-1), torch.randint(-3, 3, (experts * n,)).float())
        scale = scale.reshape(experts, n)
    if mode != "int32":
        kwargs["scale"] = [scale] if stacked else list(scale.unbind(0))
    if mode.endswith("pertoken"):
        kwargs["per_token_scale"] = [torch.rand(rows, generator=gen)]
    if seed % 3 == 0:
        bias = torch.randint(-1000, 1000, (experts, n), dtype=torch.int32, generator=gen)
        kwargs["bias"] = [bias] if stacked else list(bias.unbind(0))
    weights = [w] if stacked else list(w.unbind(0))
    counts_t = torch.tensor(counts, dtype=torch.int64)
    group_list = {0: counts_t.cumsum(0), 1: counts_t, 2: torch.stack([torch.arange(experts), counts_t], 1)}[glt]
    if glt == 2 and split in (0, 1):
        glt, group_list = 1, counts_t  # type 2 gives one output only in practice (vllm's dispatch)
    args = dict(group_list=group_list, group_list_type=glt, group_type=0, split_item=split, output_dtype=out, **kwargs)
    if split in (0, 1) and experts == 1 and stacked:
        args.pop("group_list"), args.pop("group_list_type")  # one expert, one x: no grouping
        args["group_type"] = -1
    native = gmm([x], weights, **args)
    expected = _ref([x], weights, **args)
    assert len(native) == len(expected)
    for a, b in zip(native, expected):
        assert_same_bits(a, b)


def test_a8w8_multi_x_native_matches_reference():
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randint(-128, 128, s, dtype=i8, generator=gen) for s in ((1, 3, 16), (2, 5, 16), (1, 1, 16))]
    ws = [torch.randint(-128, 128, (16, n), dtype=i8, generator=gen) for n in (8, 3, 5)]
    scale = [torch.rand(w.shape[1], generator=gen).to(torch.bfloat16) for w in ws]
    bias = [torch.randint(-9, 9, (w.shape[1],), dtype=torch.int32, generator=gen) for w in ws]
    args = dict(scale=scale, bias=bias, output_dtype=torch.bfloat16)
    for a, b in zip(gmm(xs, ws, **args), _ref(xs, ws, **args)):
        assert_same_bits(a, b)
    xs2 = [xs[0][0], xs[2][0]]
    ws2 = [ws[0], torch.randint(-128, 128, (16, 8), dtype=i8, generator=gen)]
    args2 = dict(scale=[scale[0].float(), torch.rand(8, generator=gen)], split_item=2, output_dtype=torch.float16)
    y = gmm(xs2, ws2, **args2)[0]
    assert y.shape == (4, 8)
    assert_same_bits(y, _ref(xs2, ws2, **args2)[0])


def test_native_matches_reference_under_each_isa(isa):
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-128, 128, (70, 48), dtype=i8, generator=gen)
    w = torch.randint(-128, 128, (5, 48, 40), dtype=i8, generator=gen)
    scale = (torch.rand(5, 40, generator=gen) / 100).to(torch.bfloat16)
    pertoken = torch.rand(70, generator=gen)
    args = dict(scale=[scale], per_token_scale=[pertoken], group_list=torch.tensor([0, 4, 30, 31, 70]),
                group_type=0, split_item=2, output_dtype=torch.bfloat16)
    assert_same_bits(gmm([x], [w], **args)[0], _ref([x], [w], **args)[0])


@pytest.mark.parametrize("counts", [[40, 40, 0, 41, 39, 40], [200, 1, 0, 2, 1, 0]])  # balanced, skewed
def test_native_matches_reference_per_thread_count(threads, counts):
    # balanced experts run one per thread, skewed ones one after the other on all threads
    gen = torch.Generator().manual_seed(sum(counts))
    x = torch.randint(-128, 128, (sum(counts), 40), dtype=i8, generator=gen)
    w = torch.randint(-128, 128, (6, 24, 40), dtype=i8, generator=gen).transpose(1, 2)
    scale = torch.rand(6, 24, generator=gen)
    args = dict(scale=[scale], group_list=torch.tensor(counts), group_list_type=1, group_type=0, split_item=3,
                output_dtype=torch.float16)
    assert_same_bits(gmm([x], [w], **args)[0], _ref([x], [w], **args)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_float_form_against_per_expert_matmul(dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, 16, generator=gen).to(dtype)
    w = torch.randn(3, 16, 5, generator=gen).to(dtype)
    bias = torch.randn(3, 5, generator=gen).to(torch.float16 if dtype == torch.float16 else torch.float32)
    y = gmm([x], [w], bias=[bias], group_list=torch.tensor([2, 2, 9]), group_type=0, split_item=3)[0]
    rows = [(0, 2), (2, 2), (2, 9)]
    for e, (a, b) in enumerate(rows):
        expected = (x[a:b].float() @ w[e].float() + bias[e].float()).to(dtype)
        assert_same_bits(y[a:b].contiguous(), expected)
    assert_same_bits(y, _ref([x], [w], bias=[bias], group_list=torch.tensor([2, 2, 9]), group_type=0,
                             split_item=3)[0])


def test_antiquant_int4_transposed_multi_weight():
    gen = torch.Generator().manual_seed(5)
    k, n = 64, 16
    vals = [torch.randint(-8, 8, (n, k), dtype=i8, generator=gen) for _ in range(2)]
    words = [npuquant.pack_int4(v).t() for v in vals]  # (k/8, n) views: packed along k
    x = torch.randn(6, k, generator=gen).to(torch.bfloat16)
    scale = [torch.rand(n, generator=gen).to(torch.bfloat16) for _ in range(2)]
    offset = [torch.rand(n, generator=gen).to(torch.bfloat16) for _ in range(2)]
    bias = [torch.rand(n, generator=gen) for _ in range(2)]
    ys = gmm([x], words, antiquant_scale=scale, antiquant_offset=offset, bias=bias, group_list=[1, 6], split_item=1)
    for e, (a, b) in enumerate(((0, 1), (1, 6))):
        expected = npuquant.npu_weight_quant_batchmatmul(x[a:b], words[e], scale[e], offset[e], bias=bias[e])
        assert_same_bits(ys[e], expected)


# ----------------------------------------------------------------- opcheck / torch.compile


def _operator_cases():
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(-128, 128, (12, 16), dtype=i8, generator=gen)
    w = torch.randint(-128, 128, (3, 16, 8), dtype=i8, generator=gen)
    scale = torch.rand(3, 8, generator=gen).to(torch.bfloat16)
    pertoken = torch.rand(12, generator=gen)
    sizes = torch.tensor([5, 0, 7])
    xf = torch.randn(4, 16, generator=gen)
    wf = torch.randn(16, 8, generator=gen)
    return [
        ([x], [w], sizes, [], [scale], [pertoken], [], [], torch.bfloat16, True),
        ([x], [w], sizes, [], [], [], [], [], torch.int32, True),
        ([xf, xf], [wf, wf], None, [], [], [], [], [], torch.float32, False),
    ]


@pytest.mark.parametrize("index", range(3))
def test_opcheck_grouped_matmul(index):
    torch.library.opcheck(torch.ops.npuquant.grouped_matmul.default, _operator_cases()[index])


def test_opcheck_grouped_matmul_s8():
    gen = torch.Generator().manual_seed(12)
    x = torch.randint(-128, 128, (12, 16), dtype=i8, generator=gen)
    w = torch.randint(-128, 128, (3, 16, 8), dtype=i8, generator=gen)
    args = ([x], [w], torch.tensor([5, 0, 7]), torch.rand(24), None, torch.rand(12), None, torch.float16, True)
    torch.library.opcheck(torch.ops.npuquant.grouped_matmul_s8.default, args)


def _moe_down(x, w, scale, pertoken, group_list):
    return gmm([x], [w], scale=[scale], per_token_scale=[pertoken], group_list=group_list, group_type=0,
               group_list_type=1, split_item=3, output_dtype=torch.bfloat16)[0]


def test_compile_fullgraph():
    gen = torch.Generator().manual_seed(13)
    x = torch.randint(-128, 128, (20, 32), dtype=i8, generator=gen)
    w = torch.randint(-128, 128, (4, 32, 16), dtype=i8, generator=gen)
    scale = torch.rand(4, 16, generator=gen).to(torch.bfloat16)
    pertoken = torch.rand(20, generator=gen)
    counts = torch.tensor([3, 0, 9, 8])
    compiled = torch.compile(_moe_down, fullgraph=True, backend="aot_eager")
    assert_same_bits(compiled(x, w, scale, pertoken, counts), _moe_down(x, w, scale, pertoken, counts))



# ----------------------------------------------------------------------------------- compat

COMPAT_SCRIPT = """
import torch
import npuquant.compat as compat
compat.install()
import torch_npu
x = torch.randint(-128, 128, (6, 8), dtype=torch.int8).npu()
w = torch.randint(-128, 128, (2, 8, 4), dtype=torch.int8).npu()
scale = torch.rand(2, 4).to(torch.bfloat16).npu()
pt = torch.rand(6).npu()
gl = torch.tensor([2, 4]).npu()
a = torch.ops.npu.npu_grouped_matmul([x], [w], scale=[scale], per_token_scale=[pt], group_list=gl, split_item=2,
                                      group_type=0, group_list_type=1, output_dtype=torch.bfloat16)
b = torch_npu.npu_grouped_matmul([x], [w], scale=[scale], per_token_scale=[pt], group_list=gl, split_item=2,
                                 group_type=0, group_list_type=1, output_dtype=torch.bfloat16)
assert isinstance(a, list) and len(a) == 1 and torch.equal(a[0], b[0]) and a[0].shape == (6, 4)
c = torch.ops.npu.npu_grouped_matmul([x], [w], group_list=gl, split_item=3, group_type=0, group_list_type=1,
                                     output_dtype=3)  # a ScalarType code: int32
assert c[0].dtype == torch.int32
try:
    torch.ops.npu.npu_grouped_matmul([x], [w], group_list=gl, split_item=3)
except RuntimeError as exc:
    assert "Requires manual passing group_type, current is None." in str(exc)
else:
    raise AssertionError
def f(x, w, scale, pt, gl):
    return torch.ops.npu.npu_grouped_matmul([x], [w], scale=[scale], per_token_scale=[pt], group_list=gl,
                                            split_item=3, group_type=0, output_dtype=torch.bfloat16)[0]
gl0 = torch.tensor([2, 6])
assert torch.equal(torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, scale, pt, gl0), f(x, w, scale, pt, gl0))
# the .List overload: group_list as a list of ints (cumulative ends), and MoE code's per-expert lists
d = torch.ops.npu.npu_grouped_matmul.List([x], [w], scale=[scale], per_token_scale=[pt], group_list=[2, 6],
                                          split_item=2, group_type=0, output_dtype=torch.bfloat16)
assert torch.equal(d[0], a[0])
xf = [torch.randn(3, 8), torch.randn(5, 8)]
wf = [torch.randn(8, 4), torch.randn(8, 6)]
e = torch.ops.npu.npu_grouped_matmul.List(xf, wf, split_item=0, group_type=0)
assert [t.shape for t in e] == [(3, 4), (5, 6)] and torch.allclose(e[1], xf[1] @ wf[1])
print("ok")
"""


def test_torch_npu_and_torch_ops_npu():
    """torch_npu.npu_grouped_matmul and torch.ops.npu.npu_grouped_matmul (its own process: install()
    changes process-wide state)."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPAT_SCRIPT)], cwd=root, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_moe_block_example_runs_unmodified():
    """examples/moe_block.py through ``npuquant run``: torch_npu-style MoE block vs float32."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "npuquant", "run", "examples/moe_block.py"], cwd=root,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "relative error vs float32" in proc.stdout and proc.stdout.strip().endswith("ok")


def test_bench_row(capsys):
    """``npuquant bench grouped_gemm``: the row exists and is measured (no timing assertions)."""
    import json

    from npuquant import bench

    assert bench.main(["grouped_gemm", "--quick", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["op"] for r in rows] == ["grouped_gemm"]
    assert rows[0]["shape"] == [16, 64, 48, 4]
    for key in ("ms", "gop_s", "kernel_ms", "eager_ms", "vs_eager"):
        assert rows[0][key] > 0, key
