"""Every code example of the seed documents, stored unmodified under examples/seeds/, runs through
``npuquant run`` (one fresh process each, as CI would run it) and produces the documented results.

Where a document prints values, stdout is compared with them; where its inputs are random, the
script's top-level tensors (saved with ``npuquant run --save``) are checked against the documented
formulas, computed here independently of npuquant. An example whose op npuquant lacks fails here.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "seeds"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))
TIMEOUT = 300


def _run_example(name: str, save_dir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    saved = save_dir / (name + ".pt")
    proc = subprocess.run(
        [sys.executable, "-m", "npuquant", "run", "--save", str(saved), str(EXAMPLES / name)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return proc, saved


@pytest.fixture(scope="module")
def example_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Starts every selected example at once (each in its own process) so they overlap."""
    selected = {
        item.callspec.params["script"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "script" in item.callspec.params
    }
    save_dir = tmp_path_factory.mktemp("seed_runs")
    workers = max(2, min(4, os.cpu_count() or 2))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(_run_example, name, save_dir) for name in sorted(selected)}
        yield futures


def _result(example_runs, script: str) -> tuple[str, dict[str, torch.Tensor]]:
    proc, saved = example_runs[script].result()
    assert proc.returncode == 0, (
        f"`npuquant run examples/seeds/{script}` exited with {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
    )
    return proc.stdout, torch.load(saved)


# ---------------------------------------------------------------------------- independent formulas


def _fp19(scale: torch.Tensor) -> torch.Tensor:
    """The scale npu_quant_matmul applies for a float32 scale and int8/fp16 output (SPEC §4.3)."""
    return (scale.float().view(torch.int32) & -8192).view(torch.float32)


def _quant_matmul_int8(x1, x2, scale, offset, bias) -> torch.Tensor:
    """SPEC §4.2/§4.3 for int8 output: rint((x1@x2 + bias) * fp19(scale) + rint(offset)), saturated."""
    acc = torch.matmul(x1.to(torch.int64), x2.to(torch.int64))
    if bias is not None:
        acc = acc + bias.to(torch.int64)
    value = acc.to(torch.float32) * _fp19(scale)
    if offset is not None:
        value = value + torch.clamp(torch.round(offset.float()), -256, 255)
    return torch.clamp(torch.round(value), -128, 127).to(torch.int8)


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    nibbles = (packed.unsqueeze(-1) >> shifts) & 0xF
    values = torch.where(nibbles >= 8, nibbles - 16, nibbles)
    return values.reshape(*packed.shape[:-1], packed.shape[-1] * 8)


