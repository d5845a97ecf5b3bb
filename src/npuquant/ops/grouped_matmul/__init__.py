"""``npu_grouped_matmul``: one matmul per group (mixture-of-experts layers), float or quantized.

``y_i = x_i @ weight_i`` for every group (expert) i, with per-group bias and quantization
parameters, in torch_npu's forms (Atlas A2 / A3):

======================  ===========  ==================  =========================================
form                    x            weight              parameters -> output
======================  ===========  ==================  =========================================
float                   fp16/bf16/   same as x           bias (fp16 for fp16 x, fp32 otherwise)
                        fp32                             -> x's dtype
A8W8 per channel        int8         int8                scale int64 -> int8; bf16 -> bf16;
                                                         fp32 -> fp16; bias int32
A8W8 per token          int8         int8                + per_token_scale fp32 (single x / weight
                                                         / y): scale bf16 -> bf16, fp32 -> fp16
A8W8 int32              int8         int8                output_dtype int32: accumulator (+ bias)
A16W8 / A16W4           fp16/bf16    int8 / int32 (8     antiquant_scale / antiquant_offset (x's
(weight only)                        int4 per word)      dtype; per channel, int4 also per group)
======================  ===========  ==================  =========================================

How x, weight and y are given (``split_item`` 0/1: a list of outputs, 2/3: one output):

* several x, several weights (``group_list`` None): group i is ``x[i] @ weight[i]`` (x 2-6 dims
  for split_item 0/1, 2 dims when the outputs are concatenated);
* one 2-D x whose rows the groups share, one weight per group or one ``(E, k, n)`` weight:
  ``group_list`` says which rows — cumulative ends (``group_list_type`` 0), counts (1) or
  ``[[expert, count], ...]`` (2, A8W8 only, rows past the counts give zeros), as a tensor (int64,
  with ``group_type`` 0), or a Python list of cumulative ends (torch_npu's ``List`` overload).

Route: :func:`npu_grouped_matmul` (torch_npu's signature; op-plugin's torch-layer checks and the
aclnn rules, with their messages) -> group sizes normalised to per-group counts -> operator
``torch.ops.npuquant.grouped_matmul`` (:data:`_operator`, fake kernel for torch.compile; on CPU
:mod:`.native`, elsewhere :mod:`.reference`). Group sizes are data: they are checked in eager mode
(the native kernel checks them again); compiled code relies on the kernel.

Not served (they raise, saying so): fused activations (``act_type`` != 0), the activation_*
inputs, ``offset``, A8W4 / A4W4 (int8 / int4 x with int4 weight), the Ascend 950 storage dtypes
(``x_dtype`` ...), ``group_type`` 2 (split along k).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import _native
from ..._args import check, to_dtype
from . import native, reference

__all__ = ["npu_grouped_matmul", "validate", "Plan"]

MAX_LIST = 128
MAX_GROUP_LIST_TENSOR = 1024
MAX_INNER = 65535
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
QUANT_OUT = (torch.int8, torch.bfloat16, torch.float16, torch.int32)
DT_NAMES = {
    torch.float16: "DT_FLOAT16",
    torch.bfloat16: "DT_BF16",
    torch.float32: "DT_FLOAT",
    torch.int8: "DT_INT8",
    torch.int32: "DT_INT32",
    torch.int64: "DT_INT64",
}


def _dt(dtype: torch.dtype) -> str:
    return DT_NAMES.get(dtype, str(dtype))


class Plan(NamedTuple):
    """What validation learnt about a call."""

    form: str  # "float", "quant" or "antiquant"
    out_dtype: torch.dtype
    experts: int
    single_x: bool  # one x whose rows group_list splits
    single_out: bool  # split_item 2/3: one output
    stacked: bool  # one (E, k, n) weight; per-group parameters stacked along dim 0


def _tensor_list(op: str, name: str, value: object, required: bool = False) -> list[torch.Tensor]:
    if value is None and not required:
        return []
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{op}(): argument '{name}' must be a list of tensors, but got {type(value).__name__}")
    for t in value:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}(): argument '{name}' must hold tensors only, but holds {type(t).__name__}")
    return list(value)


def _check_counts(split_item: int, num_x: int, num_weight: int, num_group_list: int) -> None:
    """op-plugin ``check_dims``."""
    check(num_x > 0 and num_weight > 0, "Invalid inputs: neither x nor weight could be empty.")
    if split_item not in (0, 1, 2, 3):
        raise RuntimeError(f"Invalid value of split_item [{split_item}], which should only be one of 0/1/2/3.")
    if split_item in (0, 1):
        if num_group_list > 0:
            if not (num_x == 1 and num_weight == num_group_list):
                raise RuntimeError(
                    "Invalid inputs. When split_item = 0 or 1 and input group_list is not None, the following two "
                    "conditions are supposed to be satisfied: (1) length of x equals 1; (2) length of weight equals "
                    f"that of group_list. Actual lengths: x [{num_x}], weight [{num_weight}], "
                    f"group_list [{num_group_list}]."
                )
        elif num_x != num_weight:
            raise RuntimeError(
                "When split_item = 0 or 1 and input group_list is None, the num of x tensors must equal the num of "
                f"weight tensors.Actual lengths: x [{num_x}], weight [{num_weight}]."
            )


def _check_group_list_meta(group_list: object, group_type: int | None, group_list_type: int, split_item: int) -> int:
    """torch_npu's group_list / group_type rules; returns the number of groups group_list names (0: none)."""
    if isinstance(group_list, torch.Tensor):
        if group_type is None:
            raise RuntimeError("Requires manual passing group_type, current is None.")
        if group_type not in (-1, 0):
            raise RuntimeError(f"group_type currently only support -1 and 0, current value is {group_type}")
        check(group_type != -1, "groupListOptional should be nullptr when groupType is -1.")
        if group_list_type not in (0, 1, 2):
            raise RuntimeError(f"group_list_type must be 0, 1 or 2, but got {group_list_type}")
        check(group_list.dtype == torch.int64, "Invalid dtype: Only int64 is supported for groupList.")
        want_dim = 2 if group_list_type == 2 else 1
        if group_list.dim() != want_dim or (want_dim == 2 and group_list.shape[1] != 2):
            shape = "[E, 2]" if want_dim == 2 else "1-D"
            raise RuntimeError(
                f"group_list must be {shape} when group_list_type is {group_list_type}, "
                f"but has shape {tuple(group_list.shape)}"
            )
        size = group_list.shape[0]
        if size > MAX_GROUP_LIST_TENSOR:
            raise RuntimeError(
                f"When groupList type is tenosr, size of groupList {size} should be less than or equal to "
                f"{MAX_GROUP_LIST_TENSOR}."
            )
        return size
    if group_list is None and group_type is not None and group_type not in (-1, 0):
        raise RuntimeError(f"group_type currently only support -1 and 0, current value is {group_type}")
    if group_list is None:
        if group_type == -1 and split_item in (2, 3):
            raise RuntimeError("When splitItem is 2/3, groupType can not be -1.")
        return 0
    if not isinstance(group_list, (list, tuple)) or not all(isinstance(v, int) for v in group_list):
        raise TypeError(
            "npu_grouped_matmul(): argument 'group_list' must be a Tensor, a list of ints or None, "
            f"but got {type(group_list).__name__}"
        )
    if len(group_list) > MAX_LIST:
        raise RuntimeError(
            f"When groupList type is int array, size of groupList {len(group_list)} should be less than or equal "
            f"to {MAX_LIST}."
        )
    return len(group_list)


