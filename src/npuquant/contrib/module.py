"""``LinearQuant`` and ``LinearA8W8Quant``: torch_npu.contrib.module's quantized linear layers (SPEC §6).

Both are thin wrappers over :func:`npuquant.npu_quant_matmul`: the user assigns int8 (or int4
packed in int32) weights and the quantization parameters to the module's parameters, then calls
it with an already-quantized input. Beyond torch_npu:

* ``load_state_dict`` adopts the saved tensors' dtypes and shapes (torch_npu's placeholders are
  float32 ``(out_features, ...)`` and would otherwise cast int8 weights to float);
* :meth:`LinearQuant.from_float` builds a layer from an ``nn.Linear`` (per-channel symmetric
  int8 weights).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn.parameter import Parameter

from .._args import to_dtype
from ..ops.dynamic_quant import quantize_weight_int8
from ..ops.quant_matmul import npu_quant_matmul, npu_trans_quant_param

__all__ = ["LinearQuant", "LinearA8W8Quant"]

_QUANT_PARAMS = ("weight", "scale", "offset", "pertoken_scale", "bias")


class LinearQuant(nn.Module):
    """Quantized linear layer: ``npu_quant_matmul(x1, weight.transpose(-2, -1), scale, ...)``.

    Args:
        in_features: k, the matmul's reduction size.
        out_features: n, the output features.
        bias: create a ``bias`` parameter (placeholder int32 ``(n,)``).
        offset: create an ``offset`` parameter (placeholder float32 ``(n,)``), int8 output only.
        pertoken_scale: create a ``pertoken_scale`` parameter (placeholder float32 ``(n,)``; the op
            needs ``(m,)``, so assign the real one before calling).
        device: where the placeholder parameters are created.
        dtype: accepted for torch_npu compatibility, unused (the assigned tensors set the dtypes).
        output_dtype: None/torch.int8, torch.float16, torch.bfloat16 or torch.int32.

    Parameters (``requires_grad=False``) to assign: ``weight`` int8 ``(n, k)`` or ``(batch, n, k)``
    (2–6 dims), or int32 ``(n, k/8)`` for A4W4; ``scale`` float32 / bfloat16 / int64
    (from ``npu_trans_quant_param``) ``(1,)`` or ``(n,)``; ``offset``, ``pertoken_scale`` and
    ``bias`` as :func:`npuquant.npu_quant_matmul` takes them.

    A float32 ``scale`` without ``pertoken_scale`` and an output dtype other than bfloat16/int32
    is converted with ``npu_trans_quant_param(scale, offset)`` first, as torch_npu does.
    """

    in_features: int
    out_features: int
    # A deprecated subclass sets its FutureWarning text; construction emits it at the caller.
    _deprecation: str | None = None
    weight: Tensor
    scale: Tensor
    offset: Tensor | None
    pertoken_scale: Tensor | None
    bias: Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        offset: bool = False,
        pertoken_scale: bool = False,
        device=None,
        dtype=None,
        output_dtype: torch.dtype | None = None,
    ) -> None:
        if self._deprecation is not None:
            warnings.warn(self._deprecation, FutureWarning, stacklevel=2)
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.output_dtype = output_dtype
        self.weight = Parameter(torch.empty((out_features, in_features), device=device), requires_grad=False)
        self.scale = Parameter(torch.empty(out_features, device=device), requires_grad=False)
        self._optional_param("offset", offset, torch.float32, device)
        self._optional_param("pertoken_scale", pertoken_scale, torch.float32, device)
        self._optional_param("bias", bias, torch.int32, device)

    def _optional_param(self, name: str, wanted: bool, dtype: torch.dtype, device) -> None:
        if wanted:
            setattr(
                self, name, Parameter(torch.empty(self.out_features, dtype=dtype, device=device), requires_grad=False)
            )
        else:
            self.register_parameter(name, None)

    def _check_inputs(self, x1: Tensor, weight: Tensor, scale: Tensor, offset, pertoken_scale, bias) -> None:
        """torch_npu's ValueError checks on the input and the parameters (read once by forward)."""
        x1_dtype, weight_dtype = x1.dtype, weight.dtype
        pair_ok = (x1_dtype == torch.int32 and weight_dtype == torch.int32) or (
            x1_dtype == torch.int8 and weight_dtype == torch.int8
        )
        if not pair_ok:
            raise ValueError(
                "input and weight should be both torch.int32 or both torch.int8 datatype, "
                f"but now input is {x1_dtype}, weight is {weight_dtype}."
            )

    def _output_dtype(self) -> torch.dtype | None:
        output_dtype = self.output_dtype
        if output_dtype is None or isinstance(output_dtype, torch.dtype):
            return output_dtype  # without formatting to_dtype's message for nothing
        try:
            return to_dtype(output_dtype, f"output_dtype is not a valid dtype: {output_dtype!r}")
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None

    def forward(self, x1: Tensor) -> Tensor:
        """``x1``: int8 ``(..., m, k)``, or int32 ``(m, k/8)`` for A4W4 weights."""
        # Each parameter is read once: a Module attribute lookup is a Python call (decode runs hundreds).
        weight, scale, offset = self.weight, self.scale, self.offset
        pertoken_scale, bias = self.pertoken_scale, self.bias
        self._check_inputs(x1, weight, scale, offset, pertoken_scale, bias)
        output_dtype = self._output_dtype()
        int64_scale_output = output_dtype not in (torch.bfloat16, torch.int32)  # int8 (None) or float16
        if int64_scale_output and pertoken_scale is None and scale.dtype == torch.float32:
            scale = npu_trans_quant_param(scale, offset)
        return npu_quant_matmul(
            x1,
            weight.transpose(-2, -1),
            scale,
            offset=offset,
            pertoken_scale=pertoken_scale,
            bias=bias,
            output_dtype=output_dtype,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"offset={self.offset is not None}, pertoken_scale={self.pertoken_scale is not None}, "
            f"output_dtype={self.output_dtype}"
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # The constructor's float32 (n, ...) placeholders are not the real dtypes/shapes: adopt the
        # saved tensors (int8 weights, int64 or (1,) scales, ...) instead of casting into them.
        for name in _QUANT_PARAMS:
            current = self._parameters.get(name)
            saved = state_dict.get(prefix + name)
            if current is not None and isinstance(saved, Tensor):
                self._parameters[name] = Parameter(torch.empty_like(saved, device=current.device), requires_grad=False)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        *,
        input_scale: float | Tensor | None = None,
        output_dtype: torch.dtype = torch.bfloat16,
    ) -> LinearQuant:
        """Builds a layer from a float ``nn.Linear`` with per-channel symmetric int8 weights.

        ``w_scale[j] = max|W[j, :]| / 127``, ``weight = RNE(W * (1 / w_scale))`` in [-127, 127]
        (``ops.dynamic_quant.quantize_weight_int8``, the rule ``quantize_model`` uses too; an all-zero
        row gets scale 0); the float bias is kept as float32.

        Args:
            linear: the float layer.
            input_scale: the static per-tensor scale the int8 inputs were quantized with
                (``x ≈ x_int8 * input_scale``); the layer's ``scale`` becomes ``w_scale * input_scale``.
                None: per-token mode, ``scale = w_scale`` and a ``pertoken_scale`` parameter that must
                be set to the inputs' per-row scales (e.g. the scale of ``npu_dynamic_quant``) before
                each call.
            output_dtype: torch.bfloat16 (default) or torch.float16 (per-token mode, or no bias).

        Returns:
            A :class:`LinearQuant` on the linear layer's device.
        """
        if output_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"output_dtype should be torch.bfloat16 or torch.float16, but now it is {output_dtype}.")
        has_bias = linear.bias is not None
        if input_scale is not None and has_bias and output_dtype != torch.bfloat16:
            raise ValueError(
                "a float bias without pertoken_scale needs output_dtype=torch.bfloat16 (npu_quant_matmul rule), "
                f"but output_dtype is {output_dtype}."
            )
        w = linear.weight.detach()
        q, w_scale = quantize_weight_int8(w)
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=has_bias,
            pertoken_scale=input_scale is None,
            device=w.device,
            output_dtype=output_dtype,
        )
        scale = (
            w_scale
            if input_scale is None
            else w_scale * torch.as_tensor(input_scale, dtype=torch.float32, device=w.device)
        )
        layer.weight = Parameter(q, requires_grad=False)
        layer.scale = Parameter(scale.to(torch.float32).reshape(-1), requires_grad=False)
        if has_bias:
            layer.bias = Parameter(linear.bias.detach().to(torch.float32), requires_grad=False)
        return layer


