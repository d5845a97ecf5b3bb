"""Issue 16: Ascend's op-test harness (torch_npu.testing), the emulated SoC, torch.ops.npu, recorded
npu formats, the storage-dtype / quant_mode keywords and the AttributeError for unprovided ops.

The harness modules and the ops are tested in process (importing them installs nothing); anything
that needs ``npuquant.compat.install()`` runs in its own Python process (see tests/test_compat.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import unittest
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import npuquant
from npuquant.compat.shims import torch_npu as shim
from npuquant.compat.shims.torch_npu import npu as npu_module
from npuquant.compat.shims.torch_npu.testing import common_utils
from npuquant.compat.shims.torch_npu.testing.testcase import TestCase

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    return proc


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npuquant", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


class _Case(TestCase):
    def runTest(self) -> None:  # noqa: N802 - unittest's name
        """Only a host for the assertion helpers."""


@pytest.fixture
def case() -> _Case:
    return _Case()


def _fails(fn, *args, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------------------ assertRtolEqual


def test_rtol_equal_passes_within_absolute_or_relative_tolerance(case):
    x = torch.tensor([1000.0, 2.0, 0.0])
    case.assertRtolEqual(x, x + torch.tensor([0.05, 0.0, 0.0]))  # relative 5e-5 <= 1e-4
    case.assertRtolEqual(x, x + torch.tensor([0.0, 0.0, 5e-5]))  # absolute 5e-5 <= 1e-4
    # The two checks count separately: one element failing only absolutely and another failing only
    # relatively is a failure (each count exceeds prec * numel), as in torch_npu.
    mixed = x + torch.tensor([0.05, 0.0, 5e-5])
    assert "1 of 3 elements exceed the absolute tolerance" in _fails(case.assertRtolEqual, x, mixed)
    case.assertRtolEqual(x, mixed, prec=0.5)


def test_rtol_equal_allows_prec_times_numel_bad_elements(case):
    x = torch.zeros(1000)
    y = x.clone()
    y[:10] = 1.0  # 10 bad of 1000, prec 0.01 allows 10
    case.assertRtolEqual(x, y, 0.01)
    y[10] = 1.0  # 11 > 10
    message = _fails(case.assertRtolEqual, x, y, 0.01)
    assert "11 of 1000" in message and "max |x - y| = 1" in message


def test_rtol_equal_uses_prec16_for_float16(case):
    x = torch.full((4,), 100.0, dtype=torch.float16)
    y = x + 0.0625  # relative ~6e-4: beyond prec 1e-4, within prec16 1e-3
    case.assertRtolEqual(x, y)
    assert "result error" in _fails(case.assertRtolEqual, x, y, prec16=1e-4)
    case.assertRtolEqual(x.float(), y.float(), prec=1e-3)
    assert "result error" in _fails(case.assertRtolEqual, x.float(), y.float())


def test_rtol_equal_shape_dtype_and_type_errors(case):
    assert "shape error" in _fails(case.assertRtolEqual, torch.zeros(2), torch.zeros(3))
    assert "dtype error" in _fails(case.assertRtolEqual, torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    case.assertRtolEqual(torch.zeros(2, dtype=torch.float64), torch.zeros(2), auto_trans_dtype=True)
    message = _fails(case.assertRtolEqual, torch.zeros(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16))
    assert "bfloat16" in message and "convert it first" in message
    assert "required" in _fails(case.assertRtolEqual, "a", 1)
    assert "required dtype" in _fails(case.assertRtolEqual, np.zeros(2, np.complex64), np.zeros(2, np.complex64))
    assert "my note" in _fails(case.assertRtolEqual, torch.zeros(2), torch.zeros(3), message="my note")


def test_rtol_equal_bool_numbers_sequences_numpy_and_integers(case):
    case.assertRtolEqual(torch.tensor([True, False]), torch.tensor([True, False]))
    assert "bool elements differ" in _fails(case.assertRtolEqual, torch.tensor([True]), torch.tensor([False]))
    case.assertRtolEqual(1.0, 1.00001)
    assert "result error" in _fails(case.assertRtolEqual, 1.0, 1.1)
    case.assertRtolEqual([torch.ones(2), torch.zeros(1)], (torch.ones(2), torch.zeros(1)))
    assert "length error" in _fails(case.assertRtolEqual, [torch.ones(1)], [torch.ones(1), torch.ones(1)])
    case.assertRtolEqual(torch.tensor([1.0, 2.0]), [1.0, 2.0])
    case.assertRtolEqual([3, 4], torch.tensor([3, 4]))
    case.assertRtolEqual(np.array([1, 2], np.int8), np.array([1, 2], np.int8))
    # int8 differences are computed wide: -128 vs 127 is 255 apart, not a wrapped -1.
    assert "result error" in _fails(case.assertRtolEqual, np.array([-128], np.int8), np.array([127], np.int8))
    nan = torch.tensor([float("nan")])
    assert "result error" in _fails(case.assertRtolEqual, nan, nan)


# --------------------------------------------------------------------------- assertEqual family


def test_assert_equal_with_precision(case):
    case.assertEqual(1.0, 1.0 + 1e-6)
    assert _fails(case.assertEqual, 1.0, 1.1)
    case.assertEqual(1.0, 1.1, 0.2)
    case.assertEqual(1.0, 1.0, "a message given where prec goes")
    assert "note" in _fails(case.assertEqual, 1.0, 2.0, "note")
    case.precision = 0.5
    assert case.precision == 0.5
    case.assertEqual(1.0, 1.4)
    case.precision = 1e-5
    case.assertEqual(torch.tensor([1.0, float("nan")]), torch.tensor([1.0 + 1e-6, float("nan")]))
    assert "NaNs" in _fails(case.assertEqual, torch.tensor([float("nan")]), torch.tensor([1.0]))
    assert _fails(case.assertEqual, torch.ones(2), torch.ones(3))
    case.assertEqual(torch.ones(2, dtype=torch.int32), torch.ones(2))  # dtypes only with exact_dtype
    assert _fails(case.assertEqual, torch.ones(2, dtype=torch.int32), torch.ones(2), exact_dtype=True)
    case.assertEqual(torch.tensor([True]), torch.tensor([True]))
    with pytest.raises(TypeError):
        case.assertEqual(torch.tensor([True]), torch.tensor([1.0]))
    case.assertEqual(torch.tensor([2.5]), 2.5)
    case.assertEqual(3, torch.tensor(3))
    case.assertEqual([1, (2.0, 3)], [1, (2.0, 3)])
    assert _fails(case.assertEqual, [1, 2], [1, 2, 3])
    case.assertEqual({"a": torch.ones(1)}, {"a": torch.ones(1)})
    assert _fails(case.assertEqual, {"a": 1}, {"b": 1})
    case.assertEqual({1, 2}, {2, 1})
    case.assertEqual("abc", "abc")
    case.assertEqual(torch.float16, torch.float16)
    case.assertEqual(torch.Size([2, 3]), (2, 3))
    case.assertEqual(torch.zeros(0), torch.zeros(0))
    assert "finite" in _fails(case.assertEqual, float("inf"), float("inf"))
    case.assertEqual(float("inf"), float("inf"), allow_inf=True)
    inf = torch.tensor([float("inf"), 1.0])
    case.assertEqual(inf, inf.clone(), allow_inf=True)
    case.assertEqual(float("nan"), float("nan"))
    case.assertEqual(np.bool_(True), True)


def test_tensors_slow_equal_not_equal_almost_equal_and_object_in(case):
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    case.assertTensorsSlowEqual(x, x + 0.5, 1)
    assert _fails(case.assertTensorsSlowEqual, x, x + 2, 1)
    assert _fails(case.assertTensorsSlowEqual, x, x.double(), 1)
    case.assertTensorsSlowEqual(torch.tensor([True]), torch.tensor([True]))
    case.assertTensorsSlowEqual(torch.zeros(0), torch.zeros(0), 0)
    assert _fails(case.assertTensorsSlowEqual, torch.tensor([float("nan")]), torch.tensor([0.0]), 1)
    case.assertNotEqual(x, x + 1)
    assert _fails(case.assertNotEqual, x, x.clone())
    case.assertNotEqual(torch.ones(2), torch.ones(3))
    case.assertNotEqual(1.0, 2.0)
    assert _fails(case.assertNotEqual, 1.0, 1.0, "same")
    case.assertNotEqual("a", "b")
    case.assertAlmostEqual(1.0, 1.001, places=2)
    case.assertAlmostEqual(1.0, 1.4, delta=0.5)
    assert _fails(case.assertAlmostEqual, 1.0, 1.1, places=2)
    obj = object()
    case.assertObjectIn(obj, [1, obj])
    assert "not found" in _fails(case.assertObjectIn, object(), [obj])


def test_warning_helpers(case):
    case.assertNotWarn(lambda: None)
    assert "unexpected warnings" in _fails(case.assertNotWarn, lambda: warnings.warn("boom", stacklevel=1))
    with case.maybeWarnsRegex(UserWarning, "expected"):
        warnings.warn("expected thing", UserWarning, stacklevel=1)
    with pytest.raises(AssertionError, match="Caught unexpected warnings"):
        with case.maybeWarnsRegex(UserWarning, "expected"):
            warnings.warn("surprise", UserWarning, stacklevel=1)


def test_setup_seeds_torch_random_and_numpy(monkeypatch):
    draws = []

    class Draw(TestCase):
        def test_draw(self):
            import random

            draws.append((torch.rand(1).item(), random.random(), float(np.random.rand())))

    for seed in ("666", "666", "7"):
        monkeypatch.setenv("SEED", seed)
        suite = unittest.TestSuite([Draw("test_draw")])  # a suite runs setUpClass
        result = unittest.TextTestRunner(stream=open(os.devnull, "w")).run(suite)  # noqa: SIM115
        assert result.wasSuccessful()
    assert draws[0] == draws[1] != draws[2]
    assert Draw.npu_device == "npu:0"


# ------------------------------------------------------------------------------- common_utils


def test_npu_device_helpers(monkeypatch):
    monkeypatch.delenv("SET_NPU_DEVICE", raising=False)
    assert common_utils.get_npu_device() == "npu:0"
    monkeypatch.setenv("SET_NPU_DEVICE", "3")
    assert common_utils.get_npu_device() == "npu:3"
    assert common_utils.set_npu_device() == "npu:3" and npu_module.current_device() == 3
    npu_module.set_device(0)


def test_create_common_tensor_and_create_dtype_tensor():
    np.random.seed(0)
    cpu, dev = common_utils.create_common_tensor([np.float16, -1, [3, 4]], -2, 2, device="cpu")
    assert cpu.dtype == dev.dtype == torch.float16 and cpu.shape == (3, 4) and torch.equal(cpu, dev)
    assert cpu.data_ptr() != dev.data_ptr() and float(cpu.abs().max()) <= 2
    _, nz = common_utils.create_common_tensor([np.int32, 29, [2, 8]], -127, 127, device="cpu")
    assert nz.dtype == torch.int32 and shim.get_npu_format(nz) == 29
    for dtype, expected in ((torch.bool, torch.bool), (torch.half, torch.float16), (torch.float, torch.float32)):
        cpu, dev = common_utils.create_dtype_tensor((2, 3), dtype, device="cpu")
        assert cpu.dtype == expected and torch.equal(cpu, dev)
    cpu, dev = common_utils.create_dtype_tensor(
        (50,), torch.int64, min_value=-1, max_value=1, no_zero=True, device="cpu"
    )
    assert cpu.dtype == torch.int32 and bool((cpu != 0).all()) and int(cpu.abs().max()) <= 1
    _, fmt = common_utils.create_dtype_tensor((2, 2), torch.float, npu_format=29, device="cpu")
    assert shim.get_npu_format(fmt) == 29
    _, kept = common_utils.create_dtype_tensor((2, 2), torch.int32, npu_format=29, device="cpu")
    assert shim.get_npu_format(kept) == 2


def test_iteration_and_rng_helpers():
    assert list(common_utils.iter_indices(torch.zeros(()))) == []
    assert list(common_utils.iter_indices(torch.zeros(3))) == [0, 1, 2]
    assert list(common_utils.iter_indices(torch.zeros(2, 2))) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert common_utils.is_iterable([1]) and not common_utils.is_iterable(1)
    with common_utils.freeze_rng_state():
        a = torch.rand(2)
    assert torch.equal(a, torch.rand(2))
    assert common_utils.IS_WINDOWS is (sys.platform == "win32")


def test_supported_devices_and_skip_if_no_lapack(monkeypatch):
    calls = []

    class Gated(TestCase):
        @common_utils.SupportedDevices(["Ascend910B"])
        def test_a2(self):
            calls.append("a2")

        @common_utils.SupportedDevices(["Ascend950"])
        def test_950(self):
            calls.append("950")

        @common_utils.SkipIfNoLapack()
        def test_lapack(self):
            calls.append("lapack")

    def run(name: str) -> unittest.TestResult:
        return unittest.TextTestRunner(stream=open(os.devnull, "w")).run(Gated(name))  # noqa: SIM115

    assert run("test_a2").skipped == [] and calls == ["a2"]
    skipped = run("test_950").skipped
    assert calls == ["a2"] and len(skipped) == 1
    reason = skipped[0][1]
    assert "Only run on ['Ascend950'], current device is Ascend910B" in reason and "NPUQUANT_SOC" in reason
    assert run("test_lapack").skipped == [] and calls[-1] == "lapack"
    monkeypatch.setattr(torch._C, "has_lapack", False)
    assert len(run("test_lapack").skipped) == 1
    gate = common_utils.SupportedDevices(["Ascend950", "Ascend310P"])
    assert gate.matches("Ascend950PR") and gate.matches("Ascend310P3") and not gate.matches("Ascend910B4")
    monkeypatch.setattr(npu_module, "_soc", "Ascend950PR")
    assert run("test_950").skipped == [] and calls[-1] == "950"


# ------------------------------------------------------------------------------ SoC emulation


def test_resolve_soc(monkeypatch):
    monkeypatch.delenv("NPUQUANT_SOC", raising=False)
    assert npu_module.resolve_soc() == "Ascend910B4" == npu_module.DEFAULT_SOC
    monkeypatch.setenv("NPUQUANT_SOC", "Ascend310P3")
    assert npu_module.resolve_soc() == "Ascend310P3"
    assert npu_module.resolve_soc("Ascend950PR") == "Ascend950PR"
    for bad in ("", "Ascend", "GPU", 910, "Ascend\n910B"):
        with pytest.raises(ValueError, match="must name an Ascend SoC"):
            npu_module.resolve_soc(bad)
    monkeypatch.setenv("NPUQUANT_SOC", "H100")
    with pytest.raises(ValueError, match="NPUQUANT_SOC"):
        npu_module.resolve_soc()


def test_soc_switch_while_installed():
    _python(
        """
        import torch
        import npuquant.compat as compat
        compat.install()
        import torch_npu
        assert torch.npu.get_device_name() == "Ascend910B4" == torch_npu.npu.get_device_name(0)
        assert torch.npu.get_device_properties(0).name == "Ascend910B4"
        compat.install(soc="Ascend950PR")  # already installed: switches the SoC
        assert torch.npu.get_device_name() == "Ascend950PR"
        try:
            compat.install(soc="GPU")
        except ValueError as exc:
            assert "must name an Ascend SoC" in str(exc)
        else:
            raise AssertionError
        compat.uninstall()
        from npuquant.compat.shims.torch_npu import npu
        assert npu.soc_name() == "Ascend910B4"
        compat.install(soc="Ascend310P3")
        assert torch.npu.get_device_name() == "Ascend310P3"
        compat.uninstall()
        print("ok")
        """,
        env={"NPUQUANT_SOC": ""},
    )
    _python(
        """
        import torch
        import npuquant.compat as compat
        compat.install()
        assert torch.npu.get_device_name() == "Ascend310P3"
        """,
        env={"NPUQUANT_SOC": "Ascend310P3"},
    )
    _python(
        """
        import npuquant.compat as compat
        try:
            compat.install()
        except ValueError as exc:
            assert "NPUQUANT_SOC" in str(exc)
        else:
            raise AssertionError
        assert not compat.is_installed()
        """,
        env={"NPUQUANT_SOC": "nvidia"},
    )


# ---------------------------------------------------------------------------- torch.ops.npu


def test_torch_ops_npu_while_installed_and_inert_after():
    _python(
        """
        import torch
        import npuquant
        import npuquant.compat as compat
        from npuquant.compat import _ops
        compat.install()
        import torch_npu
        assert set(_ops.registered_ops()) >= {*torch_npu.OPS, "npu_format_cast"} - {
            op for op in torch_npu.OPS if not hasattr(npuquant, op)}
        x = torch.randn(4, 16, dtype=torch.float16)
        y, s = torch.ops.npu.npu_dynamic_quant(x)
        y2, s2 = torch_npu.npu_dynamic_quant(x)
        assert torch.equal(y, y2) and torch.equal(s, s2)
        y, s, o = torch.ops.npu.npu_dynamic_quant_asymmetric(x, dst_type=torch.quint4x2)
        assert y.dtype == torch.int32 and y.shape == (4, 2) and o.shape == (4,)
        y, s = torch.ops.npu.npu_dynamic_quant(x, quant_mode="perchannel")
        assert s.shape == (16,)
        w = torch.randint(-8, 8, (16, 8), dtype=torch.int8)
        scale = torch.rand(8)
        out = torch.ops.npu.npu_quant_matmul(y, w, scale, output_dtype=torch.bfloat16, x1_dtype=1, x2_dtype=1)
        ref = torch_npu.npu_quant_matmul(y, w, scale, output_dtype=torch.bfloat16)
        assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
        out = torch.ops.npu.npu_quant_matmul(y, w, scale, output_dtype=5)  # a ScalarType code
        assert out.dtype == torch.float16
        try:
            torch.ops.npu.npu_quant_matmul(y, w, scale, output_dtype=torch.bfloat16, x1_dtype=24)
        except RuntimeError as exc:
            assert "float8_e4m3fn" in str(exc) and "Ascend 950 only" in str(exc)
        else:
            raise AssertionError
        q = torch.ops.npu.npu_trans_quant_param(torch.tensor([0.5]), None)
        assert torch.equal(q, torch_npu.npu_trans_quant_param(torch.tensor([0.5])))
        a = torch.ops.npu.npu_anti_quant(w, torch.tensor([2.0]), dst_dtype=torch.float16)
        assert torch.equal(a, torch_npu.npu_anti_quant(w, torch.tensor([2.0])))
        packed = torch.ops.npu.npu_convert_weight_to_int4pack(w.to(torch.int32))
        assert torch.equal(packed, torch_npu.npu_convert_weight_to_int4pack(w.to(torch.int32)))
        qz = torch.ops.npu.npu_quantize(x.float(), torch.tensor([3.0]), None, torch.qint8, -1, False)
        assert torch.equal(qz, torch_npu.npu_quantize(x.float(), torch.tensor([3.0]), None, torch.qint8, -1, False))
        nz = torch.ops.npu.npu_format_cast(w, 29)
        assert torch.ops.npu.get_npu_format(nz) == 29 and torch_npu.get_npu_format(w) == 2
        assert torch.ops.npu.npu_format_cast_(w, 29) is w and torch_npu.get_npu_format(w) == 29

        def layer(inp):
            q, s = torch.ops.npu.npu_dynamic_quant(inp)
            return torch.ops.npu.npu_quant_matmul(q, w, scale, pertoken_scale=s, output_dtype=torch.float16)

        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        assert torch.equal(compiled(x), layer(x))
        compat.uninstall()
        try:
            torch.ops.npu.npu_dynamic_quant(x)
        except RuntimeError as exc:
            assert "only while npuquant.compat is installed" in str(exc)
        else:
            raise AssertionError
        compat.install()  # the definitions are reused, live again
        assert torch.ops.npu.npu_dynamic_quant(x)[0].dtype == torch.int8
        print("ok")
        """
    )


# ---------------------------------------------------------------------------------- formats


def test_format_enum_and_recorded_formats():
    assert shim.Format.ND == 2 and shim.Format.NCHW == 0 and shim.Format.NHWC == 1
    assert shim.Format.NC1HWC0 == 3 and shim.Format.FRACTAL_Z == 4 and shim.Format.FRACTAL_NZ == 29
    assert shim.Format.NDC1HWC0 == 32 and shim.Format.FRACTAL_Z_3D == 33 and shim.Format.NCL == 47
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert shim.get_npu_format(w) == shim.Format.ND
    nz = shim.npu_format_cast(w, shim.Format.FRACTAL_NZ, customize_dtype=torch.float16, input_dtype=1)
    assert nz is not w and nz.data_ptr() == w.data_ptr() and torch.equal(nz, w)
    assert shim.get_npu_format(nz) == 29 and shim.get_npu_format(w) == 2
    assert shim.npu_format_cast(nz, 29) is nz
    back = shim.npu_format_cast(nz, 2)
    assert shim.get_npu_format(back) == 2 and torch.equal(back, w)
    assert shim.npu_format_cast_(w, 4) is w and shim.get_npu_format(w) == 4
    other = torch.zeros(1)
    assert shim.npu_format_cast_(other, w) is other and shim.get_npu_format(other) == 4
    with pytest.raises(RuntimeError, match="acl_format 7 is not an ACL format code"):
        shim.npu_format_cast(w, 7)
    with pytest.raises(TypeError, match="acl_format must be an int"):
        shim.npu_format_cast(w, "nz")
    with pytest.raises(TypeError, match="expected a Tensor"):
        shim.npu_format_cast([1.0], 29)
    with pytest.raises(TypeError, match="expected a Tensor"):
        shim.get_npu_format([1.0])
    grad_in = torch.ones(2, requires_grad=True)
    shim.npu_format_cast(grad_in, 29).sum().backward()
    assert torch.equal(grad_in.grad, torch.ones(2))


# ------------------------------------------------------------------------ keywords real code passes


def test_quant_matmul_storage_dtype_keywords():
    x1 = torch.randint(-8, 8, (4, 32), dtype=torch.int8)
    x2 = torch.randint(-8, 8, (32, 16), dtype=torch.int8)
    scale, pertoken = torch.rand(16), torch.rand(4)
    ref = npuquant.npu_quant_matmul(x1, x2, scale, pertoken_scale=pertoken, output_dtype=torch.bfloat16)
    for kwargs in (
        {"x1_dtype": torch.int8, "x2_dtype": 1},
        {"scale_dtype": torch.float32, "pertoken_scale_dtype": 6},
        {"x1_dtype": None, "x2_dtype": None, "scale_dtype": None, "pertoken_scale_dtype": None},
    ):
        out = npuquant.npu_quant_matmul(x1, x2, scale, pertoken_scale=pertoken, output_dtype=torch.bfloat16, **kwargs)
        assert torch.equal(out, ref), kwargs
    a4 = npuquant.pack_int4(torch.randint(-8, 8, (4, 64), dtype=torch.int8))
    w4 = npuquant.pack_int4(torch.randint(-8, 8, (64, 16), dtype=torch.int8))
    ref4 = npuquant.npu_quant_matmul(a4, w4, torch.tensor([0.5]), output_dtype=torch.float16)
    for code in (shim.int4, torch.quint4x2, torch.int32):
        out = npuquant.npu_quant_matmul(
            a4, w4, torch.tensor([0.5]), output_dtype=torch.float16, x1_dtype=code, x2_dtype=code
        )
        assert torch.equal(out, ref4)
    for name, code in (
        ("x1_dtype", 24),
        ("x2_dtype", 23),
        ("x1_dtype", 290),
        ("scale_dtype", 293),
        ("x2_dtype", 296),
        ("x1_dtype", 297),
        ("x1_dtype", torch.float8_e4m3fn),
    ):
        with pytest.raises(RuntimeError, match=r"Ascend 950 only\) is not supported by npuquant") as info:
            npuquant.npu_quant_matmul(
                x1, x2, scale, pertoken_scale=pertoken, output_dtype=torch.bfloat16, **{name: code}
            )
        assert name in str(info.value)
    with pytest.raises(RuntimeError, match="hifloat8"):
        npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16, x2_dtype=shim.hifloat8)
    with pytest.raises(RuntimeError, match="x1_dtype int4 does not match the dtype of its tensor"):
        npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16, x1_dtype=shim.int4)
    with pytest.raises(RuntimeError, match="scale_dtype torch.int64 does not match"):
        npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16, scale_dtype=torch.int64)
    with pytest.raises(RuntimeError, match="pertoken_scale_dtype is torch.float32, but its tensor is None"):
        npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16, pertoken_scale_dtype=6)
    with pytest.raises(RuntimeError, match="must be a torch.dtype or an integer dtype code"):
        npuquant.npu_quant_matmul(x1, x2, scale, output_dtype=torch.bfloat16, x1_dtype="int8")


def _per_token_golden(rows: torch.Tensor, asymmetric: bool, levels: int):
    """Per-row reference on float32 rows (…, n) in the kernel's order (SPEC §3.4/§3.5)."""
    if asymmetric:
        hi, lo = rows.amax(-1, keepdim=True), rows.amin(-1, keepdim=True)
        scale = torch.clamp((hi - lo) / (2 * levels + 1), min=1e-12)
        offset = levels - hi / scale
        y = torch.round(rows * (1 / scale) + offset)
        return y, scale.squeeze(-1), offset.squeeze(-1)
    scale = rows.abs().amax(-1, keepdim=True) / levels
    return torch.round(rows * (1 / scale)), scale.squeeze(-1), None


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("int4_out", [False, True])
def test_dynamic_quant_perchannel_and_pertensor(asymmetric, int4_out):
    torch.manual_seed(0)
    op = npuquant.npu_dynamic_quant_asymmetric if asymmetric else npuquant.npu_dynamic_quant
    dst = torch.quint4x2 if int4_out else torch.int8
    levels = 7 if int4_out else 127
    x = torch.randn(2, 5, 16, dtype=torch.float16)  # 5 rows: not a multiple of 8 (int4 pads along S)
    smooth = torch.rand(5, dtype=torch.float16) + 0.5
    out = op(x, smooth_scales=smooth, dst_type=dst, quant_mode="perchannel")
    cols = (x.float() * smooth.float()[:, None]).transpose(-1, -2)
    y, scale, offset = _per_token_golden(cols, asymmetric, levels)
    y = y.transpose(-1, -2).to(torch.int8)
    got_y = npuquant.unpack_int4(out[0]) if int4_out else out[0]
    assert out[1].shape == (2, 16) and torch.equal(out[1], scale)
    assert torch.equal(got_y, y)
    if asymmetric:
        assert torch.equal(out[2], offset)
    smooth_h = torch.rand(16, dtype=torch.float16) + 0.5
    out = op(x, smooth_scales=smooth_h, dst_type=dst, quant_mode="pertensor")
    flat = (x.float() * smooth_h.float()).reshape(1, -1)
    y, scale, offset = _per_token_golden(flat, asymmetric, levels)
    got_y = npuquant.unpack_int4(out[0]) if int4_out else out[0]
    assert out[1].shape == (1,) and torch.equal(out[1], scale)
    assert torch.equal(got_y, y.reshape(2, 5, 16).to(torch.int8))
    default = op(x, dst_type=dst)
    explicit = op(x, dst_type=dst, quant_mode="pertoken", dst_type_max=0.0)
    assert all(torch.equal(a, b) for a, b in zip(default, explicit))


