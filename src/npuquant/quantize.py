"""Whole-model quantization: :func:`quantize_model`, and saving / loading the result (safetensors).

    model = npuquant.quantize_model(model, scheme="w8a8")          # in place; returns the model
    npuquant.save_quantized(model, "model.npuquant.safetensors")
    fresh = ...same architecture, unquantized (e.g. built from its config)...
    npuquant.load_quantized(fresh, "model.npuquant.safetensors")   # no re-quantization

Schemes (see :mod:`npuquant.nn`): ``"w8a8"`` (per-token asymmetric int8 activations, per-channel
int8 weights, exact int8 GEMM), ``"w8a8-sym"`` (symmetric activations, ``npu_quant_matmul`` with
``pertoken_scale``), ``"w4a16"`` (grouped int4 weights, float activations), ``"w4a8"`` (grouped
int4 weights, per-token symmetric int8 activations, exact int4 x int8 products per group).
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .nn.linear import SCHEMES, QuantizedLinear

__all__ = ["SCHEMES", "quantize_model", "smoothquant_scales", "save_quantized", "load_quantized"]

FORMAT = "npuquant.quantized/1"
_METADATA_KEY = "npuquant"


def _targets(model: nn.Module, skip: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    patterns = [skip] if isinstance(skip, str) else list(skip)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            found.append((name, module))
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _run_batches(model: nn.Module, batches: Iterable[Any]) -> None:
    with torch.inference_mode():
        for batch in batches:
            if isinstance(batch, dict):
                model(**batch)
            elif isinstance(batch, (tuple, list)):
                model(*batch)
            else:
                model(batch)


def smoothquant_scales(
    model: nn.Module,
    calibration_data: Iterable[Any],
    *,
    alpha: float = 0.5,
    skip: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """SmoothQuant factors ``s_j = max|x_j|^alpha / max|W_:,j|^(1-alpha)`` for every linear layer.

    Runs ``model`` on each calibration batch (a tensor, a tuple of positional arguments or a dict
    of keyword arguments) and records the largest magnitude each input channel of each
    ``nn.Linear`` sees. Channels never active get ``s = 1``.

    Returns:
        ``{module name: float32 tensor (in_features,)}``, ready for ``quantize_model(smooth_scales=...)``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    targets = _targets(model, skip)
    amax: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            seen = x.reshape(-1, x.shape[-1]).abs().amax(0).to(torch.float32)
            amax[name] = seen if name not in amax else torch.maximum(amax[name], seen)

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in targets]
    try:
        _run_batches(model, calibration_data)
    finally:
        for handle in handles:
            handle.remove()
    scales = {}
    for name, module in targets:
        if name not in amax:
            continue
        x_max = amax[name]
        w_max = module.weight.detach().abs().amax(0).to(torch.float32)
        s = x_max.pow(alpha) / w_max.clamp_min(1e-5).pow(1.0 - alpha)
        scales[name] = torch.where((x_max > 0) & torch.isfinite(s), s.clamp_min(1e-5), torch.ones_like(s))
    return scales


