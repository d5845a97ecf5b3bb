"""Run code written for Ascend (torch_npu, torchair, pypto) unmodified on any machine.

``install()`` (opt-in) makes these importable and maps the NPU onto the CPU:

* ``torch_npu`` with the quantization ops npuquant serves (``torch_npu.OP_SCHEMAS``), also as
  ``torch.ops.npu.<op>`` with torch_npu's schemas; ``torch_npu.npu`` helpers (set_device,
  synchronize, is_available, set_compile_mode, ...); ``npu_format_cast`` / ``get_npu_format`` /
  ``torch_npu.Format`` (the format is recorded, the values never change);
  ``torch_npu.testing.testcase`` / ``common_utils`` (Ascend's op-test harness: ``TestCase.assertRtolEqual``,
  ``SupportedDevices``, ``create_common_tensor``, ``run_tests``); and
  ``torch_npu.contrib.module.{LinearA8W8Quant, LinearQuant}``;
* an emulated SoC: ``torch.npu.get_device_name()`` reports ``install(soc=...)``, else
  ``$NPUQUANT_SOC``, else ``Ascend910B4`` (Atlas A2), so tests gated on a product line run that
  line's cases;
* ``torchair`` with ``CompilerConfig`` and ``get_npu_backend(compiler_config=...)``, a
  ``torch.compile`` backend that runs on the CPU;
* ``pypto`` as an alias of ``npuquant.pypto`` (only if no real pypto is importable);
* ``Tensor.npu()``, ``Module.npu()``, ``Tensor.is_npu``, ``torch.npu``, and the devices ``'npu'`` /
  ``'npu:N'`` in factory functions (``device=``) and ``.to()``, all meaning the CPU.

``uninstall()`` takes all of it back. What cannot be taken back (PyTorch offers no way):

* PyTorch's PrivateUse1 backend keeps the name ``npu`` (``torch.utils.rename_privateuse1_backend``
  works once per process), so ``torch.device('npu')`` still parses; creating a tensor there fails
  like on any backend without kernels. ``torch.accelerator.current_accelerator()`` keeps reporting
  ``npu`` (on a CUDA machine this hides CUDA from ``torch.accelerator``; pass
  ``rename_privateuse1=False`` or use a separate process, as ``npuquant run`` does).
* Because torch requires a device module for a named backend, ``torch.npu`` stays registered as an
  inert module: ``is_available()`` is False and ``device_count()`` is 0, as on a machine without NPUs.
* ``torch.ops.npu.<op>`` definitions (``torch.library`` cannot remove an operator): they stay, inert,
  raising RuntimeError when called ("... only while npuquant.compat is installed").

Other notes: the device redirection is a ``TorchFunctionMode``, which PyTorch keeps per thread, so
it applies in the thread that called ``install()``; ``torch.npu.is_available()`` is True while
installed, but ``torch.accelerator.is_available()`` stays False (no real accelerator exists, and
``torch.compile`` asks it before touching streams).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
import types
import warnings
from collections.abc import Iterator

import torch

from . import _device, _ops
from .shims.torch_npu import npu as _npu

__all__ = ["CompatError", "install", "uninstall", "is_installed", "installed", "EMULATED_MODULES"]

_SHIMS = "npuquant.compat.shims"
# Names made importable while installed -> the module that serves them. Sub-modules of these
# names map to the same sub-path of the target (e.g. torch_npu.contrib.module).
EMULATED_MODULES: dict[str, str] = {
    "torch_npu": f"{_SHIMS}.torch_npu",
    "torchair": f"{_SHIMS}.torchair",
}
_OPTIONAL_ALIASES: dict[str, str] = {"pypto": "npuquant.pypto"}  # used only if the target exists

_MISSING = object()
_lock = threading.RLock()
_state: _InstallState | None = None


class CompatError(RuntimeError):
    """install() refused: the real Ascend stack is importable, or another backend owns the name."""


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``import torch_npu[.x]`` / ``torchair[.x]`` / ``pypto[.x]`` from npuquant's modules."""

    def __init__(self, aliases: dict[str, str]) -> None:
        self.aliases = aliases
        self._original_specs: dict[str, object] = {}

    def _target(self, fullname: str) -> str | None:
        root, _, rest = fullname.partition(".")
        if root not in self.aliases:
            return None
        return self.aliases[root] + ("." + rest if rest else "")

    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib protocol
        target_name = self._target(fullname)
        if target_name is None:
            return None
        try:
            found = importlib.util.find_spec(target_name)
        except ModuleNotFoundError:
            found = None
        if found is None:
            # Not emulated: report "No module named ..." the standard way (find_spec probes expect None).
            return None
        is_package = found.submodule_search_locations is not None
        return importlib.machinery.ModuleSpec(fullname, self, origin=found.origin, is_package=is_package)

    def create_module(self, spec):
        module = importlib.import_module(self._target(spec.name))
        # The import system overwrites __spec__ on the module we hand back; keep the real one.
        self._original_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module) -> None:
        for alias, original in list(self._original_specs.items()):
            if sys.modules.get(alias) is module:
                module.__spec__ = original
                del self._original_specs[alias]


