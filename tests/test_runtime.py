"""The native runtime (operator library loading, feature detection, kernel-variant cap, the parallel
loops' self-test operator, the reference switch) and `npuquant info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import npuquant
from npuquant import _native, cli

OPERATORS = [
    "dequant_affine",
    "dynamic_quant",
    "unpack_int4",
    "pack_int4",
    "quant_matmul",
    "quant_matmul_asymmetric",
    "linear_w8a8",
    "linear_w8a8_sym",
    "linear_w4a16",
    "cpu_features",
    "isa",
    "best_isa",
    "set_isa_limit",
    "set_bf16_nan",
    "pool_selftest",
]


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )


# ---------------------------------------------------------------------------------- loading


def test_operator_library_is_loaded():
    assert _native.available() and _native.load_error is None
    assert not hasattr(_native, "lib")  # no ctypes handle any more
    for name in OPERATORS:
        assert hasattr(torch.ops.npuquant, name), name
    assert Path(_native.__file__).with_name("_C.abi3.so").exists()


def test_missing_library_fails_the_import_loudly():
    proc = _python("import npuquant", NPUQUANT_LIBRARY="/nonexistent/_C.abi3.so")
    assert proc.returncode != 0
    assert "ImportError: npuquant: the native operators were not built" in proc.stderr


# ---------------------------------------------------------------------------------- ISA and features


def test_isa_cap_round_trip():
    best = _native.best_isa()
    assert _native.supported_isas()[-1] == best and _native.supported_isas()[0] == "scalar"
    assert _native.isa() == best
    with _native.isa_limit("scalar") as now:
        assert now == "scalar" and _native.isa() == "scalar"
        assert torch.ops.npuquant.isa() == 0
        with _native.isa_limit(None) as lifted:  # nested: lifts the cap, then restores it
            assert lifted == best
        assert _native.isa() == "scalar"
    assert _native.isa() == best


def test_isa_limit_above_the_cpu_and_unknown_names():
    assert _native.set_isa_limit("avx512") == _native.best_isa()  # a cap above the CPU: its best
    assert _native.set_isa_limit(None) == _native.best_isa()
    with pytest.raises(ValueError, match="unknown ISA 'sse'"):
        _native.set_isa_limit("sse")
    assert _native.isa() == _native.best_isa()


def test_every_supported_isa_can_be_selected(isa):
    assert _native.isa() == isa
    assert _native.ISA_NAMES[torch.ops.npuquant.isa()] == isa
    assert _native.ISA_NAMES[torch.ops.npuquant.best_isa()] == _native.best_isa()


def test_features_consistent_with_isa():
    features = set(_native.cpu_features())
    assert features <= set(_native._FEATURE_BITS)
    bits = torch.ops.npuquant.cpu_features()
    assert features == {name for name, bit in _native._FEATURE_BITS.items() if bits & bit}
    if _native.best_isa() in ("avx2", "avx512"):
        assert {"avx2", "fma", "f16c"} <= features
    if _native.best_isa() == "avx512":
        assert {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= features


def test_isa_environment_variable_caps_the_process():
    proc = _python("from npuquant import _native; print(_native.isa())", NPUQUANT_ISA="scalar")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "scalar"


# Each kernel's variant rows (csrc/*.c tables), best first; their ISA level and extra CPU feature.
KERNEL_ROWS = {
    "dequant": ["avx512", "avx2", "scalar"],
    "dynamic_quant": ["avx512", "avx2", "scalar"],
    "int4_unpack": ["avx2", "scalar"],
    "int4_pack": ["avx2", "scalar"],
    "gemm_s8": ["avx512-vnni", "avx2", "scalar"],
    "gemv_s8": ["avx2", "scalar"],
    "gemv_int4": ["avx2", "scalar"],
    "gemm_s4": ["avx2", "scalar"],
}
ROW_NEEDS = {"avx512-vnni": ("avx512", "avx512vnni"), "avx512": ("avx512", None), "avx2": ("avx2", None),
             "scalar": ("scalar", None)}


def test_every_kernel_lists_its_variants_with_scalar_last():
    table = _native.kernels()
    assert {name: k["variants"] for name, k in table.items()} == KERNEL_ROWS
    assert all(k["ops"] for k in table.values())  # info says which ops run on each


def test_kernel_picker_takes_the_first_row_the_cap_and_the_cpu_allow(isa):
    levels = _native.supported_isas()  # lowest first, up to this CPU's best; `isa` caps them
    features = set(_native.cpu_features())

    def allowed(row: str) -> bool:
        level, feature = ROW_NEEDS[row]
        return level in levels[: levels.index(isa) + 1] and (feature is None or feature in features)

    for name, k in _native.kernels().items():
        assert k["variant"] == next(row for row in k["variants"] if allowed(row)), name
    if isa == "scalar":
        assert {k["variant"] for k in _native.kernels().values()} == {"scalar"}


def test_bf16_nan_bits_match_torch():
    nan = torch.full((64,), float("nan")).to(torch.bfloat16).view(torch.int16)[0]
    assert _native.BF16_NAN_BITS == int(nan) & 0xFFFF
    assert torch.ops.npuquant.set_bf16_nan(_native.BF16_NAN_BITS) == _native.BF16_NAN_BITS


# ---------------------------------------------------------------------------------- parallel loops


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
def test_pool_covers_every_index_once(n, threads):
    out = torch.ops.npuquant.pool_selftest(n, 0, threads)
    assert out.dtype == torch.int64 and out.shape == (n,)
    assert torch.equal(out, torch.arange(n, dtype=torch.int64) ** 2)


@pytest.mark.parametrize(("n", "chunk"), [(0, 1), (1, 1), (7, 1), (1000, 7), (1000, 1000), (1000, 5000)])
def test_dynamic_split_covers_every_index_once(n, chunk, threads):
    # Starts at -1 and adds i*i + 1: an index visited twice (or never) shows.
    out = torch.ops.npuquant.pool_selftest(n, chunk, threads)
    assert torch.equal(out, torch.arange(n, dtype=torch.int64) ** 2)


@pytest.mark.parametrize("nthreads", [-1, 0, 1, 64, 100000])
@pytest.mark.parametrize("chunk", [0, 3])
def test_pool_any_thread_count(nthreads, chunk):
    out = torch.ops.npuquant.pool_selftest(1000, chunk, nthreads)
    assert torch.equal(out, torch.arange(1000, dtype=torch.int64) ** 2)


def test_pool_selftest_rejects_negative_n():
    with pytest.raises(RuntimeError, match="npuquant::pool_selftest: n must be >= 0"):
        torch.ops.npuquant.pool_selftest(-1, 0, 1)


def test_kernels_work_in_a_forked_child():
    """The kernels' parallel loops run on torch's intra-op pool, so a forked child follows torch's
    rule (as DataLoader workers do): ``torch.set_num_threads(1)``, then every kernel runs inline and
    gives the parent's results. (With more threads the child hangs in libgomp, as torch's own ops do.)"""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    x1, w = (
        torch.randint(-128, 128, (64, 512), dtype=torch.int8),
        torch.randint(-128, 128, (256, 512), dtype=torch.int8),
    )
    scale = torch.rand(256) / 1000

    def work():
        return (
            torch.ops.npuquant.pool_selftest(64, 0, 2),
            torch.ops.npuquant.pool_selftest(64, 5, 2),
            npuquant.npu_quant_matmul(x1, w.t(), scale, output_dtype=torch.bfloat16),  # packed GEMM
            npuquant.npu_quant_matmul(x1[:3], w.t(), scale, output_dtype=torch.bfloat16),  # GEMV
        )

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        in_parent = work()  # the pool has run in the parent
    finally:
        torch.set_num_threads(previous)
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            torch.set_num_threads(1)
            ok = all(torch.equal(a, b) for a, b in zip(work(), in_parent))
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---------------------------------------------------------------------------------- reference switch


class _Ops(TorchDispatchMode):
    """Records the operators dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_force_reference_switch():
    x = torch.zeros(1)
    assert _native.use_native(x) and _native.use_native(x, None)
    assert not _native.use_native(torch.zeros(1, device="meta"))
    assert not _native.reference_forced()
    with _native.force_reference():
        assert _native.reference_forced() and not _native.use_native(x)
        with _native.force_reference(False):  # nests and restores
            assert _native.use_native(x)
        assert not _native.use_native(x)
    assert _native.use_native(x) and not _native.reference_forced()


