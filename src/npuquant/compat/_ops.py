"""``torch.ops.npu.<op>``: torch_npu's operator namespace for the ops npuquant serves.

Clients such as vllm-ascend call ``torch.ops.npu.npu_quant_matmul(...)`` directly. The first
:func:`npuquant.compat.install` defines each op of ``torch_npu.OP_SCHEMAS`` (with the overloads of
``torch_npu.OVERLOAD_SCHEMAS``, and the format casts)
in a ``torch.library`` fragment of the ``npu`` namespace, with torch_npu's schema and a
CompositeImplicitAutograd kernel that calls the ``torch_npu`` stand-in's function, so eager calls,
``torch.compile`` (which traces into npuquant's own operators) and the dtype codes behave as
``torch_npu.<op>`` does.

PyTorch cannot remove an operator definition, so the fragment stays for the rest of the process:
after :func:`npuquant.compat.uninstall` the ops still exist but are inert, raising RuntimeError
("... only while npuquant.compat is installed"). Ops already defined in ``torch.ops.npu`` by
someone else are left alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from .shims import torch_npu as shim

__all__ = ["register", "FORMAT_SCHEMAS", "registered_ops"]

#: Format ops, beside the quantization ops of ``torch_npu.OP_SCHEMAS``.
FORMAT_SCHEMAS: dict[str, str] = {
    "npu_format_cast": (
        "npu_format_cast(Tensor(a) self, int acl_format, ScalarType? customize_dtype=None, "
        "int? input_dtype=None) -> Tensor(a)"
    ),
    "npu_format_cast_": "npu_format_cast_(Tensor(a!) self, int acl_format) -> Tensor(a!)",
    "get_npu_format": "get_npu_format(Tensor self) -> int",
}

_lock = threading.Lock()
_library: torch.library.Library | None = None
_registered: list[str] = []
_active = False


def _kernel(name: str) -> Callable:
    def kernel(*args, **kwargs):
        if not _active:
            raise RuntimeError(
                f"torch.ops.npu.{name} is served by npuquant.compat only while npuquant.compat is installed "
                "(npuquant.compat.install() or `npuquant run`)"
            )
        return getattr(shim, name)(*args, **kwargs)

    kernel.__name__ = name
    return kernel


def _exists(name: str) -> bool:
    """``name``: an op (``npu_x``) or one of its overloads (``npu_x.List``)."""
    try:
        op = getattr(torch.ops.npu, name.split(".")[0])
        if "." in name:
            getattr(op, name.split(".")[1])
    except (AttributeError, RuntimeError):
        return False
    return True


def register() -> None:
    """Defines the ``npu`` ops once per process (idempotent) and makes them live."""
    global _library, _active
    with _lock:
        if _library is None:
            library = torch.library.Library("npu", "FRAGMENT")  # noqa: TOR901 - kept for the process
            schemas = {**shim.OP_SCHEMAS, **FORMAT_SCHEMAS, **shim.OVERLOAD_SCHEMAS}
            for name, schema in schemas.items():
                function = name.split(".")[0]  # an overload is served by its op's function
                if _exists(name) or not hasattr(shim, function):
                    continue  # another library's op, or one npuquant does not provide yet
                library.define(schema)
                library.impl(name, _kernel(function), "CompositeImplicitAutograd")
                _registered.append(name)
            _library = library
        _active = True


def deactivate() -> None:
    """Makes the ops inert (they cannot be removed; see the module docstring)."""
    global _active
    with _lock:
        _active = False


def registered_ops() -> tuple[str, ...]:
    """The ``torch.ops.npu`` ops npuquant defined in this process."""
    return tuple(_registered)
