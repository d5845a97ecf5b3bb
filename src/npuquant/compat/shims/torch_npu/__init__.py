"""``torch_npu`` stand-in: the quantization ops npuquant serves, formats, ``torch_npu.npu``,
``torch_npu.testing`` and ``torch_npu.contrib.module``.

Every op in :data:`OP_SCHEMAS` is npuquant's function of the same name, reachable as
``torch_npu.<op>`` and (while installed) as ``torch.ops.npu.<op>`` with torch_npu's schema.
A name torch_npu has but npuquant does not serve raises an ``AttributeError`` saying so.
"""

from __future__ import annotations

import enum

import torch

import npuquant

from . import contrib, npu  # noqa: F401 - sub-modules, as in torch_npu

__version__ = f"{torch.__version__.split('+')[0]}+npuquant"

#: The torch_npu ops npuquant serves -> their torch_npu schema (``torch.ops.npu.<op>``). Each is
#: npuquant's public function of the same name. Serving another op is one line here, once
#: ``npuquant.<op>`` exists: the schema's argument names must be the function's.
OP_SCHEMAS: dict[str, str] = {
    "npu_anti_quant": (
        "npu_anti_quant(Tensor x, Tensor scale, *, Tensor? offset=None, ScalarType? dst_dtype=None, "
        "ScalarType? src_dtype=None) -> Tensor"
    ),
    "npu_dynamic_quant": (
        "npu_dynamic_quant(Tensor x, *, Tensor? smooth_scales=None, Tensor? group_index=None, "
        'ScalarType? dst_type=None, str quant_mode="pertoken", float dst_type_max=0.0) -> (Tensor, Tensor)'
    ),
    "npu_dynamic_quant_asymmetric": (
        "npu_dynamic_quant_asymmetric(Tensor x, *, Tensor? smooth_scales=None, Tensor? group_index=None, "
        'ScalarType? dst_type=None, str quant_mode="pertoken", float dst_type_max=0.0) -> (Tensor, Tensor, Tensor)'
    ),
    "npu_quant_matmul": (
        "npu_quant_matmul(Tensor x1, Tensor x2, Tensor scale, *, Tensor? offset=None, Tensor? pertoken_scale=None, "
        "Tensor? bias=None, ScalarType? output_dtype=None, int? x1_dtype=None, int? x2_dtype=None, "
        "int? pertoken_scale_dtype=None, int? scale_dtype=None, SymInt[]? group_sizes=None) -> Tensor"
    ),
    "npu_trans_quant_param": "npu_trans_quant_param(Tensor scale, Tensor? offset=None, int round_mode=0) -> Tensor",
    "npu_convert_weight_to_int4pack": "npu_convert_weight_to_int4pack(Tensor weight, int inner_k_tiles=0) -> Tensor",
    "npu_quantize": (
        "npu_quantize(Tensor input, Tensor scales, Tensor? zero_points, ScalarType dtype, int axis=1, "
        "bool div_mode=True) -> Tensor"
    ),
    "npu_grouped_matmul": (
        "npu_grouped_matmul(Tensor[] x, Tensor[] weight, *, Tensor[]? bias=None, Tensor[]? scale=None, "
        "Tensor[]? offset=None, Tensor[]? antiquant_scale=None, Tensor[]? antiquant_offset=None, "
        "Tensor[]? per_token_scale=None, Tensor? group_list=None, Tensor[]? activation_input=None, "
        "Tensor[]? activation_quant_scale=None, Tensor[]? activation_quant_offset=None, int? split_item=0, "
        "int? group_type=None, int? group_list_type=0, int? act_type=0, int[]? tuning_config=None, "
        "ScalarType? output_dtype=None, int? x_dtype=None, int? weight_dtype=None, int? scale_dtype=None, "
        "int? per_token_scale_dtype=None) -> Tensor[]"
    ),
    "npu_weight_quant_batchmatmul": "npu_weight_quant_batchmatmul(Tensor x, Tensor weight, Tensor antiquant_scale, Tensor? antiquant_offset=None, Tensor? quant_scale=None, Tensor? quant_offset=None, Tensor? bias=None, int antiquant_group_size=0, int inner_precise=0) -> Tensor",  # noqa: E501
}

#: Further overloads of those ops (``torch.ops.npu.<op>.<overload>``), served by the same function.
#: ``npu_grouped_matmul.List`` takes ``group_list`` as a list of ints (MoE code calls it directly).
OVERLOAD_SCHEMAS: dict[str, str] = {
    "npu_grouped_matmul.List": OP_SCHEMAS["npu_grouped_matmul"]
    .replace("npu_grouped_matmul(", "npu_grouped_matmul.List(", 1)
    .replace("Tensor? group_list=None", "int[]? group_list=None", 1),
}

#: torch_npu names served by npuquant functions of the same name (the keys of :data:`OP_SCHEMAS`).
OPS: tuple[str, ...] = tuple(OP_SCHEMAS)