class LinearA8W8Quant(LinearQuant):
    """Deprecated A8W8-only predecessor of :class:`LinearQuant` (same constructor and parameters).

    Emits a FutureWarning on construction and validates every parameter's dtype in ``forward``
    (ValueError, torch_npu's messages); int32 output and A4W4 are not available here.
    """

    _deprecation = (
        "npuquant.contrib.module.LinearA8W8Quant is deprecated and will be removed in future version. "
        "Use npuquant.contrib.module.LinearQuant instead."
    )

    def _check_inputs(self, x1: Tensor, weight: Tensor, scale: Tensor, offset, pertoken_scale, bias) -> None:
        super()._check_inputs(x1, weight, scale, offset, pertoken_scale, bias)
        if scale.dtype not in (torch.int64, torch.float32, torch.bfloat16):
            raise ValueError(
                f"scale should be torch.int64, torch.float32 or torch.bfloat16 datatype, but now it is {scale.dtype}."
            )
        if offset is not None and offset.dtype != torch.float32:
            raise ValueError(f"offset should be torch.float32 datatype, but now it is {offset.dtype}.")
        if bias is not None and bias.dtype not in (torch.int32, torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(
                "bias should be torch.int32, torch.bfloat16, torch.float16 or torch.float32 datatype, "
                f"but now it is {bias.dtype}."
            )
        if pertoken_scale is not None and pertoken_scale.dtype != torch.float32:
            raise ValueError(f"pertoken_scale should be torch.float32 datatype, but now it is {pertoken_scale.dtype}.")
        output_dtype = self._output_dtype()
        if output_dtype is not None and output_dtype not in (torch.int8, torch.float16, torch.bfloat16):
            raise ValueError(
                f"output_dtype should be torch.int8, torch.float16 or torch.bfloat16, but now it is {output_dtype}."
            )