def test_force_reference_routes_around_the_operator():
    x1, w = torch.ones(2, 4, dtype=torch.int8), torch.ones(3, 4, dtype=torch.int8)
    with _Ops() as native:
        npuquant.npu_quant_matmul(x1, w.t(), torch.tensor([0.5]), output_dtype=torch.float16)
    assert "npuquant.quant_matmul.default" in native.seen
    with _native.force_reference(), _Ops() as ref:
        npuquant.npu_quant_matmul(x1, w.t(), torch.tensor([0.5]), output_dtype=torch.float16)
    assert not any(op.startswith("npuquant.quant_matmul") for op in ref.seen), ref.seen


def test_force_reference_environment_variable():
    code = "import torch; from npuquant import _native; print(_native.reference_forced(), _native.use_native(torch.zeros(1)))"
    for value, expected in (("1", "True False"), ("0", "False True")):
        proc = _python(code, NPUQUANT_FORCE_REFERENCE=value)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected, value


# ---------------------------------------------------------------------------------- npuquant info


def test_info_reports_everything():
    data = cli.info()
    assert data["torch"] == torch.__version__
    assert data["isa"] == _native.isa() and data["threads"] == torch.get_num_threads()
    assert data["native_library"] == "loaded"
    assert data["cpu_features"] == _native.cpu_features()
    assert data["kernels"] == {name: k["variant"] for name, k in _native.kernels().items()}
    with _native.isa_limit("scalar"):
        assert set(cli.info()["kernels"].values()) == {"scalar"}


def test_cli_info_lists_the_kernel_of_each_op(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name, k in _native.kernels().items():
        assert f"{name}" in out and k["ops"] in out
    assert "gemm_s8" in out and "npu_quant_matmul" in out


def test_cli_info_json_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "npuquant", "info", "--json"], capture_output=True, text=True, check=True
    )
    data = json.loads(out.stdout)
    assert {"npuquant", "torch", "isa", "threads", "cpu_features", "kernels"} <= set(data)


def test_cli_help_and_demo(capsys):
    assert cli.main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["demo"]) == 0
    assert "[6.0, 8.0, 10.0, 12.0]" in capsys.readouterr().out