def test_dynamic_quant_mode_errors():
    x = torch.randn(4, 16, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="quant_mode must be 'pertoken', 'perchannel' or 'pertensor'"):
        npuquant.npu_dynamic_quant(x, quant_mode="perblock")
    with pytest.raises(RuntimeError, match="Can't support attr dst_type_max, please check CANN version."):
        npuquant.npu_dynamic_quant_asymmetric(x, dst_type_max=448.0)
    groups = torch.tensor([4], dtype=torch.int32)
    smooth = torch.ones(1, 16, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="group_index is only supported when quant_mode is pertoken"):
        npuquant.npu_dynamic_quant(x, smooth_scales=smooth, group_index=groups, quant_mode="perchannel")
    with pytest.raises(RuntimeError, match=r"smooth_scales must have shape \[4\]"):
        npuquant.npu_dynamic_quant(x, smooth_scales=torch.ones(16, dtype=torch.float16), quant_mode="perchannel")
    with pytest.raises(RuntimeError, match="smooth_scales dtype must be the same as x dtype"):
        npuquant.npu_dynamic_quant(x, smooth_scales=torch.ones(4), quant_mode="perchannel")
    with pytest.raises(RuntimeError, match="last dim must be divded by 8"):
        npuquant.npu_dynamic_quant(torch.randn(4, 12), dst_type=torch.quint4x2, quant_mode="perchannel")