class _InstallState:
    def __init__(self) -> None:
        self.finder: _AliasFinder | None = None
        self.saved_attrs: list[tuple[object, str, object]] = []
        self.mode: _device.NpuToCpuMode | None = None


def _module_importable(name: str) -> str | None:
    """Where a real (non-npuquant) module of this name would be imported from, or None."""
    existing = sys.modules.get(name)
    if existing is not None:
        return getattr(existing, "__file__", None) or repr(existing)
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or name


def _patch(owner: object, name: str, value: object, state: _InstallState) -> None:
    state.saved_attrs.append((owner, name, getattr(owner, "__dict__", {}).get(name, _MISSING)))
    setattr(owner, name, value)


def install(*, rename_privateuse1: bool = True, soc: str | None = None) -> None:
    """Make torch_npu / torchair importable and map ``npu`` devices to the CPU (idempotent).

    Args:
        rename_privateuse1: rename PyTorch's PrivateUse1 backend to ``npu`` so that
            ``torch.device('npu:4')`` parses. This cannot be undone within the process (see the
            module docstring); with False, ``'npu'`` strings in ``device=`` and ``.to()`` still work.
        soc: the Ascend SoC name ``torch.npu.get_device_name()`` reports (e.g. ``"Ascend910B4"``,
            ``"Ascend310P3"``, ``"Ascend950PR"``); default ``$NPUQUANT_SOC``, else ``"Ascend910B4"``.
            Given while already installed, it switches the emulated SoC.

    Raises:
        CompatError: a real torch_npu is importable (use it instead), or PrivateUse1 already
            belongs to another backend called ``npu``.
        ValueError: ``soc`` (or ``$NPUQUANT_SOC``) is not an Ascend SoC name.
    """
    global _state
    with _lock:
        if _state is not None:
            if soc is not None:
                _npu._set_soc(_npu.resolve_soc(soc))
            return
        soc_name = _npu.resolve_soc(soc)
        real = _module_importable("torch_npu")
        if real is not None:
            raise CompatError(
                f"npuquant.compat.install(): a real torch_npu is importable ({real}). The compatibility layer "
                "only stands in for torch_npu on machines without it; use the real torch_npu, or run in an "
                "environment where it is not installed."
            )
        backend = torch._C._get_privateuse1_backend_name()
        if backend == "npu" and not _device.owns_torch_npu_attr():
            raise CompatError(
                "npuquant.compat.install(): PyTorch's PrivateUse1 backend is already named 'npu' by another "
                "library (torch.npu is not npuquant's); refusing to shadow it."
            )
        aliases = dict(EMULATED_MODULES)
        for alias, target in _OPTIONAL_ALIASES.items():
            if _module_importable(alias) is None and importlib.util.find_spec(target) is not None:
                aliases[alias] = target

        state = _InstallState()
        try:
            if backend == "privateuseone" and rename_privateuse1:
                torch.utils.rename_privateuse1_backend("npu")
            elif backend not in ("npu", "privateuseone"):
                warnings.warn(
                    f"npuquant.compat: PyTorch's PrivateUse1 backend is named {backend!r}, so "
                    "torch.device('npu') will not parse; 'npu' strings in device= and .to() still map to the CPU.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _device.activate(state, _patch)
            _npu._set_soc(soc_name)
            _ops.register()
            state.finder = _AliasFinder(aliases)
            sys.meta_path.insert(0, state.finder)
        except BaseException:
            _undo(state)
            raise
        _state = state


def _undo(state: _InstallState) -> None:
    if state.finder is not None:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(state.finder)
        for name in list(sys.modules):
            if state.finder._target(name) is not None:
                module = sys.modules[name]
                target = sys.modules.get(state.finder._target(name))
                if module is target or target is None:
                    del sys.modules[name]
    _ops.deactivate()
    _npu._set_soc(_npu.DEFAULT_SOC)
    _device.deactivate(state)
    for owner, name, previous in reversed(state.saved_attrs):
        if previous is _MISSING:
            with contextlib.suppress(AttributeError):
                delattr(owner, name)
        else:
            setattr(owner, name, previous)
    state.saved_attrs.clear()


def uninstall() -> None:
    """Undo :func:`install` (no-op when not installed). See the module docstring for what remains."""
    global _state
    with _lock:
        if _state is None:
            return
        state, _state = _state, None
        _undo(state)


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _state is not None


@contextlib.contextmanager
def installed(**options: object) -> Iterator[types.ModuleType]:
    """``with npuquant.compat.installed(): ...`` installs for the block (if not already) and yields ``torch_npu``."""
    was_installed = is_installed()
    install(**options)
    try:
        yield importlib.import_module("torch_npu")
    finally:
        if not was_installed:
            uninstall()
