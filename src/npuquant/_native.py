"""npuquant's native operators: loading them, the CPU-kernel switches, and wiring each operator.

The C kernels are registered as torch operators by ``csrc/torch_ops.cpp`` (LibTorch stable ABI):
``torch.ops.npuquant.<name>`` with the schema and the CPU kernel defined in C++. For each one,
:func:`operator` adds from Python what belongs beside the pure-torch golden: the fake kernel
(``torch.compile``) and the reference as the implementation on every other device
(``CompositeExplicitAutograd``). So one call, ``torch.ops.npuquant.<name>(...)``, runs the native
kernel on CPU tensors and the reference elsewhere; the dispatcher decides, not Python.

``NPUQUANT_FORCE_REFERENCE=1`` in the environment (or :func:`force_reference`) sends CPU calls to
the reference too (for comparisons); ``NPUQUANT_ISA`` caps the kernel variant for the process;
``NPUQUANT_LIBRARY`` loads another build of the operators (the sanitizer build).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512"}
_ISA_LEVELS = {v: k for k, v in ISA_NAMES.items()}
# Feature bits of npq_cpu_features() (csrc/npq.h).
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


def _load() -> str | None:
    # NPUQUANT_LIBRARY: another build of the operators (e.g. the sanitizer build of scripts/sanitize.sh).
    path = Path(os.environ.get("NPUQUANT_LIBRARY") or Path(__file__).with_name("_C.abi3.so"))
    if not path.exists():
        return "the native operators were not built (reinstall npuquant with a C/C++ compiler available)"
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:  # pragma: no cover - broken build or too old a torch
        return f"cannot load {path}: {exc}"
    return None


load_error = _load()
if load_error is not None:
    raise ImportError(f"npuquant: {load_error}")

_ops = torch.ops.npuquant


def _probe_bf16_nan() -> int:
    """The bit pattern this torch build's float32 -> bfloat16 tensor cast gives NaN.

    0xFFFF from its AVX2 / AVX-512 kernels, 0x7FC0 from c10's scalar conversion (e.g. under
    ATEN_CPU_CAPABILITY=default). Our kernels write the same (csrc/npq.h).
    """
    probe = torch.full((64,), float("nan"), dtype=torch.float32).to(torch.bfloat16)
    return int(probe.view(torch.int16)[0]) & 0xFFFF


BF16_NAN_BITS = _probe_bf16_nan()
_ops.set_bf16_nan(BF16_NAN_BITS)
_forced_reference = os.environ.get("NPUQUANT_FORCE_REFERENCE", "") not in ("", "0")


def available() -> bool:
    """True when the native operators are loaded (always, once npuquant imports)."""
    return True


def cpu_features() -> list[str]:
    """CPU features the native library detected (e.g. ``['avx2', 'fma', 'f16c']``)."""
    bits = _ops.cpu_features()
    return [name for name, bit in _FEATURE_BITS.items() if bits & bit]


def best_isa() -> str:
    """The best kernel variant this CPU supports, whatever cap is in force."""
    return ISA_NAMES[_ops.best_isa()]


def supported_isas() -> list[str]:
    """Every kernel variant this CPU can run, lowest first (tests run each against the reference)."""
    return [ISA_NAMES[level] for level in range(_ops.best_isa() + 1)]


def isa() -> str:
    """Name of the kernel variant in force: ``'avx512'``, ``'avx2'`` or ``'scalar'``."""
    return ISA_NAMES.get(_ops.isa(), "unknown")


def set_isa_limit(name: str | None) -> str:
    """Caps the kernel variant (``'scalar'``, ``'avx2'``, ``'avx512'``; None lifts the cap). Returns the one in force."""
    if name is not None and name not in _ISA_LEVELS:
        raise ValueError(f"unknown ISA {name!r}; expected one of {sorted(_ISA_LEVELS)}")
    return ISA_NAMES[_ops.set_isa_limit(-1 if name is None else _ISA_LEVELS[name])]


# Which public ops run on each native kernel (``npuquant info`` shows the variant each would run).
KERNEL_OPS = {
    "dequant": "npu_anti_quant, dequantize, aclnnAscendAntiQuant, w8 npu_weight_quant_batchmatmul, w4a16 tiles",
    "dynamic_quant": "npu_dynamic_quant, npu_dynamic_quant_asymmetric, the w8a8 layers' activations",
    "int4_unpack": "unpack_int4",
    "int4_pack": "pack_int4, npu_convert_weight_to_int4pack",
    "gemm_s8": "npu_quant_matmul, npu_grouped_matmul (A8W8), quant_matmul_asymmetric, w8a8 layers (M > 8)",
    "gemv_s8": "npu_quant_matmul, npu_grouped_matmul (A8W8), w8a8 layers (M <= 8, weight as stored)",
    "gemv_int4": "w4a16 layer (M <= 8)",
    "gemm_s4": "w4a8 layer (int4 weights x int8 activations, every M)",
}


def kernels() -> dict[str, dict[str, object]]:
    """Each native kernel's variant in force now (under the ISA cap) and its variants, best first."""
    table: dict[str, dict[str, object]] = {}
    for line in _ops.kernels().splitlines():
        name, picked, rows = line.split(" ")
        table[name] = {"variant": picked, "variants": rows.split(","), "ops": KERNEL_OPS.get(name, "")}
    return table


@contextlib.contextmanager
def isa_limit(name: str | None) -> Iterator[str]:
    """Context manager form of :func:`set_isa_limit` (used by tests to run every variant)."""
    previous = _ops.isa()
    capped = previous != _ops.best_isa()
    try:
        yield set_isa_limit(name)
    finally:
        set_isa_limit(ISA_NAMES[previous] if capped else None)


if os.environ.get("NPUQUANT_ISA"):
    set_isa_limit(os.environ["NPUQUANT_ISA"])


def reference_forced() -> bool:
    """Whether CPU calls go to the pure-torch reference (:func:`force_reference`)."""
    return _forced_reference


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
    """Whether an op on these tensors runs the native kernels (all on CPU, reference not forced)."""
    return not _forced_reference and all(t is None or t.is_cpu for t in tensors)


def num_threads() -> int:
    """Threads native kernels may use: PyTorch's intra-op setting, so one knob rules both."""
    return max(1, torch.get_num_threads())


def operator(name: str, reference: Callable, fake: Callable) -> Callable:
    """Wires ``torch.ops.npuquant.<name>`` (schema and CPU kernel from C++) and returns its caller.

    ``reference`` becomes the implementation on every non-CPU device; ``fake`` the meta kernel
    torch.compile traces with. The returned function calls the operator (the reference when
    :func:`force_reference` is on), with the operator's positional arguments.
    """
    qualname = f"npuquant::{name}"
    torch.library.register_fake(qualname)(fake)
    torch.library.impl(qualname, "CompositeExplicitAutograd")(reference)
    overload = getattr(_ops, name).default

    def call(*args: object) -> object:
        if _forced_reference:
            return reference(*args)
        return overload(*args)

    call.__name__ = name
    call.__doc__ = f"``torch.ops.npuquant.{name}`` (native on CPU, reference elsewhere)."
    return call