def _check_asymmetric(x, y, scale, offset, *, bits=8, smooth=None):
    """SPEC §3.4: per-row scale = (max-min)/range, offset = qmax - max/scale, y = rint(x/scale + offset)."""
    qmin, qmax = (-128, 127) if bits == 8 else (-8, 7)
    xs = x.float() if smooth is None else x.float() * smooth.float()
    row_max, row_min = xs.amax(-1), xs.amin(-1)
    expected_scale = torch.clamp((row_max - row_min) / (qmax - qmin), min=1e-12)
    expected_offset = qmax - row_max / expected_scale
    torch.testing.assert_close(scale, expected_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(offset, expected_offset, rtol=1e-5, atol=1e-4)
    values = y if bits == 8 else _unpack_int4(y)
    assert values.shape == x.shape
    expected = torch.clamp(torch.round(xs / expected_scale[..., None] + expected_offset[..., None]), qmin, qmax)
    assert int(values.min()) >= qmin and int(values.max()) <= qmax
    assert (values.float() - expected).abs().max() <= 1  # float rounding near .5 (OP-TEST tolerance)


# ---------------------------------------------------------------------------------------- tests


def test_every_seed_document_has_its_examples():
    expected = {
        "seed000_anti_quant.py",
        "seed000_anti_quant_graph.py",
        "seed001_linear_a8w8_quant.py",
        "seed001_linear_a8w8_quant_graph.py",
        "seed001_quant_matmul.py",
        "seed002_dynamic_quant_asymmetric_int8.py",
        "seed002_dynamic_quant_asymmetric_int4.py",
        "seed002_dynamic_quant_asymmetric_smooth.py",
        "seed002_dynamic_quant_asymmetric_moe.py",
        "seed002_dynamic_quant_asymmetric_graph.py",
        "seed003_aclnn_ascend_anti_quant.py",
        "seed004_pypto_dequantize.py",
    }
    assert set(SCRIPTS) == expected
    for name in SCRIPTS:
        head = (EXAMPLES / name).read_text(encoding="utf-8").splitlines()[0]
        assert head.startswith("# Seed 00"), f"{name} lacks its provenance header"


def _check_seed000(stdout, t):
    torch.testing.assert_close(t["out"], torch.tensor([6.0, 8.0, 10.0, 12.0], dtype=torch.float16), rtol=0, atol=0)


def _check_seed000_graph(stdout, t):
    torch.testing.assert_close(t["output"], torch.tensor([6.0, 8.0, 10.0, 12.0], dtype=torch.float16), rtol=0, atol=0)


def _check_linear(stdout, t):
    assert t["output"].shape == (1, 128) and t["output"].dtype == torch.int8
    expected = _quant_matmul_int8(t["x1"], t["x2"].t(), t["scale"], t["offset"], t["bias"])
    torch.testing.assert_close(t["output"], expected, rtol=0, atol=0)


def _check_quant_matmul(stdout, t):
    out = t["npu_out"]
    assert out.shape == (31, 256, 16) and out.dtype == torch.int8  # the document's output
    expected = _quant_matmul_int8(t["cpu_x1"], t["cpu_x2"], t["scale"], t["offset"], t["bias"])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # The document prints the same tensor for method 1 (float32 scale + offset) and method 2 (int64 scale).
    lines = stdout.strip().splitlines()
    assert len(lines) % 2 == 0 and lines[: len(lines) // 2] == lines[len(lines) // 2 :], stdout


def _check_dq_int8(stdout, t):
    assert t["y"].dtype == torch.int8 and t["scale"].shape == (3,) and t["offset"].dtype == torch.float32
    _check_asymmetric(t["x"], t["y"], t["scale"], t["offset"])
    assert stdout.startswith("tensor(")


def _check_dq_int4(stdout, t):
    assert t["y"].dtype == torch.int32 and t["y"].shape == (3, 1)
    _check_asymmetric(t["x"], t["y"], t["scale"], t["offset"], bits=4)


def _check_dq_smooth(stdout, t):
    _check_asymmetric(t["x"], t["y"], t["scale"], t["offset"], smooth=t["smooth_scales"])


def _check_dq_moe(stdout, t):
    assert t["group_index"].tolist() == [1, 3]
    smooth = t["smooth_scales"][torch.tensor([0, 1, 1])]  # row 0 -> group 0, rows 1-2 -> group 1
    _check_asymmetric(t["x"], t["y"], t["scale"], t["offset"], smooth=smooth)


def _check_dq_graph(stdout, t):
    assert t["out"].shape == (2, 4, 6) and t["out"].dtype == torch.int8
    assert t["scale"].shape == (2, 4) and t["offset"].shape == (2, 4)
    _check_asymmetric(t["x"], t["out"], t["scale"], t["offset"], smooth=t["smooth_scales"])


def _check_aclnn(stdout, t):
    # y = (x + offset) * scale with x = 0..7, offset = scale = 1, printed as raw float16 bit patterns.
    bits = torch.arange(1, 9, dtype=torch.float16).view(torch.int16).tolist()
    assert stdout.splitlines() == [f"result[{i}] is: {b}" for i, b in enumerate(bits)]


def _check_pypto(stdout, t):
    # The document's 结果示例, verbatim.
    assert stdout.splitlines() == [
        "Input  x:[[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]]",
        "Input  scale:[1.0, 1.0, 1.0]",
        "Input  zero_points:[-2.0, -2.0, -2.0]",
        "Output y1:[[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]]",
        "Output y2:[[-1.0, 0.0, 1.0, 2.0], [-1.0, 0.0, 1.0, 2.0], [-1.0, 0.0, 1.0, 2.0]]",
    ]


CHECKS = {
    "seed000_anti_quant.py": _check_seed000,
    "seed000_anti_quant_graph.py": _check_seed000_graph,
    "seed001_linear_a8w8_quant.py": _check_linear,
    "seed001_linear_a8w8_quant_graph.py": _check_linear,
    "seed001_quant_matmul.py": _check_quant_matmul,
    "seed002_dynamic_quant_asymmetric_int8.py": _check_dq_int8,
    "seed002_dynamic_quant_asymmetric_int4.py": _check_dq_int4,
    "seed002_dynamic_quant_asymmetric_smooth.py": _check_dq_smooth,
    "seed002_dynamic_quant_asymmetric_moe.py": _check_dq_moe,
    "seed002_dynamic_quant_asymmetric_graph.py": _check_dq_graph,
    "seed003_aclnn_ascend_anti_quant.py": _check_aclnn,
    "seed004_pypto_dequantize.py": _check_pypto,
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_seed_example_runs_and_matches_the_document(example_runs, script):
    stdout, tensors = _result(example_runs, script)
    CHECKS[script](stdout, tensors)


def test_checks_cover_every_example():
    assert set(CHECKS) == set(SCRIPTS)