def _check_dtype_list(tensors: list[torch.Tensor], dtype: torch.dtype, what: str, required: str = "required") -> None:
    for t in tensors:
        if t.dtype != dtype:
            raise RuntimeError(f"GMM: {what} dtype does not match with {required} dtype[{_dt(dtype)}].")


def _form(x_dtype: torch.dtype, w_dtype: torch.dtype) -> str:
    if x_dtype in FLOAT_DTYPES and w_dtype == x_dtype:
        return "float"
    if x_dtype == torch.int8 and w_dtype == torch.int8:
        return "quant"
    if x_dtype in (torch.float16, torch.bfloat16) and w_dtype in (torch.int8, torch.int32):
        return "antiquant"
    if x_dtype in (torch.int8, torch.int32) and w_dtype == torch.int32:
        raise RuntimeError(
            "x int8 / int4 with an int4 weight (A8W4 / A4W4 grouped matmul) is not supported by npuquant"
        )
    raise RuntimeError(f"npu_grouped_matmul does not support x of dtype {x_dtype} with a weight of dtype {w_dtype}")


def _check_param_list(
    params: list[torch.Tensor], name: str, weight: list[torch.Tensor], stacked: bool, experts: int, per_group_ok: bool
) -> None:
    """aclnn ``CheckOptionalTensorList``: one tensor per weight tensor, shaped like the weight's n
    (``(n,)`` each, or ``(E, n)`` for one 3-D weight; int4 weight-only also ``(G, n)`` / ``(E, G, n)``)."""
    if len(params) != len(weight):
        raise RuntimeError(f"{name} size[{len(params)}] must be equal with weight size[{len(weight)}].")
    want = 3 if stacked else 2
    for i, p in enumerate(params):
        w = weight[0] if stacked else weight[i]
        k, n = reference.logical_kn(w)
        dims = p.dim()
        if per_group_ok and dims == want:
            groups = p.shape[-2]
            if not (groups > 0 and k % groups == 0):
                raise RuntimeError(
                    f"perGroupNum must be larger than 0, and can evenly divided by K[{k}] in A16W4-pergroup case, "
                    f"but now perGroupNum is {groups}."
                )
        elif dims != want - 1:
            suffix = " in A16W4-perchannel case" if per_group_ok else ""
            raise RuntimeError(f"{name} Dim must be {want - 1}{suffix}, but now is {dims}.")
        if stacked and p.shape[0] != experts:
            raise RuntimeError(
                f"{name} batch size[{p.shape[0]}] should be euqal with groupList length[{experts}]."
            )
        if p.shape[-1] != n:
            where = "" if stacked else f"[{i}]"
            raise RuntimeError(
                f"NDim[{p.shape[-1]}] of {name}{where} should be equal with NDim[{n}] of weight{where}."
            )