# --------------------------------------------------------------------------- AttributeError


def test_unprovided_torch_npu_op_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError) as info:
        shim.npu_fused_infer_attention_score  # noqa: B018
    message = str(info.value)
    assert "torch_npu.npu_fused_infer_attention_score is not provided by npuquant" in message
    assert "npu_quant_matmul" in message
    assert not hasattr(shim, "__wrapped__")
    for name in shim.OPS:
        assert shim.OP_SCHEMAS[name].startswith(name + "(")
        if hasattr(npuquant, name):
            assert getattr(shim, name) is getattr(npuquant, name)


# ------------------------------------------------------------------- an op test, end to end


OP_TEST = """
import numpy as np
import torch
import torch_npu
from torch_npu.testing.testcase import TestCase, run_tests
from torch_npu.testing.common_utils import SupportedDevices, create_common_tensor


class TestQuantFlow(TestCase):
    @SupportedDevices(["Ascend910B"])
    def test_dynamic_quant_then_matmul(self):
        x = torch.randn(8, 64, dtype=torch.float16).npu()
        y, s = torch_npu.npu_dynamic_quant(x)
        _, w = create_common_tensor([np.int8, 29, [64, 32]], -127, 127)
        self.assertEqual(torch_npu.get_npu_format(w), 29)
        out = torch.ops.npu.npu_quant_matmul(y, w, torch.ones(32), pertoken_scale=s, output_dtype=torch.float16)
        golden = (y.int() @ w.int()).float() * s[:, None]
        self.assertRtolEqual(out.float().numpy(), golden.numpy(), 0.01)

    @SupportedDevices(["Ascend950"])
    def test_950_only(self):
        self.fail("must not run on the A2 line")


if __name__ == "__main__":
    run_tests()
"""


def test_op_test_file_runs_unmodified_under_npuquant_run(tmp_path):
    (tmp_path / "test_quant_flow.py").write_text(OP_TEST)
    proc = _run("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_quant_flow.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout
    assert "Only run on ['Ascend950'], current device is Ascend910B" in proc.stdout
    proc = _run("test_quant_flow.py", cwd=tmp_path)  # run_tests(): unittest's own runner
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK (skipped=1)" in proc.stderr
    proc = _run(
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "test_quant_flow.py",
        cwd=tmp_path,
        env={"NPUQUANT_SOC": "Ascend950PR"},
    )
    assert proc.returncode == 1 and "must not run on the A2 line" in proc.stdout
    proc = _run("test_quant_flow.py", cwd=tmp_path, env={"NPUQUANT_SOC": "GPU"})
    assert proc.returncode == 2 and "must name an Ascend SoC" in proc.stderr
