"""The NPU is the CPU: ``npu`` device arguments, ``.npu()`` methods and ``torch.npu``.

A ``TorchFunctionMode`` rewrites ``device=`` arguments naming the NPU (``'npu'``, ``'npu:4'``,
``torch.device('npu', 4)``, a bare index) and the positional device of ``Tensor.to`` to the CPU
before PyTorch sees them; torch.compile traces through the mode, so compiled code behaves the same.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .shims.torch_npu import npu as npu_module

_CPU = torch.device("cpu")


def is_npu_device(device: object) -> bool:
    """Whether a device argument means the (emulated) NPU."""
    if isinstance(device, torch.device):
        return device.type == "npu"
    if isinstance(device, str):
        return device == "npu" or device.startswith("npu:")
    # A bare index means "device N of the accelerator", which scripts for Ascend take as the NPU.
    return isinstance(device, int) and not isinstance(device, bool)


class NpuToCpuMode(TorchFunctionMode):
    """Maps every NPU device argument of a torch call onto the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and is_npu_device(device):
            kwargs = dict(kwargs)
            kwargs["device"] = _CPU
        if func is torch.Tensor.to and len(args) > 1 and is_npu_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def _check_npu_target(device: object) -> None:
    if device is not None and not is_npu_device(device):
        raise ValueError(f"expected an npu device (or None), got {device!r}")


def tensor_npu(
    self: torch.Tensor,
    device: object = None,
    non_blocking: bool = False,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """``Tensor.npu()``: the tensor on the CPU (itself when it is already there)."""
    _check_npu_target(device)
    return self.to(_CPU, non_blocking=non_blocking, memory_format=memory_format)


def module_npu(self: torch.nn.Module, device: object = None) -> torch.nn.Module:
    """``Module.npu()``: the module with its parameters and buffers on the CPU."""
    _check_npu_target(device)
    return self.cpu()


def tensor_is_npu(self: torch.Tensor) -> bool:
    """``Tensor.is_npu``: True for CPU tensors, which is where the NPU lives while emulated."""
    return self.device.type == "cpu"


def owns_torch_npu_attr() -> bool:
    """Whether ``torch.npu`` is absent or npuquant's emulated device module."""
    return getattr(torch, "npu", npu_module) is npu_module


def _accelerator_is_available_wrapper(original: Callable[[], bool]) -> Callable[[], bool]:
    def is_available() -> bool:
        accelerator = torch._C._accelerator_getAccelerator()
        if accelerator is not None and accelerator.type == "npu":
            # Emulated: there is no device runtime behind torch.accelerator's C++ calls.
            return False
        return original()

    is_available.__doc__ = original.__doc__
    return is_available


def _clear_device_module_cache() -> None:
    cache_clear = getattr(torch.get_device_module, "cache_clear", None)
    if cache_clear is not None:
        cache_clear()


def activate(state: Any, patch: Callable[[object, str, object, Any], None]) -> None:
    """Registers torch.npu, the ``.npu()`` methods, the accelerator guard and the device mode."""
    renamed = torch._C._get_privateuse1_backend_name() == "npu"
    if renamed:
        # torch needs a device module for a named backend for the rest of the process (see
        # npuquant.compat's docstring), so this registration is permanent; deactivate() makes it inert.
        torch.npu = npu_module
    else:
        patch(torch, "npu", npu_module, state)
    sys.modules["torch.npu"] = npu_module
    patch(torch.accelerator, "is_available", _accelerator_is_available_wrapper(torch.accelerator.is_available), state)
    patch(torch.Tensor, "npu", tensor_npu, state)
    patch(torch.Tensor, "is_npu", property(tensor_is_npu), state)
    patch(torch.nn.Module, "npu", module_npu, state)
    npu_module._set_active(True)
    _clear_device_module_cache()
    state.mode = NpuToCpuMode()
    state.mode.__enter__()


def deactivate(state: Any) -> None:
    """Pops the device mode (wherever it sits on the stack) and makes torch.npu inert."""
    mode = state.mode
    state.mode = None
    if mode is not None:
        above = []
        while torch._C._len_torch_function_stack() > 0:
            top = torch._C._pop_torch_function_stack()
            if top is mode:
                break
            above.append(top)
        for other in reversed(above):
            torch._C._push_on_torch_function_stack(other)
    npu_module._set_active(False)
    if torch._C._get_privateuse1_backend_name() != "npu" and sys.modules.get("torch.npu") is npu_module:
        del sys.modules["torch.npu"]
    _clear_device_module_cache()