def _check_shapes(x: list[torch.Tensor], weight: list[torch.Tensor], plan: Plan) -> None:
    stacked = plan.stacked
    if stacked:
        check(weight[0].dim() == 3, "weight must be 3-D (E, k, n)")
    else:
        for i, w in enumerate(weight):
            if w.dim() != 2:
                raise RuntimeError(f"weight[{i}] dimNum is {w.dim()} , but only support 2 when weight separated.")
    kns = [reference.logical_kn(weight[0][0] if stacked else w) for w in weight]
    if stacked:
        kns = kns * plan.experts
    for i, w in enumerate(weight):
        if w.shape[-1] > MAX_INNER:
            raise RuntimeError(
                f"Dim {w.dim() - 1} value of weight[{i}] should less or equal to 65535, but now is {w.shape[-1]}."
            )
    transposed = {reference.wqbmm.is_transposed(w) for w in weight}
    check(len(transposed) == 1, "The transpose state must be the same for each tensor in weight.")
    for i, t in enumerate(x):
        if plan.single_x or plan.single_out:
            if t.dim() != 2:
                raise RuntimeError(f"x[{i}] dim num should be 2 in this case, but now is {t.dim()}.")
        elif not 2 <= t.dim() <= 6:
            raise RuntimeError(f"x[{i}] dimNum is {t.dim()} , but only support 2-6.")
        if t.shape[-1] > MAX_INNER:
            raise RuntimeError(
                f"Dim {t.dim() - 1} value of x[{i}] should less or equal to 65535, but now is {t.shape[-1]}."
            )
    dims = {t.dim() for t in x}
    check(len(dims) == 1, "x tensors must all have the same number of dims")
    for e, (k, n) in enumerate(kns):
        xk = x[0].shape[-1] if plan.single_x else x[e].shape[-1]
        xi = 0 if plan.single_x else e
        if xk != k:
            raise RuntimeError(
                f"Dim {x[xi].dim() - 1} value of x[{xi}] should be equal with dim 0 value of weight[{e}], "
                f"but now is {xk} and {k} respectively."
            )
        if k < 1 or n < 1:
            raise RuntimeError(f"npu_grouped_matmul needs k >= 1 and n >= 1 in every group, but group {e} has k {k}, n {n}")
        if plan.single_out and n != kns[0][1]:
            raise RuntimeError(f"Dim 1 value of weight[{e}] {n} should be equal with dim 1 value of weight[0] {kns[0][1]}.")


