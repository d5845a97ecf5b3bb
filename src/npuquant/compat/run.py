"""``npuquant run SCRIPT [ARGS...]``: run a script written for torch_npu with the compatibility layer.

Behaves like ``python SCRIPT ARGS...``: the script runs as ``__main__`` with ``sys.argv`` set to
``[SCRIPT, *ARGS]`` and its directory first on ``sys.path``; the exit status is the script's
(0, its ``sys.exit`` code, 1 after an uncaught exception whose traceback is printed). ``-m MODULE``
runs a module like ``python -m``. ``--save FILE`` writes the script's top-level tensors to FILE
(``torch.save`` of a dict name -> tensor) when it ends, to compare with a run on Ascend.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import os
import runpy
import sys
import traceback
import types

USAGE = """usage: npuquant run [--save FILE] SCRIPT [ARGS...]
       npuquant run [--save FILE] -m MODULE [ARGS...]

Run a script written for torch_npu / torchair unmodified: npuquant.compat is installed first, so
`import torch_npu` works and 'npu' devices are the CPU. The emulated SoC is $NPUQUANT_SOC
(default Ascend910B4). Ascend's op tests run with `npuquant run -m pytest FILE`. Options (before SCRIPT):
  -m MODULE    run a module, like python -m
  --save FILE  when the script ends, torch.save its top-level tensors (dict name -> tensor) to FILE
  -h, --help   show this help"""


def _exit_code(exc: SystemExit) -> int:
    """What Python's interpreter makes of SystemExit(code)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):  # bool included: unittest.main() exits with sys.exit(False) on success
        return int(code)
    print(code, file=sys.stderr)
    return 1


def _print_script_traceback(exc: BaseException) -> None:
    """The traceback Python would print: from the script's first frame on, without the runner's."""
    if isinstance(exc, SyntaxError):
        traceback.print_exception(type(exc), exc, None)
        return
    tb = exc.__traceback__
    runner_files = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None and tb.tb_next is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in runner_files:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _save_tensors(namespace: dict, path: str) -> None:
    import torch

    tensors = {name: value for name, value in namespace.items() if isinstance(value, torch.Tensor)}
    torch.save(tensors, path)


def _run_file(path: str, main_module: types.ModuleType) -> None:
    """Compiles and executes a script file as the ``__main__`` module, like the interpreter does."""
    with open(path, "rb") as f:
        source = f.read()
    main_module.__dict__.update(
        __file__=os.path.abspath(path),
        __builtins__=builtins,
        __cached__=None,
        __loader__=importlib.machinery.SourceFileLoader("__main__", path),
        __package__=None,
        __spec__=None,
    )
    exec(compile(source, path, "exec", dont_inherit=True), main_module.__dict__)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``npuquant run``; returns the exit status."""
    from . import CompatError, install, uninstall

    args = list(sys.argv[1:] if argv is None else argv)
    save_path = None
    module_name = None
    while args and args[0].startswith("-"):
        option = args.pop(0)
        if option in ("-h", "--help"):
            print(USAGE)
            return 0
        if option == "--save" and args:
            save_path = args.pop(0)
        elif option.startswith("--save="):
            save_path = option.split("=", 1)[1]
        elif option == "-m" and args:
            module_name = args.pop(0)
            break
        else:
            print(f"npuquant run: unknown or incomplete option {option!r}\n{USAGE}", file=sys.stderr)
            return 2
    if module_name is None:
        if not args:
            print(USAGE, file=sys.stderr)
            return 2
        script = args[0]
        if not os.path.exists(script):
            print(f"npuquant run: can't open file {script!r}: No such file or directory", file=sys.stderr)
            return 2

    try:
        install()
    except (CompatError, ValueError) as exc:  # ValueError: a bad $NPUQUANT_SOC
        print(f"npuquant run: {exc}", file=sys.stderr)
        return 2

    saved_argv, saved_path, saved_main = sys.argv[:], sys.path[:], sys.modules.get("__main__")
    namespace: dict = {}
    status = 0
    try:
        if module_name is not None:
            sys.argv = [module_name, *args]
            sys.path[0:1] = [os.getcwd()]
            namespace = runpy.run_module(module_name, run_name="__main__", alter_sys=True)
        elif os.path.isdir(script) or (not script.endswith((".py", ".pyw")) and _is_zip(script)):
            sys.argv = list(args)
            sys.path[0:1] = [script]
            namespace = runpy.run_path(script, run_name="__main__")
        else:
            sys.argv = list(args)
            sys.path[0:1] = [os.path.dirname(os.path.abspath(script))]
            main_module = types.ModuleType("__main__")
            namespace = main_module.__dict__
            sys.modules["__main__"] = main_module
            _run_file(script, main_module)
    except SystemExit as exc:
        status = _exit_code(exc)
    except KeyboardInterrupt as exc:
        _print_script_traceback(exc)
        status = 130
    except BaseException as exc:  # noqa: BLE001 - reported like the interpreter does
        _print_script_traceback(exc)
        status = 1
    finally:
        sys.stdout.flush()
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        if saved_main is not None:
            sys.modules["__main__"] = saved_main
        if save_path is not None:
            try:
                _save_tensors(namespace, save_path)
            except Exception as exc:  # noqa: BLE001 - the script's own status matters more
                print(f"npuquant run: could not save tensors to {save_path!r}: {exc}", file=sys.stderr)
                status = status or 1
        uninstall()
    return status


def _is_zip(path: str) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


if __name__ == "__main__":
    sys.exit(main())