for _name in OPS:
    if hasattr(npuquant, _name):
        globals()[_name] = getattr(npuquant, _name)
del _name

# torch_npu's own dtype codes, as clients pass them (``x2_dtype=torch_npu.int4``). Only int4 is
# computed (8 per int32 word); the others name Ascend 950 formats that npuquant's ops reject.
int4 = 285
hifloat8 = 290
float8_e8m0fnu = 293
float4_e2m1fn_x2 = 296
float4_e1m2fn_x2 = 297

# Formats ------------------------------------------------------------------------------------


class Format(enum.IntEnum):
    """ACL storage formats (``aclFormat`` codes, as ``torch_npu.Format`` names them)."""

    UNDEFINED = -1
    NCHW = 0
    NHWC = 1
    ND = 2
    NC1HWC0 = 3
    FRACTAL_Z = 4
    NC1HWC0_C04 = 12
    HWCN = 16
    NDHWC = 27
    FRACTAL_NZ = 29
    NCDHW = 30
    NDC1HWC0 = 32
    FRACTAL_Z_3D = 33
    NC = 35
    NCL = 47
    FRACTAL_NZ_C0_16 = 50
    FRACTAL_NZ_C0_32 = 51
    FRACTAL_NZ_C0_2 = 52
    FRACTAL_NZ_C0_4 = 53
    FRACTAL_NZ_C0_8 = 54


ACL_FORMAT_ND = int(Format.ND)
_FORMAT_CODES = frozenset(int(f) for f in Format if f is not Format.UNDEFINED)
# Where a cast's format is recorded: an attribute of the tensor object (views start as ND, as
# fresh tensors do; the values and layout never change on the CPU).
_FORMAT_ATTR = "_npuquant_npu_format"


def _check_format_args(op: str, input: object, acl_format: object) -> int:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(input).__name__}")
    if isinstance(acl_format, bool) or not isinstance(acl_format, int):
        raise TypeError(f"{op}: acl_format must be an int (a torch_npu.Format code), got {acl_format!r}")
    code = int(acl_format)
    if code not in _FORMAT_CODES:
        raise RuntimeError(
            f"{op}: acl_format {code} is not an ACL format code (torch_npu.Format: "
            f"{', '.join(f'{f.name}={int(f)}' for f in Format if f is not Format.UNDEFINED)})"
        )
    return code


def npu_format_cast(
    input: torch.Tensor,
    acl_format: int,
    customize_dtype: torch.dtype | int | None = None,
    input_dtype: torch.dtype | int | None = None,
) -> torch.Tensor:
    """The tensor in ACL format ``acl_format`` (e.g. 29, FRACTAL_NZ): same values, format recorded.

    On the device this rearranges storage; on the CPU the values and layout stay as they are and
    :func:`get_npu_format` reports the format. The result is ``input`` itself when it already has
    that format, otherwise a view of it (no copy). ``customize_dtype`` / ``input_dtype`` (the
    device's storage dtype hints) are accepted and change nothing.

    Raises:
        TypeError: ``input`` is not a tensor or ``acl_format`` not an int.
        RuntimeError: ``acl_format`` is not an ACL format code.
    """
    code = _check_format_args("npu_format_cast", input, acl_format)
    if get_npu_format(input) == code:
        return input
    result = input.view_as(input)
    setattr(result, _FORMAT_ATTR, code)
    return result


def npu_format_cast_(input: torch.Tensor, acl_format: int | torch.Tensor) -> torch.Tensor:
    """In-place :func:`npu_format_cast`: records the format on ``input`` and returns it.

    ``acl_format`` may be a format code or a tensor whose format is taken (torch_npu's
    ``npu_format_cast_(self, src)`` overload).
    """
    if isinstance(acl_format, torch.Tensor):
        acl_format = get_npu_format(acl_format)
    code = _check_format_args("npu_format_cast_", input, acl_format)
    setattr(input, _FORMAT_ATTR, code)
    return input


def get_npu_format(input: torch.Tensor) -> int:
    """The ACL format last given to this tensor by :func:`npu_format_cast` (``ND`` = 2 otherwise)."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"get_npu_format: expected a Tensor, got {type(input).__name__}")
    return getattr(input, _FORMAT_ATTR, ACL_FORMAT_ND)


def __getattr__(name: str):
    # Names torch_npu has but this stand-in does not: say so instead of a bare AttributeError.
    if name.startswith("__") and name.endswith("__"):
        raise AttributeError(f"module 'torch_npu' has no attribute {name!r}")
    served = [op for op in OPS if hasattr(npuquant, op)]
    raise AttributeError(
        f"torch_npu.{name} is not provided by npuquant: npuquant.compat serves the torch_npu quantization ops "
        f"{', '.join(served)}, npu_format_cast, get_npu_format, Format, torch_npu.npu, torch_npu.testing and "
        "torch_npu.contrib.module"
    )
