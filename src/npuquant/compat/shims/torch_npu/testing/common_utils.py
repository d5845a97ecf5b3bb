"""``torch_npu.testing.common_utils``: device, tensor and skip helpers of Ascend's op tests.

* :func:`get_npu_device` / :func:`set_npu_device`: ``"npu:<$SET_NPU_DEVICE>"`` (default ``npu:0``).
* :func:`create_common_tensor`: ``[dtype, npu_format, shape]`` -> the same uniform random values
  as a CPU tensor and an "NPU" tensor (a separate copy, as on the device; the format, if not -1,
  is recorded by ``npu_format_cast``).
* :class:`SupportedDevices`: runs a test only on the listed product lines, comparing the first 10
  characters of ``torch_npu.npu.get_device_name(0)`` (``Ascend910B4`` -> ``Ascend910B``), as
  torch_npu does; a listed name that the device name starts with also matches (``Ascend950`` for
  ``Ascend950PR``). Other devices skip with the reason. The emulated name is ``$NPUQUANT_SOC``
  (default ``Ascend910B4``).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import unittest
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .. import npu, npu_format_cast

__all__ = [
    "IS_WINDOWS",
    "PERF_TEST_ENABLE",
    "SupportedDevices",
    "SkipIfNoLapack",
    "create_common_tensor",
    "create_dtype_tensor",
    "freeze_rng_state",
    "get_npu_device",
    "is_iterable",
    "iter_indices",
    "set_npu_device",
]

IS_WINDOWS = sys.platform == "win32"
#: torch_npu's performance-baseline mode; npuquant's harness never measures, so it is only reported.
PERF_TEST_ENABLE = os.getenv("PERF_TEST_ENABLE", "").upper() in ("ON", "1", "YES", "TRUE", "Y")
_PRODUCT_PREFIX = 10  # "Ascend910B4"[:10] == "Ascend910B": the product line torch_npu compares


def get_npu_device() -> str:
    """``"npu:N"`` with N from ``$SET_NPU_DEVICE`` (default 0)."""
    index = os.environ.get("SET_NPU_DEVICE")
    return "npu:0" if index is None else f"npu:{index}"


def set_npu_device() -> str:
    """Makes :func:`get_npu_device` current (``torch.npu.set_device``) and returns it."""
    device = get_npu_device()
    npu.set_device(device)
    return device


def create_common_tensor(
    item: Sequence, minValue: float, maxValue: float, device: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``item = [numpy dtype, npu_format, shape]`` -> ``(cpu_tensor, npu_tensor)`` of equal values.

    Values are ``np.random.uniform(minValue, maxValue, shape).astype(dtype)`` (integer dtypes
    truncate toward zero). The two tensors do not share memory. ``npu_format`` -1 keeps ND;
    any other code is recorded with ``npu_format_cast``.
    """
    dtype, npu_format, shape = item[0], item[1], item[2]
    values = np.random.uniform(minValue, maxValue, shape).astype(dtype)
    cpu_input = torch.from_numpy(values)
    npu_input = torch.from_numpy(values.copy()).to(device if device is not None else get_npu_device())
    if npu_format != -1:
        npu_input = npu_format_cast(npu_input, npu_format)
    return cpu_input, npu_input


def create_dtype_tensor(
    shape: Sequence[int],
    dtype: torch.dtype,
    npu_format: int = -1,
    min_value: int = -5,
    max_value: int = 5,
    no_zero: bool = False,
    device: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(cpu_tensor, npu_tensor)`` of a torch dtype: bool, half / float uniform in
    ``[min_value, max_value)``, anything else int32 integers in ``[min_value, max_value]``;
    ``no_zero`` replaces zeros by ones. The format is recorded for float / half only."""
    if dtype == torch.bool:
        values = np.random.randint(0, 2, size=shape).astype(bool)
    elif dtype == torch.half:
        values = np.random.uniform(min_value, max_value, shape).astype(np.float16)
    elif dtype == torch.float:
        values = np.random.uniform(min_value, max_value, shape).astype(np.float32)
    else:
        values = np.random.randint(min_value, max_value + 1, size=shape).astype(np.int32)
    if no_zero:
        values = np.where(values != 0, values, np.ones_like(values))
    cpu_input = torch.from_numpy(values)
    npu_input = torch.from_numpy(values.copy()).to(device if device is not None else get_npu_device())
    if npu_format != -1 and dtype in (torch.float, torch.half):
        npu_input = npu_format_cast(npu_input, npu_format)
    return cpu_input, npu_input


def iter_indices(tensor: torch.Tensor) -> Iterable:
    """Every index of ``tensor``: ints for 1-D, tuples for more dims, nothing for a scalar."""
    if tensor.dim() == 0:
        return range(0)
    if tensor.dim() == 1:
        return range(tensor.size(0))
    return itertools.product(*(range(s) for s in tensor.size()))


def is_iterable(obj: object) -> bool:
    """Whether ``iter(obj)`` works."""
    try:
        iter(obj)
    except TypeError:
        return False
    return True


@contextlib.contextmanager
def freeze_rng_state() -> Iterator[None]:
    """Restores torch's CPU generator state after the block."""
    state = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(state)


class SupportedDevices:
    """Decorator: run the test only on the listed Ascend product lines (e.g. ``['Ascend910B']``).

    The device's line is ``torch_npu.npu.get_device_name(0)[:10]``; a test also runs when the
    device name starts with a listed entry. Otherwise it raises ``unittest.SkipTest`` naming the
    lines and the emulated device.
    """

    def __init__(self, supported_devices: list[str]) -> None:
        self.supported_devices = list(supported_devices)

    def matches(self, device_name: str) -> bool:
        """Whether a device of this name is one of the supported lines."""
        return device_name[:_PRODUCT_PREFIX] in self.supported_devices or any(
            device_name.startswith(line) for line in self.supported_devices
        )

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def supported_only(*args, **kwargs):
            name = npu.get_device_name(0)
            if not self.matches(name):
                raise unittest.SkipTest(
                    f"Only run on {self.supported_devices!r}, current device is {name[:_PRODUCT_PREFIX]} "
                    f"(npuquant.compat emulates {name}; set {npu.SOC_ENV} to emulate another SoC)"
                )
            return fn(*args, **kwargs)

        return supported_only


class SkipIfNoLapack:
    """Decorator: skip when torch was built without LAPACK."""

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def with_lapack(*args, **kwargs):
            if not torch._C.has_lapack:
                raise unittest.SkipTest("PyTorch compiled without Lapack")
            return fn(*args, **kwargs)

        return with_lapack
