"""Loads npuquant's compiled kernels and decides, per call, whether to use them.

The shared object is plain C (no libtorch): calls pass data pointers, sizes, strides
and a thread count through ctypes, which releases the GIL for the duration of a kernel.

Dispatch rule (DEVELOPERS.md, SPEC I.2): CPU tensors run native kernels, tensors on any
other device run the pure-torch reference. ``NPUQUANT_FORCE_REFERENCE=1`` in the
environment (or :func:`force_reference`) sends everything to the reference path.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import os
from collections.abc import Iterator
from pathlib import Path

import torch

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512"}
_FEATURE_BITS = {
    "avx2": 1 << 0,
    "fma": 1 << 1,
    "f16c": 1 << 2,
    "avx512f": 1 << 3,
    "avx512bw": 1 << 4,
    "avx512vnni": 1 << 5,
    "avxvnni": 1 << 6,
    "neon": 1 << 7,
    "avx512vl": 1 << 8,
    "avx512dq": 1 << 9,
    "avx512bf16": 1 << 10,
}


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_npuquant_c{suffix}"
        if path.exists():
            try:
                return ctypes.CDLL(str(path)), None
            except OSError as exc:  # pragma: no cover - broken build
                return None, f"cannot load {path}: {exc}"
    return None, "the native extension was not built (reinstall npuquant with a C compiler available)"


def _probe_bf16_nan() -> int:
    """The bit pattern this torch build's float32 -> bfloat16 tensor cast gives NaN.

    0xFFFF from its AVX2 / AVX-512 kernels, 0x7FC0 from c10's scalar conversion (e.g. under
    ATEN_CPU_CAPABILITY=default). Our kernels write the same (csrc/npq.h).
    """
    probe = torch.full((64,), float("nan"), dtype=torch.float32).to(torch.bfloat16)
    return int(probe.view(torch.int16)[0]) & 0xFFFF


lib, load_error = _load()
BF16_NAN_BITS = _probe_bf16_nan()
_forced_reference = False

if lib is not None:
    lib.npq_cpu_features.restype = ctypes.c_uint32
    lib.npq_isa.restype = ctypes.c_int
    lib.npq_set_isa_limit.restype = ctypes.c_int
    lib.npq_set_isa_limit.argtypes = [ctypes.c_int]
    lib.npq_pool_selftest.restype = None
    lib.npq_pool_selftest.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    lib.npq_pool_selftest_dynamic.restype = None
    lib.npq_pool_selftest_dynamic.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.npq_set_bf16_nan.restype = None
    lib.npq_set_bf16_nan.argtypes = [ctypes.c_uint16]
    lib.npq_set_bf16_nan(BF16_NAN_BITS)


def available() -> bool:
    """True when the compiled kernels are loaded."""
    return lib is not None


def cpu_features() -> list[str]:
    """CPU features the native library detected (e.g. ``['avx2', 'fma', 'f16c']``)."""
    if lib is None:
        return []
    bits = lib.npq_cpu_features()
    return [name for name, bit in _FEATURE_BITS.items() if bits & bit]


def best_isa() -> str:
    """The best kernel variant this CPU supports, whatever cap is in force."""
    if lib is None:
        return "none"
    previous = lib.npq_isa()
    best = ISA_NAMES[lib.npq_set_isa_limit(-1)]
    lib.npq_set_isa_limit(previous)
    return best


def supported_isas() -> list[str]:
    """Every kernel variant this CPU can run, lowest first (tests run each against the reference)."""
    if lib is None:
        return []
    best = {v: k for k, v in ISA_NAMES.items()}[best_isa()]
    return [ISA_NAMES[level] for level in range(best + 1)]


def isa() -> str:
    """Name of the kernel variant in force: ``'avx512'``, ``'avx2'`` or ``'scalar'`` (``'none'`` if not built)."""
    if lib is None:
        return "none"
    return ISA_NAMES.get(lib.npq_isa(), "unknown")


def set_isa_limit(name: str | None) -> str:
    """Caps the kernel variant (``'scalar'``, ``'avx2'``, ``'avx512'``; None lifts the cap). Returns the one in force."""
    if lib is None:
        return "none"
    level = -1 if name is None else {v: k for k, v in ISA_NAMES.items()}[name]
    return ISA_NAMES[lib.npq_set_isa_limit(level)]


@contextlib.contextmanager
def isa_limit(name: str | None) -> Iterator[str]:
    """Context manager form of :func:`set_isa_limit` (used by tests to run every variant)."""
    previous = lib.npq_isa() if lib is not None else -1
    capped = lib is not None and previous != {v: k for k, v in ISA_NAMES.items()}.get(best_isa(), -1)
    try:
        yield set_isa_limit(name)
    finally:
        set_isa_limit(ISA_NAMES[previous] if capped else None)


@contextlib.contextmanager
def force_reference(enabled: bool = True) -> Iterator[None]:
    """Within the block, run every op on the pure-torch reference path."""
    global _forced_reference
    previous, _forced_reference = _forced_reference, enabled
    try:
        yield
    finally:
        _forced_reference = previous


def use_native(*tensors: torch.Tensor | None) -> bool:
    """Whether an op on these tensors should run the native kernels."""
    if lib is None or _forced_reference or os.environ.get("NPUQUANT_FORCE_REFERENCE", "") not in ("", "0"):
        return False
    return all(t is None or t.is_cpu for t in tensors)  # is_cpu: no device object built per call


def num_threads() -> int:
    """Threads native kernels may use: PyTorch's intra-op setting, so one knob rules both."""
    return max(1, torch.get_num_threads())


def ptr(t: torch.Tensor | None) -> int | None:
    """Data pointer of a tensor for ctypes (None for a missing optional tensor)."""
    return None if t is None else t.data_ptr()
