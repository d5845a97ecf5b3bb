"""The native runtime (feature detection, kernel-variant cap, thread pool) and `npuquant info`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from npuquant import _native, cli

pytestmark = pytest.mark.skipif(not _native.available(), reason=f"native library missing: {_native.load_error}")


def test_extension_imports_as_module():
    import npuquant._npuquant_c as ext

    assert ext.__name__ == "npuquant._npuquant_c"


def test_isa_cap_round_trip():
    best = _native.best_isa()
    assert _native.supported_isas()[-1] == best and _native.supported_isas()[0] == "scalar"
    with _native.isa_limit("scalar") as now:
        assert now == "scalar" and _native.isa() == "scalar"
    assert _native.isa() == best


def test_features_consistent_with_isa():
    features = set(_native.cpu_features())
    if _native.best_isa() in ("avx2", "avx512"):
        assert {"avx2", "fma", "f16c"} <= features
    if _native.best_isa() == "avx512":
        assert {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= features


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1000])
def test_pool_covers_every_index_once(n, threads):
    out = torch.full((max(n, 1),), -1, dtype=torch.int64)
    _native.lib.npq_pool_selftest(out.data_ptr(), n, threads)
    expected = torch.arange(n, dtype=torch.int64) ** 2
    assert torch.equal(out[:n], expected)


@pytest.mark.parametrize(("n", "chunk"), [(0, 1), (1, 1), (7, 1), (1000, 7), (1000, 1000), (1000, 5000)])
def test_dynamic_split_covers_every_index_once(n, chunk, threads):
    out = torch.full((max(n, 1),), -1, dtype=torch.int64)
    _native.lib.npq_pool_selftest_dynamic(out.data_ptr(), n, chunk, threads)
    expected = torch.arange(n, dtype=torch.int64) ** 2
    assert torch.equal(out[:n], expected)


def test_pool_survives_fork():
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    out = torch.zeros(64, dtype=torch.int64)
    _native.lib.npq_pool_selftest(out.data_ptr(), 64, 2)  # start the pool in the parent
    pid = os.fork()
    if pid == 0:  # child: the pool must rebuild itself, not wait on threads that did not survive fork
        child = torch.zeros(64, dtype=torch.int64)
        _native.lib.npq_pool_selftest(child.data_ptr(), 64, 2)
        os._exit(0 if int(child[63]) == 63 * 63 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_force_reference_switch(monkeypatch):
    x = torch.zeros(1)
    assert _native.use_native(x)
    with _native.force_reference():
        assert not _native.use_native(x)
    monkeypatch.setenv("NPUQUANT_FORCE_REFERENCE", "1")
    assert not _native.use_native(x)
    monkeypatch.setenv("NPUQUANT_FORCE_REFERENCE", "0")
    assert _native.use_native(x)
    assert not _native.use_native(torch.zeros(1, device="meta"))


def test_info_reports_everything():
    data = cli.info()
    assert data["torch"] == torch.__version__
    assert data["isa"] == _native.isa() and data["threads"] == torch.get_num_threads()
    assert data["native_library"] == "loaded"


def test_cli_info_json_subprocess():
    out = subprocess.run([sys.executable, "-m", "npuquant", "info", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert {"npuquant", "torch", "isa", "threads", "cpu_features"} <= set(data)


def test_cli_help_and_demo(capsys):
    assert cli.main([]) == 0
    assert "demo" in capsys.readouterr().out
    assert cli.main(["demo"]) == 0
    assert "[6.0, 8.0, 10.0, 12.0]" in capsys.readouterr().out
