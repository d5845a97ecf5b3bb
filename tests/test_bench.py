"""``npuquant bench``: a fast smoke test on tiny shapes (no timing assertions), option handling,
and the family-registration extension point."""

from __future__ import annotations

import json

import pytest
import torch

from npuquant import _native, bench, cli
from npuquant.bench import harness


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert bench.main(["--quick", "--json", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_quick_json_has_every_op_and_field(capsys):
    data = run_json(capsys, "elementwise")
    head = data["header"]
    assert {"cpu", "isa", "best_isa", "threads", "torch", "cpu_features"} <= set(head)
    assert data["copy_gb_s"] > 0
    ops = {r["op"] for r in data["results"]}
    assert {"anti_quant", "pack_int4", "unpack_int4", "dynamic_quant"} <= ops
    variants = {(r["op"], r["variant"]) for r in data["results"]}
    assert {
        ("anti_quant", v) for v in ("int8->float16", "int8->bfloat16", "int4->float16", "int4->bfloat16")
    } <= variants
    for row in data["results"]:
        assert row["family"] == "elementwise"
        if "skipped" in row:
            assert row["op"] == "dynamic_quant"  # only when the op is missing from npuquant
            continue
        assert row["shape"] == [4, 64]
        for key in ("ms", "gelem_s", "gb_s", "pct_copy", "eager_ms", "vs_eager"):
            assert row[key] > 0, key
        if row["op"] != "dynamic_quant":
            assert row["kernel_ms"] > 0 and row["kernel_gb_s"] > 0


def test_select_op_isa_threads_shapes(capsys):
    threads_before = torch.get_num_threads()
    data = run_json(capsys, "anti_quant", "--isa", "scalar", "--threads", "1", "--shapes", "2x16,3x10", "--repeat", "1")
    assert data["header"]["isa"] == "scalar" and data["header"]["threads"] == 1
    assert torch.get_num_threads() == threads_before and _native.isa() == _native.best_isa()
    rows = data["results"]
    assert {r["op"] for r in rows} == {"anti_quant"}
    assert sorted({tuple(r["shape"]) for r in rows}) == [(2, 16), (3, 10)]
    skipped = [r for r in rows if "skipped" in r]
    assert {(r["variant"], tuple(r["shape"])) for r in skipped} == {
        ("int4->float16", (3, 10)),
        ("int4->bfloat16", (3, 10)),
    }
    assert "not a multiple of 8" in skipped[0]["skipped"]


def test_family_selection_and_table(capsys):
    assert cli.main(["bench", "elementwise", "--quick", "--shapes", "2x8"]) == 0  # routed by the CLI
    out = capsys.readouterr().out
    assert "Tensor.copy_ bandwidth" in out and "threads:" in out and "isa:" in out
    for word in ("anti_quant", "pack_int4", "unpack_int4", "Gelem/s", "GB/s", "%copy", "x eager", "2x8"):
        assert word in out


@pytest.mark.parametrize(
    "argv",
    [["no_such_op"], ["--repeat", "0"], ["--threads", "0"]],
)
def test_bad_arguments_exit_2(capsys, argv):
    assert bench.main(["--quick", *argv]) == 2
    assert "npuquant bench:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--isa", "sse"], ["--shapes", "0x4"], ["--shapes", "4xq"]])
def test_argparse_rejects(argv):
    with pytest.raises(SystemExit) as info:
        bench.main(argv)
    assert info.value.code == 2


def test_unsupported_isa(capsys, monkeypatch):
    monkeypatch.setattr(_native, "supported_isas", lambda: ["scalar"])
    assert bench.main(["--quick", "--isa", "avx2"]) == 2
    assert "not supported here" in capsys.readouterr().err


def test_registering_a_family(capsys, monkeypatch):
    # What bench/gemm.py does: register a factory under a family name; rows gain GOP/s from flops.
    bench.load_families()  # before the copy: family modules register once, on first import
    monkeypatch.setattr(harness, "_FACTORIES", dict(harness._FACTORIES))

    @harness.register("toyfamily")
    def cases(opts):
        a = torch.ones(8, 8)
        work = harness.Workload(run=lambda: a @ a, bytes=3 * 256, elements=64, flops=2 * 8**3, eager=lambda: a @ a)
        skipped = harness.Case("toyfamily", "toy_missing", "n/a", (1,), lambda: None, "toy reason")
        return [harness.Case("toyfamily", "toy_mm", "fp32", (8, 8, 8), lambda: work), skipped]

    data = run_json(capsys, "toyfamily")
    rows = {r["op"]: r for r in data["results"]}
    assert rows["toy_mm"]["gop_s"] > 0 and rows["toy_mm"]["vs_eager"] > 0 and "kernel_ms" not in rows["toy_mm"]
    assert rows["toy_missing"]["skipped"] == "toy reason"
    assert bench.main(["--quick", "toy_mm"]) == 0
    assert "GOP/s" in capsys.readouterr().out


@pytest.mark.parametrize("isa_name", ["scalar", None])
def test_gemm_family_both_weight_paths(capsys, isa_name):
    """`bench gemm` on the operators: M = 3 (GEMV, weight read in place) and M = 12 (packed per call)."""
    argv = ["gemm", "--shapes", "3x64x48,12x64x48", "--repeat", "1"]
    data = run_json(capsys, *argv, *(["--isa", isa_name] if isa_name else []))
    assert data["header"]["isa"] == (isa_name or _native.best_isa())
    rows = [r for r in data["results"] if r["op"] == "gemm"]
    assert sorted(tuple(r["shape"]) for r in rows) == [(3, 64, 48), (12, 64, 48)]
    for row in rows:
        assert row["family"] == "gemm" and row["variant"] == "a8w8 bf16 pertoken"
        for key in ("ms", "gop_s", "kernel_ms", "eager_ms", "vs_eager"):
            assert row[key] > 0, key
    assert {r["op"] for r in data["results"]} == {"gemm", "gemm_fbgemm"}
    assert _native.isa() == _native.best_isa()


def test_int4_matmul_rows(capsys):
    data = run_json(capsys, "int4_matmul")
    rows = {(r["op"], r["variant"]): r for r in data["results"]}
    assert set(rows) == {
        ("weight_quant_matmul", "w4a16 fp16 g32"),
        ("quant_matmul_a8w4", "a8w4 bf16 g32"),
        ("linear_w4a8", "layer g32"),
        ("linear_w4a8", "layer w8a8"),
        ("linear_w4a8", "layer fbgemm (inexact)"),
    }
    for row in rows.values():
        assert row["family"] == "int4_matmul" and row["shape"] == [4, 64, 48]
        assert row["ms"] > 0 and row["gop_s"] > 0 and row["vs_eager"] > 0
