"""``npu_dynamic_quant_asymmetric`` and ``npu_dynamic_quant``: per-token dynamic quantization (SPEC §3).

Route: public functions (torch_npu's signatures, dtype codes, validation with torch_npu's
messages) -> operator ``torch.ops.npuquant.dynamic_quant`` (fake kernel; the C kernel on CPU, the
pure-torch reference elsewhere). The exact float32 formula is in ``reference.py``.
"""

from __future__ import annotations

import torch

from ... import _native
from ..._args import check, optional_tensors, tensors, to_dtype
from .. import int4 as int4_ops
from . import reference

__all__ = ["npu_dynamic_quant_asymmetric", "npu_dynamic_quant", "dynamic_quant", "quantize_weight_int8"]

X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_GROUPS = 1024
#: quant_mode values: one scale per token (row of the last axis, the default), per channel
#: (column of the last two axes: max/min over dim -2), or one for the whole tensor.
QUANT_MODES = ("pertoken", "perchannel", "pertensor")
# torch_npu's seed-era texts (SPEC §3.2): the asymmetric one really says "when int4 quantization".
_DST_TYPE_MESSAGE = {
    True: "dtype must be torch.int8 for int8 or torch.quint4x2 for int4 when int4 quantization",
    False: "dtype must be torch.int8 for int8 or torch.quint4x2 for int4",
}


def _rows(x: torch.Tensor) -> int:
    rows = 1
    for size in x.shape[:-1]:
        rows *= size
    return rows


def validate(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    group_index: torch.Tensor | None,
    dst_type: torch.dtype | None,
    asymmetric: bool,
) -> bool:
    """Every metadata rule of SPEC §3.2/§3.6, torch_npu's order and words; returns True for int4 output."""
    check(dst_type in (None, torch.int8, torch.quint4x2), f"{_DST_TYPE_MESSAGE[asymmetric]}, but got {dst_type}")
    check(x.dim() > 1, f"Input shape dim should be greater than 1, but got {x.dim()}")
    check(x.dtype in X_DTYPES, f"Input x must be float16, bfloat16 or float32, but got {x.dtype}")
    int4_out = dst_type == torch.quint4x2
    if int4_out:
        check(
            x.shape[-1] % 8 == 0,
            f"input shape last dim must be divded by 8 when int4 quantization, but it is {x.shape[-1]}",
        )
    if group_index is not None:
        check(smooth_scales is not None, "group_index is only supported together with smooth_scales")
    if smooth_scales is None:
        return int4_out
    check(
        smooth_scales.dtype == x.dtype,
        f"smooth_scales dtype must be the same as x dtype, but smooth_scales is {smooth_scales.dtype} and x is {x.dtype}",
    )
    check(smooth_scales.device == x.device, f"smooth_scales must be on x's device ({x.device})")
    if group_index is None:
        check(smooth_scales.dim() == 1, f"The shape dim of smooth_scales must be 1, but it is {smooth_scales.dim()}")
    else:
        check(group_index.dtype == torch.int32, f"group_index dtype must be int32, but got {group_index.dtype}")
        check(group_index.dim() == 1, f"group_index must be 1-D, but it has {group_index.dim()} dims")
        check(group_index.device == x.device, f"group_index must be on x's device ({x.device})")
        groups = group_index.shape[0]
        check(groups >= 1, "group_index must hold at least one value (the number of groups)")
        check(
            groups <= MAX_GROUPS,
            f"The value of groupNum must be less than or equal to {MAX_GROUPS}, but it is {groups}",
        )
        check(
            smooth_scales.dim() == 2,
            "When groupNum is more than 0, the shape dim of smooth_scales must be equal to 2, "
            f"but it is {smooth_scales.dim()}",
        )
        check(
            smooth_scales.shape[0] == groups,
            f"The value of smooth_scales first dim and group_num must be the same, "
            f"but they are {smooth_scales.shape[0]} and {groups}",
        )
    check(
        smooth_scales.shape[-1] == x.shape[-1],
        f"last dim of x and smooth_scales must be equal, but they are {x.shape[-1]} and {smooth_scales.shape[-1]}",
    )
    return int4_out


def check_group_values(group_index: torch.Tensor | None, rows: int) -> None:
    """Data rule (eager only): values non-decreasing, within [0, rows], the last equal to rows."""
    if group_index is None or isinstance(group_index, torch._subclasses.FakeTensor):
        return
    g = group_index.to(torch.int64)
    ok = bool((g[1:] >= g[:-1]).all()) and int(g[0]) >= 0 and int(g[-1]) == rows
    check(
        ok,
        f"group_index values must be non-decreasing, within [0, {rows}] and end at {rows} (the row count of x), "
        f"but got {g.tolist() if g.numel() <= 16 else g}",
    )


