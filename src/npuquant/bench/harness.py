"""Timing harness for ``npuquant bench``: the case registry, a calibrated timer, the
``Tensor.copy_`` bandwidth yardstick and the machine header.

Op families register a factory with :func:`register`; the factory receives the run
:class:`Options` and returns :class:`Case` objects. Each case builds its tensors lazily
(``setup``), so listing or filtering cases costs nothing.
"""

from __future__ import annotations

import gc
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import npuquant
from npuquant import _native


@dataclass
class Options:
    """What the user asked for (parsed command line)."""

    ops: list[str] = field(default_factory=list)  # op or family names; empty = everything
    shapes: list[tuple[int, ...]] | None = None  # overrides each family's default shapes
    quick: bool = False  # tiny shapes, few repeats (tests, smoke runs)
    repeat: int = 7  # timed samples per measurement (the fastest is reported)
    min_time: float = 2e-3  # seconds per sample: fast calls are looped until they take this long


@dataclass
class Workload:
    """The callables and sizes of one benchmark case, built by ``Case.setup``."""

    run: Callable[[], object]  # the npuquant op, called as users call it (allocates its output)
    bytes: int  # bytes the op must move: inputs read + outputs written
    elements: int  # elements produced (the Gelem/s numerator)
    eager: Callable[[], object] | None = None  # the same maths composed of eager torch ops
    kernel: Callable[[], object] | None = None  # the native kernel writing a preallocated output
    flops: int | None = None  # arithmetic operations, for compute-bound ops (GEMM)
    note: str = ""


@dataclass
class Case:
    family: str  # module that registered it, e.g. "elementwise", "gemm"
    op: str  # op name users select with, e.g. "anti_quant"
    variant: str  # what distinguishes cases of one op, e.g. "int8->float16"
    shape: tuple[int, ...]  # logical shape (output elements for element-wise ops)
    setup: Callable[[], Workload | None]  # None = skipped (e.g. the op is not available)
    skip_reason: str = ""


Factory = Callable[[Options], list[Case]]
_FACTORIES: dict[str, list[Factory]] = {}


def register(family: str) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("gemm") def cases(opts) -> list[Case]`` adds a family's cases."""

    def wrap(factory: Factory) -> Factory:
        _FACTORIES.setdefault(family, []).append(factory)
        return factory

    return wrap


def families() -> list[str]:
    return list(_FACTORIES)


def collect(opts: Options) -> list[Case]:
    """Every registered case the selection (``opts.ops``: op or family names) keeps."""
    cases = [case for factories in _FACTORIES.values() for factory in factories for case in factory(opts)]
    if opts.ops:
        cases = [c for c in cases if c.op in opts.ops or c.family in opts.ops]
    return cases


def known_names() -> set[str]:
    names = set(_FACTORIES)
    for case in collect(Options(quick=True)):
        names.add(case.op)
    return names


# ---------------------------------------------------------------- timing


def time_call(fn: Callable[[], object], repeat: int, min_time: float, max_total: float = float("inf")) -> float:
    """Seconds per call: the fastest of ``repeat`` samples, each looping ``fn`` for at least ``min_time``.

    The minimum, not the median: on a shared machine other processes only ever add time, so
    the fastest sample is the most reproducible estimate of what the code itself costs.
    Sampling stops early (after at least two samples) once ``max_total`` seconds are spent.
    """
    fn()  # warm-up: first-call dispatch, page faults of inputs, lazy init
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-9)
    number = max(1, math.ceil(min_time / once))
    samples = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    began = time.perf_counter()
    try:
        for _ in range(max(1, repeat)):
            start = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - start) / number)
            if len(samples) >= 2 and time.perf_counter() - began > max_total:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return min(samples)


def copy_bandwidth(opts: Options) -> float:
    """GB/s of ``dst.copy_(src)`` on float32 buffers (bytes read + written), preallocated.

    64 MiB per buffer, far beyond cache, so this is the machine's streaming bandwidth
    as torch sees it with the current thread count (1 MiB in quick mode).
    """
    n = (1 << 18) if opts.quick else (16 << 20)
    src = torch.rand(n)
    dst = torch.empty_like(src)
    samples = opts.repeat if opts.quick else max(opts.repeat, 15)  # cheap, and the yardstick of every row
    seconds = time_call(lambda: dst.copy_(src), samples, opts.min_time)
    return 2 * n * 4 / seconds / 1e9


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def header() -> dict[str, object]:
    """The machine and settings every result depends on."""
    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "isa": _native.isa(),
        "best_isa": _native.best_isa(),
        "cpu_features": _native.cpu_features(),
        "threads": _native.num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "npuquant": npuquant.__version__,
    }


def measure(case: Case, opts: Options) -> dict[str, object]:
    """Runs one case; returns a result row (times in ms, rates per second)."""
    row: dict[str, object] = {"family": case.family, "op": case.op, "variant": case.variant, "shape": list(case.shape)}
    work = case.setup()
    if work is None:
        row["skipped"] = case.skip_reason or "not available"
        return row
    seconds = time_call(work.run, opts.repeat, opts.min_time)
    row.update(
        ms=seconds * 1e3,
        gelem_s=work.elements / seconds / 1e9,
        gb_s=work.bytes / seconds / 1e9,
    )
    if work.flops:
        row["gop_s"] = work.flops / seconds / 1e9
    if work.kernel is not None:
        k = time_call(work.kernel, opts.repeat, opts.min_time)
        row.update(kernel_ms=k * 1e3, kernel_gb_s=work.bytes / k / 1e9)
    if work.eager is not None:
        e = time_call(work.eager, opts.repeat, opts.min_time, max_total=2.0)  # eager can be slow: cap its time
        row.update(eager_ms=e * 1e3, vs_eager=e / seconds)
    if work.note:
        row["note"] = work.note
    del work
    return row


def add_copy_ratios(rows: list[dict[str, object]], copy_gbps: float) -> None:
    """Adds each row's bandwidth as a percentage of ``Tensor.copy_``'s."""
    for row in rows:
        for rate, pct in (("gb_s", "pct_copy"), ("kernel_gb_s", "kernel_pct_copy")):
            if rate in row:
                row[pct] = 100 * row[rate] / copy_gbps  # type: ignore[operator]