def quantize_model(
    model: nn.Module,
    scheme: str = "w8a8",
    *,
    skip: Iterable[str] = (),
    group_size: int = 128,
    smooth_scales: dict[str, torch.Tensor] | None = None,
    calibration_data: Iterable[Any] | None = None,
    smooth_alpha: float = 0.5,
) -> nn.Module:
    """Replaces the model's ``nn.Linear`` layers with npuquant's quantized layers, in place.

    Args:
        model: any module; every ``nn.Linear`` in it is quantized (``lm_head`` included) unless skipped.
        scheme: ``"w8a8"``, ``"w8a8-sym"``, ``"w4a16"`` or ``"w4a8"`` (int4 per-group weights, int8
            per-token activations, exact integer products).
        skip: module names or ``fnmatch`` patterns on the qualified name to leave in float,
            e.g. ``["lm_head"]`` or ``["model.layers.0.*", "*.down_proj"]``.
        group_size: input channels per int4 scale/offset group (``w4a16``, ``w4a8``); a multiple of 8
            (``w4a8``'s AVX2 kernel takes multiples of 32, others run its scalar kernel). A
            last, partial group is allowed (the packed weight is padded along K).
        smooth_scales: SmoothQuant factors per module name (see :func:`smoothquant_scales`);
            w8a8 schemes only. Layers without an entry are not smoothed.
        calibration_data: alternatively, batches to compute the factors from (a short pass).
        smooth_alpha: migration strength for ``calibration_data``.

    Returns:
        ``model`` itself, with quantized layers (its float linear weights are released unless
        shared, e.g. a tied embedding).

    Raises:
        ValueError: unknown scheme, bad group size, smoothing requested for ``w4a16`` / ``w4a8``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    layer_cls = SCHEMES[scheme]
    if calibration_data is not None:
        if smooth_scales is not None:
            raise ValueError("pass either smooth_scales or calibration_data, not both")
        if not layer_cls.supports_smoothing:
            raise ValueError(f"SmoothQuant calibration applies to the w8a8 schemes only, not {scheme}")
        smooth_scales = smoothquant_scales(model, calibration_data, alpha=smooth_alpha, skip=skip)
    if smooth_scales and not layer_cls.supports_smoothing:
        raise ValueError(f"smooth_scales apply to the w8a8 schemes only, not {scheme}")
    options: dict[str, Any] = {"group_size": group_size} if scheme in ("w4a16", "w4a8") else {}
    for name, linear in _targets(model, skip):
        extra = dict(options)
        if smooth_scales and name in smooth_scales:
            extra["smooth_scales"] = smooth_scales[name]
        _set_submodule(model, name, layer_cls.from_linear(linear, **extra))
    return model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """The model's npuquant layers by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def _layer_record(layer: QuantizedLinear) -> dict[str, Any]:
    return {
        "scheme": layer.scheme,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "bias": layer.bias is not None,
        "dtype": str(layer.dtype).removeprefix("torch."),
        "options": layer.options(),
    }


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "saving and loading quantized models needs the safetensors package: pip install 'npuquant[eval]'"
        ) from exc
    return safetensors.torch


def save_quantized(model: nn.Module, path: str, metadata: dict[str, str] | None = None) -> None:
    """Writes the whole model state (quantized layers included) to a safetensors file.

    The file's metadata records each quantized layer's scheme, shapes and options, so
    :func:`load_quantized` can rebuild the layers on an unquantized copy of the architecture.
    Tensors shared between modules (tied weights) are stored once.
    """
    layers = {name: _layer_record(layer) for name, layer in quantized_layers(model).items()}
    info = {"format": FORMAT, "layers": layers}
    meta = {**(metadata or {}), _METADATA_KEY: json.dumps(info, sort_keys=True)}
    _safetensors().save_model(model, path, metadata=meta)


def read_metadata(path: str) -> dict[str, Any]:
    """The npuquant record of a file written by :func:`save_quantized` (``format``, ``layers``)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if _METADATA_KEY not in meta:
        raise ValueError(f"{path} was not written by npuquant.save_quantized (no '{_METADATA_KEY}' metadata)")
    info = json.loads(meta[_METADATA_KEY])
    if info.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported npuquant format {info.get('format')!r} (expected {FORMAT!r})")
    return info


def load_quantized(model: nn.Module, path: str, *, strict: bool = True) -> nn.Module:
    """Loads a file from :func:`save_quantized` into ``model`` (same architecture, unquantized), in place.

    The recorded layers replace the model's ``nn.Linear`` modules of the same names (as empty
    quantized layers), then every tensor is loaded: nothing is re-quantized.

    Raises:
        ValueError: the file has no npuquant record, or a recorded layer does not match the model.
    """
    st = _safetensors()
    info = read_metadata(path)
    for name, record in info["layers"].items():
        try:
            current = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(f"{path}: quantized layer {name!r} does not exist in the model") from exc
        if not isinstance(current, (nn.Linear, QuantizedLinear)):
            raise ValueError(f"{path}: {name!r} is a {type(current).__name__}, not a linear layer")
        if (current.in_features, current.out_features) != (record["in_features"], record["out_features"]):
            raise ValueError(
                f"{path}: layer {name!r} is {record['in_features']}->{record['out_features']} in the file but "
                f"{current.in_features}->{current.out_features} in the model"
            )
        layer_cls = SCHEMES[record["scheme"]]
        dtype = getattr(torch, record["dtype"])
        device = next(iter(current.buffers() if isinstance(current, QuantizedLinear) else current.parameters())).device
        layer = layer_cls(
            record["in_features"], record["out_features"], bias=record["bias"], dtype=dtype, **record["options"]
        ).to(device)
        _set_submodule(model, name, layer)
    missing, unexpected = st.load_model(model, path, strict=strict)
    del missing, unexpected  # strict=True raises on them; strict=False is the caller's choice
    return model
