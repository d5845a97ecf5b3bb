"""``torch_npu.npu`` (also ``torch.npu`` while installed): device helpers for an NPU that is the CPU.

Everything runs synchronously on the CPU, so synchronisation, streams and events are trivial;
seeding the "NPU" seeds the CPU generator, which is where ``device='npu'`` random tensors come from.
Any device index is accepted; ``device_count()`` is 1 while installed and 0 afterwards.

``get_device_name()`` reports an emulated Ascend SoC name (default ``Ascend910B4``, an Atlas A2
part; ``NPUQUANT_SOC`` or ``npuquant.compat.install(soc=...)`` choose another), so code and tests
that branch on the product line (``torch_npu.testing.common_utils.SupportedDevices``) take the
branch of that line. It changes no numerics: every op computes the same on any emulated SoC.
"""

from __future__ import annotations

import contextlib
import os
import time
import types
from collections.abc import Iterator

import torch

#: The SoC name reported while no other is chosen: an Atlas A2 (Ascend 910B) part.
DEFAULT_SOC = "Ascend910B4"
#: Environment variable naming the emulated SoC (``install(soc=...)`` takes precedence).
SOC_ENV = "NPUQUANT_SOC"

_active = False
_soc = DEFAULT_SOC
_current_index = 0
_jit_compile = True

# Settings scripts commonly assign; they have no effect on the CPU.
config = types.SimpleNamespace(allow_internal_format=False)
matmul = types.SimpleNamespace(allow_hf32=False)
conv = types.SimpleNamespace(allow_hf32=True)


def _set_active(active: bool) -> None:
    global _active
    _active = active


def resolve_soc(soc: str | None = None) -> str:
    """The SoC name to emulate: ``soc`` if given, else ``$NPUQUANT_SOC``, else :data:`DEFAULT_SOC`.

    Raises:
        ValueError: the name is not an Ascend SoC name (``Ascend...``, e.g. ``Ascend910B4``,
            ``Ascend310P3``, ``Ascend910_9392``, ``Ascend950PR``).
    """
    source = "install(soc=...)"
    if soc is None:
        soc, source = os.environ.get(SOC_ENV) or DEFAULT_SOC, SOC_ENV
    if not isinstance(soc, str) or not soc.startswith("Ascend") or len(soc) <= len("Ascend") or not soc.isprintable():
        raise ValueError(
            f"npuquant.compat: {source} must name an Ascend SoC such as {DEFAULT_SOC!r}, Ascend310P3 or "
            f"Ascend950PR, got {soc!r}"
        )
    return soc


def _set_soc(soc: str) -> None:
    global _soc
    _soc = soc


def soc_name() -> str:
    """The emulated SoC name (what :func:`get_device_name` reports)."""
    return _soc


def _index(device: object, what: str) -> int:
    """The device index an ``npu`` device argument names (the current one when it names none)."""
    if device is None:
        return _current_index
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind == "npu" and (index == "" or index.isdigit()):
            return int(index) if index else _current_index
        raise ValueError(f"torch_npu.npu.{what}: expected an npu device, got {device!r}")
    if isinstance(device, torch.device):
        if device.type != "npu":
            raise ValueError(f"torch_npu.npu.{what}: expected an npu device, got {device}")
        return _current_index if device.index is None else device.index
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return device
    raise ValueError(f"torch_npu.npu.{what}: expected an npu device or a non-negative index, got {device!r}")


def is_available() -> bool:
    """True while npuquant.compat is installed: the emulated NPU (the CPU) is there."""
    return _active


def device_count() -> int:
    """1 while installed (the CPU), else 0."""
    return 1 if _active else 0


def is_initialized() -> bool:
    return _active


def init() -> None:
    """Nothing to initialise on the CPU."""


def set_device(device: object) -> None:
    """Records the current device index (every index is the CPU)."""
    global _current_index
    _current_index = _index(device, "set_device")


def current_device() -> int:
    return _current_index


def synchronize(device: object = None) -> None:
    """CPU work is synchronous: returns at once."""
    _index(device, "synchronize")


def set_compile_mode(jit_compile: bool = False) -> None:
    """Recorded only: there is no operator compilation on the CPU."""
    global _jit_compile
    _jit_compile = bool(jit_compile)


def is_jit_compile_false() -> bool:
    return not _jit_compile


