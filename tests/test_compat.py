"""npuquant.compat: install()/uninstall(), the torch_npu / torchair stand-ins, 'npu' devices on the
CPU, graph mode through the torchair backend, and ``npuquant run``.

install() changes process-wide torch state (it renames PyTorch's PrivateUse1 backend, which
cannot be undone), so every test that installs runs in its own Python process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npuquant.compat import run as compat_run
from npuquant.compat._device import is_npu_device
from npuquant.compat.shims.torchair.configs.compiler_config import CompilerConfig

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, *, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"subprocess failed ({proc.returncode})\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def _npuquant_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "npuquant", "run", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


# ------------------------------------------------------------------------ in process (no install)


def test_npu_device_recognition():
    import torch

    for device in ("npu", "npu:0", "npu:7", 0, 3):
        assert is_npu_device(device), device
    for device in ("cpu", "cuda:0", "npux", True, None, 1.0, torch.device("cpu")):
        assert not is_npu_device(device), device


def test_compiler_config_accepts_the_seed_attribute_paths():
    config = CompilerConfig()
    assert config.debug.graph_dump.type is None and config.mode == "max-autotune"
    config.debug.graph_dump.type = "pbtxt"  # seed 000
    config.experimental_config.frozen_parameter = True
    config.some.option.torchair.adds.later = 5  # unknown paths are kept, never an error
    assert config.debug.graph_dump.type == "pbtxt"
    assert config.as_dict()["some"] == {"option": {"torchair": {"adds": {"later": 5}}}}
    assert config.experimental_config.frozen_parameter is True
    assert "pbtxt" in repr(config)
    with pytest.raises(AttributeError):
        config.__deepcopy_hook__  # noqa: B018 - dunder names are never auto-created


def test_run_usage_errors(capsys):
    assert compat_run.main(["--help"]) == 0
    assert "npuquant run" in capsys.readouterr().out
    assert compat_run.main([]) == 2
    assert compat_run.main(["--bogus", "x.py"]) == 2
    assert compat_run.main(["--save"]) == 2
    assert compat_run.main([str(ROOT / "no_such_script.py")]) == 2
    assert "can't open file" in capsys.readouterr().err


# ---------------------------------------------------------------------- install / uninstall (subprocess)


def test_install_then_uninstall_leaves_torch_as_found():
    _python(
        """
        import sys, types, warnings
        import torch
        from torch.overrides import TorchFunctionMode
        import npuquant.compat as compat

        def snapshot():
            return {
                "torch": {k: id(v) for k, v in vars(torch).items()},
                "Tensor": {k: id(v) for k, v in vars(torch.Tensor).items()},
                "Module": {k: id(v) for k, v in vars(torch.nn.Module).items()},
                "accelerator": {k: id(v) for k, v in vars(torch.accelerator).items()},
                "meta_path": [id(f) for f in sys.meta_path],
                "modes": torch._C._len_torch_function_stack(),
                "emulated": sorted(m for m in sys.modules if m.split(".")[0] in ("torch_npu", "torchair", "pypto")),
            }

        def same(before, after):
            for part in ("Tensor", "Module", "accelerator", "meta_path", "modes", "emulated"):
                assert before[part] == after[part], (part, before[part], after[part])
            # torch may gain lazily imported sub-modules; the only other difference allowed is the
            # inert torch.npu that must stay registered for the renamed PrivateUse1 backend.
            changed = {k for k in before["torch"] if after["torch"].get(k) != before["torch"][k]}
            added = {k for k in after["torch"] if k not in before["torch"]}
            assert not changed, changed
            assert all(isinstance(getattr(torch, k), types.ModuleType) for k in added), added

        def behaves_like_plain_torch():
            import importlib
            for name in ("torch_npu", "torchair"):
                try:
                    importlib.import_module(name)
                except ModuleNotFoundError:
                    pass
                else:
                    raise AssertionError(name + " still importable")
            assert not hasattr(torch.Tensor, "npu") and not hasattr(torch.nn.Module, "npu")
            for make in (lambda: torch.zeros(2, device="npu"), lambda: torch.ones(2).to("npu")):
                try:
                    make()
                except (RuntimeError, NotImplementedError):
                    pass
                else:
                    raise AssertionError("an npu tensor was created without the compatibility layer")
            assert torch.zeros(2).device.type == "cpu"
            assert not torch.accelerator.is_available()
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                torch.manual_seed(0)
            f = torch.compile(lambda x: torch.sin(x) + 1, backend="aot_eager", fullgraph=True)
            assert torch.equal(f(torch.zeros(3)), torch.ones(3))

        behaves_like_plain_torch()
        before = snapshot()
        assert torch._C._get_privateuse1_backend_name() == "privateuseone"

        # Without the PrivateUse1 rename everything is undone, and 'npu' strings still map to the CPU.
        compat.install(rename_privateuse1=False)
        assert torch.zeros(2, device="npu").device.type == "cpu" and torch.npu.is_available()
        try:
            torch.device("npu")
        except RuntimeError:
            pass
        else:
            raise AssertionError("torch.device('npu') parsed without the rename")
        compat.uninstall()
        assert torch._C._get_privateuse1_backend_name() == "privateuseone"
        assert not hasattr(torch, "npu") and "torch.npu" not in sys.modules
        same(before, snapshot())
        behaves_like_plain_torch()

        for round_ in range(2):  # install twice (idempotent), uninstall twice, and again
            compat.install()
            compat.install()
            assert compat.is_installed()
            import torch_npu
            assert torch.npu is torch_npu.npu and torch.npu.is_available()
            assert torch.ones(2).npu().device.type == "cpu"
            assert torch._C._len_torch_function_stack() == 1
            compat.uninstall()
            compat.uninstall()
            assert not compat.is_installed()
            same(before, snapshot())
            behaves_like_plain_torch()

        # What stays (documented): the PrivateUse1 name and an inert torch.npu.
        assert torch._C._get_privateuse1_backend_name() == "npu"
        assert torch.device("npu:1").type == "npu"
        assert not torch.npu.is_available() and torch.npu.device_count() == 0

        # A mode the user pushed after install() survives uninstall(); ours is removed from under it.
        class Counting(TorchFunctionMode):
            calls = 0
            def __torch_function__(self, func, types, args=(), kwargs=None):
                Counting.calls += 1
                return func(*args, **(kwargs or {}))
        compat.install()
        user_mode = Counting()
        user_mode.__enter__()
        compat.uninstall()
        assert torch._C._len_torch_function_stack() == 1
        torch.zeros(1)
        assert Counting.calls > 0
        user_mode.__exit__(None, None, None)
        same(before, snapshot())

        # The context manager form.
        with compat.installed() as tn:
            assert tn.npu_anti_quant is not None and compat.is_installed()
        assert not compat.is_installed()
        same(before, snapshot())
        print("ok")
        """
    )


def test_install_refuses_when_a_real_torch_npu_is_importable(tmp_path):
    fake = tmp_path / "torch_npu"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the real torch_npu must not be imported by the check')\n")
    script = tmp_path / "uses_npu.py"
    script.write_text("import torch_npu\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    _python(
        f"""
        import io, sys, contextlib
        import torch
        import npuquant.compat as compat
        from npuquant.compat import run
        meta_path = list(sys.meta_path)
        try:
            compat.install()
        except compat.CompatError as exc:
            message = str(exc)
        else:
            raise AssertionError("install() did not refuse")
        assert "a real torch_npu is importable" in message and {str(fake)!r} in message, message
        # Refusing changed nothing.
        assert not compat.is_installed() and sys.meta_path == meta_path
        assert torch._C._get_privateuse1_backend_name() == "privateuseone"
        assert not hasattr(torch, "npu") and not hasattr(torch.Tensor, "npu")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = run.main([{str(script)!r}])
        assert status == 2 and "a real torch_npu is importable" in err.getvalue(), (status, err.getvalue())
        print("ok")
        """,
        env=env,
    )


def test_npu_devices_are_the_cpu():
    _python(
        """
        import torch
        import npuquant.compat as compat
        compat.install()
        import torch_npu

        assert str(torch.device("npu:4")) == "npu:4"
        for device in ("npu", "npu:1", torch.device("npu", 2), torch.device("npu:4"), 0):
            for make in (
                lambda: torch.zeros(2, device=device),
                lambda: torch.randn(2, 3, device=device, dtype=torch.float16),
                lambda: torch.tensor([1, 2], device=device),
                lambda: torch.arange(3, device=device),
                lambda: torch.empty_like(torch.ones(2), device=device),
                lambda: torch.ones(2).new_zeros(3, device=device),
                lambda: torch.ones(2).to(device),
                lambda: torch.ones(2).to(device, torch.float16),
                lambda: torch.ones(2).to(device=device, non_blocking=True),
                lambda: torch.nn.Linear(2, 2, device=device).weight,
            ):
                assert make().device.type == "cpu", device
        with torch.device("npu:1"):
            assert torch.zeros(1).device.type == "cpu"

        t = torch.ones(3)
        assert t.npu() is t and t.npu(0) is t and t.npu("npu:3") is t and t.is_npu
        assert torch.ones(2, dtype=torch.float64).npu(non_blocking=True).dtype == torch.float64
        lin = torch.nn.Linear(2, 2)
        assert lin.npu() is lin and lin.to("npu:0") is lin and lin.weight.device.type == "cpu"
        for bad in (lambda: t.npu("cuda:0"), lambda: lin.npu("cpu")):
            try:
                bad()
            except ValueError:
                pass
            else:
                raise AssertionError("a non-npu target was accepted")

        npu = torch_npu.npu
        assert torch.npu is npu and npu.is_available() and npu.device_count() == 1
        assert not torch.accelerator.is_available()  # torch.compile must not look for device streams
        npu.set_device(torch.device("npu:4"))
        assert npu.current_device() == 4
        npu.set_device("npu:2"); npu.set_device(1)
        assert npu.current_device() == 1
        with npu.device("npu:6"):
            assert npu.current_device() == 6
        assert npu.current_device() == 1
        for bad in ("cuda:0", -1, "npu:x", 1.5):
            try:
                npu.set_device(bad)
            except ValueError:
                pass
            else:
                raise AssertionError(f"set_device({bad!r}) was accepted")
        npu.synchronize(); npu.synchronize("npu:1"); npu.set_compile_mode(jit_compile=True)
        assert not npu.is_jit_compile_false()
        npu.empty_cache()
        assert npu.memory_allocated() == 0 and isinstance(npu.get_device_name(0), str)
        npu.config.allow_internal_format = False
        npu.matmul.allow_hf32 = True
        npu.manual_seed(7); a = torch.randn(4, device="npu")
        torch.manual_seed(7); b = torch.randn(4)
        assert torch.equal(a, b)  # seeding the NPU seeds the generator its tensors come from
        start, end = npu.Event(enable_timing=True), npu.Event(enable_timing=True)
        start.record(); end.record(); end.synchronize()
        assert start.elapsed_time(end) >= 0
        s = npu.Stream()
        with npu.stream(s):
            assert npu.current_stream() is s
        assert npu.current_stream() is npu.default_stream()
        print("ok")
        """
    )


def test_torch_npu_and_torchair_surface():
    _python(
        """
        import importlib, importlib.util, logging
        import torch
        import npuquant
        import npuquant.compat as compat
        compat.install()
        import torch_npu
        import torchair
        from torch_npu.contrib.module import LinearA8W8Quant, LinearQuant
        from torchair.configs.compiler_config import CompilerConfig
        from torchair.ge_concrete_graph import ge_apis as ge
        from torchair.core.utils import logger

        # Every op of SPEC Part I that npuquant has is torch_npu's; missing ones fail with a clear message.
        for name in torch_npu.OPS:
            if hasattr(npuquant, name):
                assert getattr(torch_npu, name) is getattr(npuquant, name), name
            else:
                try:
                    getattr(torch_npu, name)
                except AttributeError as exc:
                    assert "is not provided by npuquant" in str(exc)
        assert torch_npu.npu_anti_quant is npuquant.npu_anti_quant
        import npuquant.contrib.module as contrib
        assert LinearA8W8Quant is contrib.LinearA8W8Quant and LinearQuant is contrib.LinearQuant
        w = torch.ones(4, 8, dtype=torch.int8)
        nz = torch_npu.npu_format_cast(w, 29)
        assert torch_npu.get_npu_format(nz) == 29 and torch_npu.get_npu_format(w) == 2 and torch.equal(nz, w)
        assert torch_npu.npu_format_cast(w, 2) is w and torch_npu.npu_format_cast_(w, 2) is w
        for bad in (lambda: torch_npu.npu_format_cast(w, "nz"), lambda: torch_npu.npu_format_cast([1], 2)):
            try:
                bad()
            except TypeError:
                pass
            else:
                raise AssertionError("bad npu_format_cast arguments accepted")
        try:
            torch_npu.npu_flash_attention
        except AttributeError as exc:
            assert "torch_npu.npu_flash_attention is not provided by npuquant" in str(exc)
        else:
            raise AssertionError
        try:
            importlib.import_module("torch_npu.testing.common")
        except ModuleNotFoundError as exc:
            assert exc.name == "torch_npu.testing.common", exc
        else:
            raise AssertionError
        assert importlib.util.find_spec("torch_npu.testing.testcase") is not None
        assert torch_npu.__version__.endswith("+npuquant")
        # Aliased modules keep their own identity.
        assert torch_npu.__spec__.name == "npuquant.compat.shims.torch_npu"

        assert torchair.CompilerConfig is CompilerConfig
        assert logger is logging.getLogger("torchair")
        try:
            ge.Cast
        except AttributeError as exc:
            assert "not emulated" in str(exc)
        else:
            raise AssertionError
        model = torch.nn.Linear(2, 2)
        assert torchair.experimental.inference.use_internal_format_weight(model) is None
        for bad in (lambda: torchair.experimental.inference.use_internal_format_weight("m"),
                    lambda: torchair.get_npu_backend(compiler_config={"mode": 1})):
            try:
                bad()
            except TypeError:
                pass
            else:
                raise AssertionError
        assert "npuquant" in repr(torchair.get_npu_backend())

        import pypto
        import npuquant.pypto
        assert pypto is npuquant.pypto
        compat.uninstall()
        for name in ("torch_npu", "torchair", "pypto"):
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                pass
            else:
                raise AssertionError(name)
        print("ok")
        """
    )


def test_graph_mode_through_the_torchair_backend():
    _python(
        """
        import torch
        import torch._dynamo
        from torch._dynamo.utils import counters
        import npuquant.compat as compat
        compat.install()
        import torch_npu
        import torchair as tng
        from torchair.configs.compiler_config import CompilerConfig

        config = CompilerConfig()
        config.debug.graph_dump.type = "pbtxt"
        backend = tng.get_npu_backend(compiler_config=config)
        compiled_graphs = []

        def counting(gm, example_inputs):
            compiled_graphs.append(gm)
            return backend(gm, example_inputs)

        class Model(torch.nn.Module):
            def forward(self, x, scale, offset):
                y = torch_npu.npu_anti_quant(x, scale, offset=offset, dst_dtype=torch.float16)
                # NPU device arguments inside the graph map to the CPU as well.
                return y.to("npu") + torch.zeros(y.shape[-1], dtype=torch.float16, device="npu")

        scale = torch.tensor([2.0]).npu()
        offset = torch.tensor([2.0]).npu()
        model = Model().npu()
        eager = model(torch.tensor([1, 2, 3, 4], dtype=torch.int8), scale, offset)
        assert eager.tolist() == [6.0, 8.0, 10.0, 12.0]
        for dynamic in (False, True):
            torch._dynamo.reset()
            counters.clear()
            compiled_graphs.clear()
            compiled = torch.compile(model, backend=counting, dynamic=dynamic, fullgraph=True)
            for n in (4, 8, 12):
                x = torch.arange(n, dtype=torch.int8).reshape(1, n).npu()
                assert torch.equal(compiled(x, scale, offset), model(x, scale, offset)), (dynamic, n)
            assert not counters["graph_break"], dict(counters["graph_break"])
            # Static shapes recompile per size; dynamic shapes compile once.
            assert len(compiled_graphs) == (1 if dynamic else 3), (dynamic, len(compiled_graphs))
            ops = [str(node.target) for gm in compiled_graphs for node in gm.graph.nodes]
            assert "npuquant.dequant_affine.default" in ops, ops

        # Backend selection: debug.run_eagerly and the environment override.
        import os
        from torchair import _backend_name
        assert _backend_name(CompilerConfig()) == "aot_eager"
        eager_config = CompilerConfig()
        eager_config.debug.run_eagerly = True
        assert _backend_name(eager_config) == "eager"
        os.environ["NPUQUANT_TORCHAIR_BACKEND"] = "eager"
        assert _backend_name(CompilerConfig()) == "eager"
        torch._dynamo.reset()
        f = torch.compile(lambda x: torch_npu.npu_anti_quant(x, scale), backend=tng.get_npu_backend(), fullgraph=True)
        assert f(torch.tensor([1, -1], dtype=torch.int8)).tolist() == [2.0, -2.0]
        print("ok")
        """
    )


def test_run_behaves_like_python(tmp_path):
    (tmp_path / "helper_mod.py").write_text("VALUE = 41\n")
    (tmp_path / "ok.py").write_text(
        textwrap.dedent(
            """
            import pickle, sys
            import torch, torch_npu
            import helper_mod  # the script's directory comes first on sys.path
            class Point:
                pass
            assert pickle.loads(pickle.dumps(Point())).__class__.__module__ == "__main__"
            assert __name__ == "__main__" and __file__.endswith("ok.py")
            result = torch.tensor([helper_mod.VALUE + 1])
            print("argv", sys.argv[1:], torch.npu.is_available())
            if __name__ == "__main__":
                sys.exit(int(sys.argv[1]))
            """
        )
    )
    saved = tmp_path / "saved.pt"
    proc = _npuquant_run("--save", str(saved), str(tmp_path / "ok.py"), "3", "--flag", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "argv ['3', '--flag'] True"
    import torch

    assert torch.load(saved) == {"result": torch.tensor([42])}

    (tmp_path / "fails.py").write_text("import torch_npu\n\ndef inner():\n    raise ValueError('boom')\n\ninner()\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit('fatal: no input')\n")
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    package = tmp_path / "pkg_main"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tool.py").write_text("import sys, torch_npu\nprint('module', sys.argv[1:], __name__)\n")
    # The remaining cases share one process: run.main() installs and uninstalls around each script.
    proc = _python(
        """
        import contextlib, io, json
        from npuquant.compat import run, is_installed
        results = {}
        for name, argv in (("fails", ["fails.py"]), ("exits", ["exits.py"]), ("syntax", ["syntax.py"]),
                           ("module", ["-m", "pkg_main.tool", "a"])):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = run.main(argv)
            assert not is_installed()
            results[name] = [status, out.getvalue(), err.getvalue()]
        print(json.dumps(results))
        """,
        cwd=tmp_path,
    )
    results = json.loads(proc.stdout)

    status, _, stderr = results["fails"]
    assert status == 1 and stderr.startswith("Traceback (most recent call last):")
    first_frame = stderr.splitlines()[1]
    assert "fails.py" in first_frame and "line 6" in first_frame, stderr
    assert "run.py" not in stderr and "ValueError: boom" in stderr

    assert results["exits"][0] == 1 and results["exits"][2].strip() == "fatal: no input"
    assert results["syntax"][0] == 1 and "SyntaxError" in results["syntax"][2]
    assert results["module"][:2] == [0, "module ['a'] __main__\n"], results["module"]