def _check_quant(scale, offset, per_token_scale, antiquant_scale, antiquant_offset, bias, weight, x, plan) -> None:
    out = plan.out_dtype
    if out not in QUANT_OUT:
        raise RuntimeError(
            f"Expect yDtype is int8, int32, float16 or bfloat16 in quant case, but now y[0] dtype is {_dt(out)}"
        )
    if bias:
        _check_dtype_list(bias, torch.int32, "bias")
        _check_param_list(bias, "bias", weight, plan.stacked, plan.experts, False)
    if out == torch.int32:
        return  # the accumulator (+ bias): scale and per-token scale are not read
    check(offset is None or not offset, "GMM: offset must be nullptr in quant, but now is not nullptr.")
    check(bool(scale), "GMM: scale must not be nullptr in quant, but now is nullptr.")
    _check_param_list(scale, "scale", weight, plan.stacked, plan.experts, False)
    pertoken = bool(per_token_scale)
    for i, s in enumerate(scale):
        if pertoken:
            ok = (s.dtype, out) in ((torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16))
            if not ok:
                raise RuntimeError(
                    "per-token quant case only supports scale data type bfloat16 with output data type bfloat16,"
                    "or scale with data type float32 when output is float16, "
                    f"but now scale[{i}] has data type {_dt(s.dtype)} and output has data type {_dt(out)}!"
                )
        else:
            ok = (s.dtype, out) in ((torch.int64, torch.int8), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16))
            if not ok:
                raise RuntimeError(
                    "per-channel quant case only supports scale with data type int64/uint64 when output is int8, "
                    "or data type bfloat16 when output is bfloat16, or data type float32 when output is float16, "
                    f"but scale[{i}] has data type {_dt(s.dtype)} and output has data type {_dt(out)}!"
                )
    if pertoken:
        for i, p in enumerate(per_token_scale):
            if p.dtype != torch.float32:
                raise RuntimeError(
                    "per-token quant case only support perTokenScale with data type float32, "
                    f"but perTokenScale[{i}] has data type {_dt(p.dtype)}!"
                )
        y_size = 1 if plan.single_out else plan.experts
        if not (len(x) == 1 and len(weight) == 1 and y_size == 1):
            raise RuntimeError(
                "per-token quant case is only supported when x, weight and y are all single tensor, but now x size "
                f"is {len(x)}, weight size is {len(weight)}, y size is {y_size}"
            )
        if len(per_token_scale) != 1:
            raise RuntimeError(
                f"perTokenScaleOptional size[{len(per_token_scale)}] must be 1 and equal with x size[{len(x)}]."
            )
        p = per_token_scale[0]
        if p.dim() != 1:
            raise RuntimeError(
                f"perTokenScaleOptional dim num must be 1 when x is single tensor, but now is {p.dim()}."
            )
        check(x[0].dim() == 2, f"x[0] dim num should be 2 in this case, but now is {x[0].dim()}.")
        if p.shape[0] != x[0].shape[0]:
            raise RuntimeError(
                f"MDim[{p.shape[0]}] of perTokenScaleOptional should be equal with MDim[{x[0].shape[0]}] of x."
            )
    check(not antiquant_scale and not antiquant_offset, "Detected quant, but antiquant inputs is not empty!")


