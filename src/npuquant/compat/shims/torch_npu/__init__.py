"""``torch_npu`` stand-in: the quantization ops of SPEC Part I, served by npuquant.

Every op is npuquant's function of the same name.
"""

from __future__ import annotations

import torch

from npuquant import (  # noqa: F401 - re-exported under torch_npu's names
    npu_anti_quant,
    npu_convert_weight_to_int4pack,
    npu_dynamic_quant,
    npu_dynamic_quant_asymmetric,
    npu_quant_matmul,
    npu_quantize,
    npu_trans_quant_param,
)

from . import contrib, npu  # noqa: F401 - sub-modules, as in torch_npu

__version__ = f"{torch.__version__.split('+')[0]}+npuquant"

# torch_npu names served by the npuquant functions of the same name (imported above).
OPS = (
    "npu_anti_quant",
    "npu_dynamic_quant",
    "npu_dynamic_quant_asymmetric",
    "npu_quant_matmul",
    "npu_trans_quant_param",
    "npu_convert_weight_to_int4pack",
    "npu_quantize",
)

ACL_FORMAT_ND = 2


def npu_format_cast(input: torch.Tensor, acl_format: int, customize_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Identity: on the CPU every tensor keeps the plain ND layout, whatever format is asked for."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"npu_format_cast: expected a Tensor, got {type(input).__name__}")
    if isinstance(acl_format, bool) or not isinstance(acl_format, int):
        raise TypeError(f"npu_format_cast: acl_format must be an int, got {acl_format!r}")
    return input


def npu_format_cast_(input: torch.Tensor, acl_format: int) -> torch.Tensor:
    """In-place variant of :func:`npu_format_cast`: also the identity."""
    return npu_format_cast(input, acl_format)


def get_npu_format(input: torch.Tensor) -> int:
    """Always ``ACL_FORMAT_ND`` (2)."""
    return ACL_FORMAT_ND


def __getattr__(name: str):
    # Names torch_npu has but this stand-in does not: say what is emulated instead of a bare AttributeError.
    raise AttributeError(
        f"module 'torch_npu' has no attribute {name!r} (npuquant.compat emulates the quantization ops "
        f"{', '.join(OPS)}, npu_format_cast, torch_npu.npu and torch_npu.contrib.module)"
    )