def set_option(option: dict) -> None:
    """Accepts torch_npu's option dict; options have no effect on the CPU."""
    if not isinstance(option, dict):
        raise TypeError(f"torch_npu.npu.set_option: expected a dict, got {type(option).__name__}")


def get_device_name(device: object = None) -> str:
    """The emulated SoC name (default ``Ascend910B4``; see the module docstring)."""
    _index(device, "get_device_name")
    return _soc


def get_device_properties(device: object = None) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=get_device_name(device), total_memory=0, multi_processor_count=1)


def get_amp_supported_dtype() -> list[torch.dtype]:
    return [torch.float16, torch.bfloat16]


def is_bf16_supported() -> bool:
    return True


def empty_cache() -> None:
    """No device cache to empty."""


def memory_allocated(device: object = None) -> int:
    return 0


def max_memory_allocated(device: object = None) -> int:
    return 0


def memory_reserved(device: object = None) -> int:
    return 0


def max_memory_reserved(device: object = None) -> int:
    return 0


def reset_peak_memory_stats(device: object = None) -> None:
    """No device memory statistics on the CPU."""


def reset_max_memory_allocated(device: object = None) -> None:
    """No device memory statistics on the CPU."""


def manual_seed(seed: int) -> None:
    """Seeds the CPU generator, which serves ``device='npu'`` random tensors."""
    torch.default_generator.manual_seed(int(seed))


def manual_seed_all(seed: int) -> None:
    # Also called by torch.manual_seed (torch seeds every registered backend); same seed, same state.
    torch.default_generator.manual_seed(int(seed))


def seed() -> None:
    torch.seed()


def seed_all() -> None:
    torch.seed()


def initial_seed() -> int:
    return torch.initial_seed()


def get_rng_state(device: object = "npu") -> torch.Tensor:
    return torch.get_rng_state()


def set_rng_state(new_state: torch.Tensor, device: object = "npu") -> None:
    torch.set_rng_state(new_state)


def _is_in_bad_fork() -> bool:
    return False


class Event:
    """``torch_npu.npu.Event``: records host time (work is synchronous)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False) -> None:
        self.enable_timing = enable_timing
        self._time: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self._time = time.perf_counter()

    def wait(self, stream: Stream | None = None) -> None:
        """Nothing to wait for."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def elapsed_time(self, end_event: Event) -> float:
        """Milliseconds between this event's record() and ``end_event``'s."""
        if self._time is None or end_event._time is None:
            raise RuntimeError("Both events must be recorded before calculating elapsed time.")
        return (end_event._time - self._time) * 1000.0


class Stream:
    """``torch_npu.npu.Stream``: work is synchronous, so every stream is always idle."""

    def __init__(self, device: object = None, priority: int = 0) -> None:
        self.device_index = _index(device, "Stream")
        self.priority = priority

    def synchronize(self) -> None:
        """Nothing to wait for."""

    def query(self) -> bool:
        return True

    def wait_event(self, event: Event) -> None:
        """Nothing to wait for."""

    def wait_stream(self, stream: Stream) -> None:
        """Nothing to wait for."""

    def record_event(self, event: Event | None = None) -> Event:
        event = event if event is not None else Event()
        event.record(self)
        return event


_default_stream = Stream(0)
_current_stream = _default_stream


def current_stream(device: object = None) -> Stream:
    return _current_stream


def default_stream(device: object = None) -> Stream:
    return _default_stream


def set_stream(stream: Stream) -> None:
    global _current_stream
    _current_stream = stream


@contextlib.contextmanager
def stream(stream: Stream | None) -> Iterator[None]:
    """``with torch_npu.npu.stream(s):`` makes ``s`` current for the block."""
    global _current_stream
    previous = _current_stream
    if stream is not None:
        _current_stream = stream
    try:
        yield
    finally:
        _current_stream = previous


class device:  # noqa: N801 - torch_npu's name
    """``with torch_npu.npu.device(i):`` makes index ``i`` current for the block."""

    def __init__(self, device: object) -> None:
        self.index = _index(device, "device")
        self.previous = _current_index

    def __enter__(self) -> device:
        global _current_index
        self.previous, _current_index = _current_index, self.index
        return self

    def __exit__(self, *exc: object) -> None:
        global _current_index
        _current_index = self.previous