def _check_antiquant(x, weight, bias, antiquant_scale, antiquant_offset, plan) -> None:
    x_dtype = x[0].dtype
    if plan.out_dtype != x_dtype:
        raise RuntimeError(f"GMM: y dtype does not match with required dtype[{_dt(x_dtype)}].")
    if bias:
        _check_dtype_list(bias, torch.float32 if x_dtype == torch.bfloat16 else torch.float16, "bias")
        _check_param_list(bias, "bias", weight, plan.stacked, plan.experts, False)
    check(bool(antiquant_scale), "GMM: antiquantScale must not be nullptr in antiquant, but now is nullptr.")
    check(bool(antiquant_offset), "GMM: antiquantOffset must not be nullptr in antiquant, but now is nullptr.")
    int4 = weight[0].dtype == torch.int32
    _check_param_list(antiquant_scale, "antiquantScale", weight, plan.stacked, plan.experts, int4)
    _check_param_list(antiquant_offset, "antiquantOffset", weight, plan.stacked, plan.experts, int4)
    for i, (s, o) in enumerate(zip(antiquant_scale, antiquant_offset)):
        if s.shape != o.shape:
            raise RuntimeError(
                f"antiquantOffset[{i}]'s shape {tuple(o.shape)} is not equal with antiquantScale[{i}]'s "
                f"{tuple(s.shape)}"
            )
    _check_dtype_list(antiquant_scale, x_dtype, "antiquantScale", "x")
    _check_dtype_list(antiquant_offset, x_dtype, "antiquantOffset", "x")


def validate(
    x: list[torch.Tensor],
    weight: list[torch.Tensor],
    bias: list[torch.Tensor],
    scale: list[torch.Tensor],
    offset: list[torch.Tensor],
    antiquant_scale: list[torch.Tensor],
    antiquant_offset: list[torch.Tensor],
    per_token_scale: list[torch.Tensor],
    group_list: torch.Tensor | list[int] | None,
    split_item: int,
    group_type: int | None,
    group_list_type: int,
    output_dtype: torch.dtype | None,
) -> Plan:
    """Every metadata rule (dtypes, shapes, list lengths; not group_list's values), torch_npu's messages."""
    num_group_list = _check_group_list_meta(group_list, group_type, group_list_type, split_item)
    stacked = len(weight) == 1 and weight[0].dim() == 3
    experts = reference.experts_of(weight) if weight else 0
    _check_counts(split_item, len(x), experts, num_group_list)
    if num_group_list and experts > 1 and num_group_list != experts:
        raise RuntimeError(
            f"When groupList is not null, size of groupList(tensor) {num_group_list} should be equal to groupNum "
            f"{experts}."
        )
    single_out = split_item in (2, 3)
    single_x = len(x) == 1 and (num_group_list > 0 or (single_out and experts > 1))
    if single_x and num_group_list == 0:
        raise RuntimeError("groupListOptional(tensor) is required in this case, but get nullptr.")
    if not single_x and len(x) != experts:
        raise RuntimeError(f"x size[{len(x)}] must be 1 or equal with the group number[{experts}].")
    x_dtype, w_dtype = x[0].dtype, weight[0].dtype
    form = _form(x_dtype, w_dtype)
    _check_dtype_list(x, x_dtype, "x")
    _check_dtype_list(weight, w_dtype, "weight")
    if isinstance(group_list, torch.Tensor) and group_list_type == 2 and form != "quant":
        raise RuntimeError("group_list_type 2 is only supported when x and weight are int8 and group_type is 0")
    out = output_dtype if output_dtype is not None else (torch.int8 if form == "quant" else x_dtype)
    plan = Plan(form, out, experts, single_x, single_out, stacked)
    _check_shapes(x, weight, plan)
    if form == "quant":
        _check_quant(scale, offset, per_token_scale, antiquant_scale, antiquant_offset, bias, weight, x, plan)
    elif form == "antiquant":
        check(not scale and not offset and not per_token_scale, "Detected antiquant, but quant inputs is not empty!")
        _check_antiquant(x, weight, bias, antiquant_scale, antiquant_offset, plan)
    else:
        if out != x_dtype:
            raise RuntimeError(f"GMM: y dtype does not match with required dtype[{_dt(x_dtype)}].")
        if bias:
            _check_dtype_list(bias, torch.float32 if x_dtype == torch.bfloat16 else x_dtype, "bias")
            _check_param_list(bias, "bias", weight, stacked, experts, False)
        check(not scale and not offset and not per_token_scale, "Detected nonquant, but quant inputs is not empty!")
        check(not antiquant_scale and not antiquant_offset, "Detected nonquant, but antiquant inputs is not empty!")
    device = x[0].device
    for name, ts in (("x", x), ("weight", weight), ("bias", bias), ("scale", scale), ("per_token_scale", per_token_scale),
                     ("antiquant_scale", antiquant_scale), ("antiquant_offset", antiquant_offset)):
        for t in ts:
            if t.device != device:
                raise RuntimeError(f"{name} must be on the same device as x ({device}), but is on {t.device}")
    if isinstance(group_list, torch.Tensor) and group_list.device != device:
        raise RuntimeError(f"group_list must be on the same device as x ({device}), but is on {group_list.device}")
    return plan