def output_shapes(x: torch.Tensor, int4: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(y shape, scale/offset shape) for input x."""
    lead = tuple(x.shape[:-1])
    return (*lead, x.shape[-1] // 8 if int4 else x.shape[-1]), lead


def _reference(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    group_index: torch.Tensor | None,
    asymmetric: bool,
    int4: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if smooth_scales is not None and smooth_scales.dtype != x.dtype:
        smooth_scales = smooth_scales.to(x.dtype)  # the operator's contract: smooth scales in x's dtype
    y, scale, offset = reference.dynamic_quant(x, smooth_scales, group_index, int4, asymmetric)
    return y, scale, offset if offset is not None else scale.new_empty((0,))


def _fake(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    group_index: torch.Tensor | None,
    asymmetric: bool,
    int4: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y_shape, s_shape = output_shapes(x, int4)
    y = x.new_empty(y_shape, dtype=torch.int32 if int4 else torch.int8)
    scale = x.new_empty(s_shape, dtype=torch.float32)
    return y, scale, x.new_empty(s_shape if asymmetric else (0,), dtype=torch.float32)


# (y, scale, offset); offset is empty for the symmetric op.
_dynamic_quant = _native.operator("dynamic_quant", _reference, _fake)


def dynamic_quant(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    group_index: torch.Tensor | None,
    int4_out: bool,
    asymmetric: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The operator on validated arguments: ``(y, scale, offset)``, offset None when symmetric."""
    y, scale, offset = _dynamic_quant(x, smooth_scales, group_index, asymmetric, int4_out)
    return y, scale, offset if asymmetric else None


def _check_mode(quant_mode: str, dst_type_max: float, group_index: torch.Tensor | None) -> None:
    if quant_mode not in QUANT_MODES:
        raise RuntimeError(f"quant_mode must be 'pertoken', 'perchannel' or 'pertensor', but got {quant_mode!r}")
    if dst_type_max != 0.0:
        raise RuntimeError(
            "Can't support attr dst_type_max, please check CANN version. (dst_type_max is for the float8 / "
            f"hifloat8 outputs of Ascend 950; int8 and int4 always use their full range), but got {dst_type_max}"
        )
    check(
        quant_mode == "pertoken" or group_index is None,
        f"group_index is only supported when quant_mode is pertoken, but quant_mode is {quant_mode}",
    )


def _run_perchannel(x, smooth_scales, dst_type, asymmetric):
    """quant_mode="perchannel": per-token quantization of the transpose of the last two axes.

    Smooth scales ``(x.shape[-2],)`` multiply rows; scale/offset have shape ``x.shape[:-2] + (H,)``.
    int4 results are quantized on the transpose, padded along S by repeating its last element
    (which changes no max, min or value), then repacked along H.
    """
    int4_out = validate(x, None, None, dst_type, asymmetric)
    if smooth_scales is not None:
        check(
            smooth_scales.dim() == 1 and smooth_scales.shape[0] == x.shape[-2],
            f"When quant_mode is perchannel, smooth_scales must have shape [{x.shape[-2]}] (x.shape[-2]), "
            f"but it is {list(smooth_scales.shape)}",
        )
        check(
            smooth_scales.dtype == x.dtype,
            f"smooth_scales dtype must be the same as x dtype, but smooth_scales is {smooth_scales.dtype} "
            f"and x is {x.dtype}",
        )
    xt = x.transpose(-1, -2)
    if not int4_out:
        y, scale, offset = _dynamic_quant(xt, smooth_scales, None, asymmetric, False)
        return y.transpose(-1, -2).contiguous(), scale, offset
    rows = xt.shape[-1]
    pad = -rows % 8
    if pad:
        xt = torch.cat([xt, xt[..., -1:].expand(*xt.shape[:-1], pad)], dim=-1)
        if smooth_scales is not None:
            smooth_scales = torch.cat([smooth_scales, smooth_scales[-1:].expand(pad)])
    y, scale, offset = _dynamic_quant(xt, smooth_scales, None, asymmetric, True)
    values = int4_ops.unpack_int4(y)[..., :rows].transpose(-1, -2)
    return int4_ops.pack_int4(values.contiguous()), scale, offset


def _run_pertensor(x, smooth_scales, dst_type, asymmetric):
    """quant_mode="pertensor": one scale (and offset) of shape ``(1,)`` for the whole tensor.

    Smoothing (``(H,)``) is applied first in float32, exactly as the per-token operator does it.
    """
    int4_out = validate(x, smooth_scales, None, dst_type, asymmetric)
    if smooth_scales is not None:
        x = x.to(torch.float32) * smooth_scales.to(torch.float32)
    y, scale, offset = _dynamic_quant(x.reshape(1, -1), None, None, asymmetric, int4_out)
    return y.reshape(output_shapes(x, int4_out)[0]), scale, offset


def _run(
    x: torch.Tensor,
    smooth_scales: torch.Tensor | None,
    group_index: torch.Tensor | None,
    dst_type: torch.dtype | None,
    asymmetric: bool,
    quant_mode: str = "pertoken",
    dst_type_max: float = 0.0,
) -> tuple[torch.Tensor, ...]:
    """Body of both public ops: every check, then the operator; ``(y, scale, offset)`` or ``(y, scale)``."""
    op = "npu_dynamic_quant_asymmetric" if asymmetric else "npu_dynamic_quant"
    tensors(op, x=x)
    optional_tensors(op, smooth_scales=smooth_scales, group_index=group_index)
    _check_mode(quant_mode, dst_type_max, group_index)
    if quant_mode != "pertoken":
        run = _run_perchannel if quant_mode == "perchannel" else _run_pertensor
        y, scale, offset = run(x, smooth_scales, dst_type, asymmetric)
        return (y, scale, offset) if asymmetric else (y, scale)
    int4_out = validate(x, smooth_scales, group_index, dst_type, asymmetric)
    if group_index is not None and not torch.compiler.is_compiling():
        check_group_values(group_index, _rows(x))  # data-dependent: eager only (the kernel checks it too)
    y, scale, offset = _dynamic_quant(x, smooth_scales, group_index, asymmetric, int4_out)
    return (y, scale, offset) if asymmetric else (y, scale)


def npu_dynamic_quant_asymmetric(
    x: torch.Tensor,
    *,
    smooth_scales: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    dst_type: torch.dtype | int | None = None,
    quant_mode: str = "pertoken",
    dst_type_max: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch_npu.npu_dynamic_quant_asymmetric: per-token asymmetric quantization of x's last axis.

    Per row, in float32 after optional smoothing (exact op order in ``reference.py``):
    ``scale = max((max - min) / 255, 1e-12)``, ``offset = 127 - max / scale``,
    ``y = clamp(round_half_even(xs * (1 / scale) + offset), -128, 127)``; int4: 15, 7 and [-8, 7].

    Args:
        x: float16 or bfloat16 (float32 accepted), dim > 1, any strides.
        smooth_scales: x's dtype; ``[H]``, or ``[E, H]`` with ``group_index`` (MoE, E <= 1024).
        group_index: int32 ``[E]``, non-decreasing in [0, rows], last value == rows (flattened leading
            dims); row r uses ``smooth_scales[i]`` for the first i with ``group_index[i] > r``.
        dst_type: None / ``torch.int8`` (int8 y of x's shape) or ``torch.quint4x2`` (int32 y with 8
            int4 per word, last dim of x a multiple of 8); torch_npu integer codes accepted.
        quant_mode: ``"pertoken"`` (default); ``"perchannel"``: per column of the last two axes
            (max/min over dim -2, smooth_scales ``[x.shape[-2]]`` multiplying rows, scale/offset
            of shape ``x.shape[:-2] + [x.shape[-1]]``, y as for pertoken); ``"pertensor"``: one
            scale/offset of shape ``[1]``. (torch_npu serves the last two on Ascend 950 only;
            group_index needs pertoken.)
        dst_type_max: 0.0 only (a float8 / hifloat8 output setting of Ascend 950).

    Returns:
        ``(y, scale, offset)``; scale and offset float32 of shape ``x.shape[:-1]`` (pertoken).

    Raises:
        RuntimeError: containing torch_npu's message for every rule of SPEC §3.2 / §3.6.
    """
    dst = to_dtype(dst_type, _DST_TYPE_MESSAGE[True])
    return _run(x, smooth_scales, group_index, dst, True, quant_mode, dst_type_max)  # type: ignore[return-value]


def npu_dynamic_quant(
    x: torch.Tensor,
    *,
    smooth_scales: torch.Tensor | None = None,
    group_index: torch.Tensor | None = None,
    dst_type: torch.dtype | int | None = None,
    quant_mode: str = "pertoken",
    dst_type_max: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu.npu_dynamic_quant: per-token symmetric quantization of x's last axis.

    Per row, in float32 after optional smoothing: ``scale = max|xs| / 127`` (int4: 7),
    ``y = clamp(round_half_even(xs * (1 / scale)), -128, 127)`` (int4: [-8, 7]); an all-zero row
    gives scale 0 and y 0. Arguments (``quant_mode``, ``dst_type_max`` included) and errors as
    :func:`npu_dynamic_quant_asymmetric`.

    Returns:
        ``(y, scale)``; scale float32 of shape ``x.shape[:-1]`` (pertoken).
    """
    dst = to_dtype(dst_type, _DST_TYPE_MESSAGE[False])
    return _run(x, smooth_scales, group_index, dst, False, quant_mode, dst_type_max)  # type: ignore[return-value]


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8 weight quantization: the one rule every layer uses.

    ``npu_dynamic_quant`` on the float32 rows of ``weight`` ``(n, k)``: ``scale[j] = max|W[j, :]| / 127``
    and ``q = clamp(RNE(W * (1 / scale)), -127, 127)`` in float32 (values stay within [-127, 127]:
    the largest magnitude maps to exactly 127). An all-zero row gets scale 0 and q 0, so it
    contributes exactly 0 whatever the activations (a NaN-free zero, unlike a scale of 1 with a
    zero weight only by luck of the epilogue).

    Returns:
        ``(q, scale)``: int8 ``(n, k)`` and float32 ``(n,)``.
    """
    return npu_dynamic_quant(weight.detach().to(torch.float32).contiguous())
