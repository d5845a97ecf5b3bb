"""``torch_npu.contrib.module`` stand-in: the quantized linear modules of :mod:`npuquant.contrib.module`."""

from __future__ import annotations

import importlib

MODULES = ("LinearA8W8Quant", "LinearQuant")


def _lookup(name: str):
    try:
        source = importlib.import_module("npuquant.contrib.module")
    except ModuleNotFoundError as exc:
        if exc.name in ("npuquant.contrib", "npuquant.contrib.module"):
            return None
        raise
    return getattr(source, name, None)


for _name in MODULES:
    _cls = _lookup(_name)
    if _cls is not None:
        globals()[_name] = _cls
del _name, _cls


def __getattr__(name: str):
    if name in MODULES:
        cls = _lookup(name)
        if cls is not None:
            globals()[name] = cls
            return cls
        raise AttributeError(
            f"torch_npu.contrib.module.{name} is not available: this npuquant has no npuquant.contrib.module.{name}"
        )
    raise AttributeError(
        f"module 'torch_npu.contrib.module' has no attribute {name!r} (npuquant.compat emulates {', '.join(MODULES)})"
    )