def _check_group_values(
    group_list: torch.Tensor | list[int], group_list_type: int, x: list[torch.Tensor], plan: Plan
) -> None:
    """The values torch_npu documents for group_list (eager only: they are data)."""
    values = group_list.tolist() if isinstance(group_list, torch.Tensor) else list(group_list)
    rows = x[0].shape[0]
    if group_list_type == 2:
        sizes = [s for _, s in values]
        check(all(s >= 0 for s in sizes), "group_list's group sizes (second column) must be non-negative")
        idx = [g for g, s in values if s > 0]
        check(all(0 <= g < plan.experts for g, _ in values), f"group_list's group indices must be in [0, {plan.experts})")
        check(idx == sorted(set(idx)), "group_list's non-empty groups must come first, in increasing group index")
        if sum(sizes) > rows:
            raise RuntimeError(f"The sum of group_list's second column ({sum(sizes)}) must not exceed x shape[0] ({rows}).")
        return
    if group_list_type == 1:
        for i, v in enumerate(values):
            if v < 0:
                raise RuntimeError(f"group_list[{i}] should be larger than or equal to 0, but now is {v}.")
        ends = [sum(values[: i + 1]) for i in range(len(values))]
    else:
        if values[0] < 0:
            raise RuntimeError(f"group_list[0] should be larger than or equal to 0, but now is {values[0]}.")
        for i in range(1, len(values)):
            if values[i] - values[i - 1] < 0:
                raise RuntimeError(
                    f"group_list[{i}] - group_list[{i - 1}] should be larger than or equal to 0, "
                    f"but now is {values[i] - values[i - 1]}."
                )
        ends = values
    if plan.single_x:
        if ends[-1] != rows:
            what = "sum" if group_list_type == 1 else "last value"
            raise RuntimeError(
                f"When splited axis is M, the {what} of group list({ends[-1]}) must equal with x shape[0] ({rows})."
            )
        return
    previous = 0
    for i, (t, end) in enumerate(zip(x, ends)):
        name = "groupListOptional[0]" if i == 0 else f"groupListOptional[{i}] - groupListOptional[{i - 1}]"
        if t.shape[0] != end - previous:
            raise RuntimeError(f"x[{i}] dim 0 value {t.shape[0]} should be equal to {name} {end - previous}.")
        previous = end


def _group_sizes(group_list: torch.Tensor | list[int], group_list_type: int, plan: Plan, device) -> torch.Tensor:
    """group_list in any of its forms -> int64 counts per group (vectorised; no host sync)."""
    if not isinstance(group_list, torch.Tensor):
        ends = torch.tensor(list(group_list), dtype=torch.int64, device=device)
        return torch.diff(ends, prepend=ends.new_zeros(1))
    if group_list_type == 1:
        return group_list
    if group_list_type == 2:
        counts = group_list.new_zeros(plan.experts)
        return counts.scatter_add(0, group_list[:, 0], group_list[:, 1])
    return torch.diff(group_list, prepend=group_list.new_zeros(1))


def _check_unsupported(act_type, activation_input, activation_quant_scale, activation_quant_offset, **storage) -> None:
    if act_type not in (0, None):
        raise RuntimeError(f"act_type {act_type} (fused activation) is not supported by npuquant; only 0 (none)")
    for name, value in (
        ("activation_input", activation_input),
        ("activation_quant_scale", activation_quant_scale),
        ("activation_quant_offset", activation_quant_offset),
    ):
        if value is not None:
            raise RuntimeError(f"{name} is a reserved argument and must be None")
    for name, value in storage.items():
        if value is not None:
            raise RuntimeError(f"{name} (an Ascend 950 storage dtype) is not supported by npuquant; pass None")


@torch.library.custom_op("npuquant::grouped_matmul", mutates_args=())
def _operator(
    x: list[torch.Tensor],
    weight: list[torch.Tensor],
    group_sizes: torch.Tensor | None,
    bias: list[torch.Tensor],
    scale: list[torch.Tensor],
    per_token_scale: list[torch.Tensor],
    antiquant_scale: list[torch.Tensor],
    antiquant_offset: list[torch.Tensor],
    out_dtype: torch.dtype,
    single_out: bool,
) -> list[torch.Tensor]:
    """Every device but the CPU: the pure-torch golden (normalised arguments: see :mod:`.reference`)."""
    return reference.grouped_matmul(
        x, weight, group_sizes, bias, scale, per_token_scale, antiquant_scale, antiquant_offset, out_dtype, single_out
    )


@_operator.register_kernel("cpu")
def _cpu(x, weight, group_sizes, bias, scale, per_token_scale, antiquant_scale, antiquant_offset, out_dtype,
         single_out):  # the operator's signature
    impl = reference if _native.reference_forced() else native
    return impl.grouped_matmul(
        x, weight, group_sizes, bias, scale, per_token_scale, antiquant_scale, antiquant_offset, out_dtype, single_out
    )


@_operator.register_fake
def _fake(x, weight, group_sizes, bias, scale, per_token_scale, antiquant_scale, antiquant_offset, out_dtype,
          single_out):  # the operator's signature
    experts = reference.experts_of(weight)
    stacked = len(weight) == 1 and weight[0].dim() == 3
    ns = [reference.logical_kn(weight[0][0] if stacked else weight[e])[1] for e in range(experts)]
    if single_out:
        rows = x[0].shape[0] if group_sizes is not None else sum(t.shape[0] for t in x)
        return [x[0].new_empty((rows, ns[0]), dtype=out_dtype)]
    if group_sizes is None:
        return [t.new_empty((*t.shape[:-1], n), dtype=out_dtype) for t, n in zip(x, ns)]
    ctx = torch.library.get_ctx()
    return [x[0].new_empty((ctx.new_dynamic_size(), n), dtype=out_dtype) for n in ns]


def npu_grouped_matmul(
    x: list[torch.Tensor],
    weight: list[torch.Tensor],
    *,
    bias: list[torch.Tensor] | None = None,
    scale: list[torch.Tensor] | None = None,
    offset: list[torch.Tensor] | None = None,
    antiquant_scale: list[torch.Tensor] | None = None,
    antiquant_offset: list[torch.Tensor] | None = None,
    per_token_scale: list[torch.Tensor] | None = None,
    group_list: torch.Tensor | list[int] | None = None,
    activation_input: list[torch.Tensor] | None = None,
    activation_quant_scale: list[torch.Tensor] | None = None,
    activation_quant_offset: list[torch.Tensor] | None = None,
    split_item: int = 0,
    group_type: int | None = None,
    group_list_type: int = 0,
    act_type: int = 0,
    output_dtype: torch.dtype | int | None = None,
    tuning_config: list[int] | None = None,
    x_dtype: int | None = None,
    weight_dtype: int | None = None,
    scale_dtype: int | None = None,
    per_token_scale_dtype: int | None = None,
) -> list[torch.Tensor]:
    """torch_npu.npu_grouped_matmul: ``y_i = x_i @ weight_i`` per group, float, A8W8 or weight-only.

    Per group i (numerics of the op each form reuses; see :mod:`.reference`):

    * float: ``cast(float32(x_i) @ float32(w_i) + float32(bias_i))``;
    * A8W8: ``npu_quant_matmul(x_i, w_i, scale_i, pertoken_scale=rows_i(per_token_scale[0]),
      bias=bias_i, output_dtype=output_dtype)`` (int32 output: the accumulator plus bias);
    * weight-only: ``npu_weight_quant_batchmatmul(x_i, w_i, antiquant_scale_i, antiquant_offset_i,
      bias=bias_i, antiquant_group_size=k / G)`` for a ``(G, n)`` int4 scale, else per channel.

    Args:
        x: list of one 2-D tensor whose rows the groups share (with ``group_list``), or of one
            tensor per group (2-6 dims for split_item 0/1, 2 dims for 2/3). int8, float16,
            bfloat16 or float32.
        weight: list of one ``(k_i, n_i)`` tensor per group, or of one ``(E, k, n)`` tensor. int8,
            x's float dtype, or int32 holding 8 int4 along n (or along k: the transposed view of
            ``(.., n, k/8)`` words). Transposed views (``w.transpose(-1, -2)``) are fine.
        bias: per group ``(n_i,)`` (``(E, n)`` with one 3-D weight): float16 for float16 x, float32
            for bfloat16 / float32 x, int32 for int8 x.
        scale: A8W8: per group ``(n_i,)`` / ``(E, n)``: int64 (``npu_trans_quant_param``) with int8
            output, bfloat16 with bfloat16 output, float32 with float16 output. Not read for int32.
        offset: must be None (as on the device).
        antiquant_scale, antiquant_offset: weight-only: x's dtype, per group ``(n_i,)`` / ``(E, n)``
            per channel, int4 also ``(G_i, n_i)`` / ``(E, G, n)`` per group (G divides k).
        per_token_scale: A8W8 with one x, one weight and one output: ``[(m,)]`` float32.
        group_list: int64 tensor (needs ``group_type=0``): cumulative row ends
            (``group_list_type`` 0), row counts (1) or ``[[group, count], ...]`` (2, A8W8 only);
            or a Python list of cumulative row ends. Values must fit x (checked in eager mode).
        activation_input, activation_quant_scale, activation_quant_offset: must be None.
        split_item: 0/1: one output per group; 2/3: one output, the groups' rows back to back.
        group_type: -1 (no grouping; group_list None) or 0 (group along m); required with a
            tensor group_list.
        group_list_type: see group_list.
        act_type: 0 only (fused activations are not served).
        output_dtype: None (x's dtype; int8 for int8 x), or the dtype the form allows (above);
            torch.dtype or ScalarType code.
        tuning_config: accepted and ignored (a device tiling hint).
        x_dtype, weight_dtype, scale_dtype, per_token_scale_dtype: Ascend 950 storage dtypes: None.

    Returns:
        List of tensors: one per group (split_item 0/1; ``(*x_i.shape[:-1], n_i)`` or
        ``(m_i, n_i)``), or one ``(rows, n)`` tensor (split_item 2/3).

    Raises:
        RuntimeError: torch_npu's message for its argument rules (op-plugin's torch layer and the
            aclnn checks), npuquant's where the device has none, or for a form npuquant does not serve.
        TypeError: x / weight not lists of tensors.
    """
    op = "npu_grouped_matmul"
    x = _tensor_list(op, "x", x, required=True)
    weight = _tensor_list(op, "weight", weight, required=True)
    lists = {
        name: _tensor_list(op, name, value)
        for name, value in (
            ("bias", bias), ("scale", scale), ("offset", offset), ("antiquant_scale", antiquant_scale),
            ("antiquant_offset", antiquant_offset), ("per_token_scale", per_token_scale),
        )
    }
    _check_unsupported(
        act_type, activation_input, activation_quant_scale, activation_quant_offset, x_dtype=x_dtype,
        weight_dtype=weight_dtype, scale_dtype=scale_dtype, per_token_scale_dtype=per_token_scale_dtype,
    )
    out = output_dtype
    if not isinstance(out, torch.dtype) and out is not None:
        out = to_dtype(output_dtype, f"Not supportted output dtype is {output_dtype}")
    split_item = 0 if split_item is None else int(split_item)
    group_list_type = 0 if group_list_type is None else int(group_list_type)
    plan = validate(
        x, weight, lists["bias"], lists["scale"], lists["offset"], lists["antiquant_scale"],
        lists["antiquant_offset"], lists["per_token_scale"], group_list, split_item, group_type, group_list_type, out,
    )
    sizes = None
    if group_list is not None:
        if not torch.compiler.is_compiling():
            _check_group_values(group_list, group_list_type, x, plan)
        if plan.single_x:
            sizes = _group_sizes(group_list, group_list_type, plan, x[0].device)
    scale_list, pertoken = lists["scale"], lists["per_token_scale"]
    if plan.out_dtype == torch.int32:  # neither is read
        scale_list, pertoken = [], []
    return _operator(
        x, weight, sizes, lists["bias"], scale_list, pertoken, lists["antiquant_scale"], lists["antiquant_offset"],
        plan.out_dtype, plan.single_out,
    )
