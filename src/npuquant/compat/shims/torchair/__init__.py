"""``torchair`` stand-in: ``get_npu_backend`` gives a torch.compile backend that runs on the CPU.

The graph dynamo captures (with npuquant's custom ops in it) goes to a stock PyTorch backend:
``aot_eager`` by default (no C++ compiler needed, quick to compile), ``eager`` when
``config.debug.run_eagerly`` is True, or whatever ``NPUQUANT_TORCHAIR_BACKEND`` names
(``eager``, ``aot_eager``, ``inductor``, ...).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import configs, core, experimental, ge_concrete_graph  # noqa: F401 - sub-modules, as in torchair
from .configs.compiler_config import CompilerConfig

__all__ = ["CompilerConfig", "get_npu_backend"]

BACKEND_ENV = "NPUQUANT_TORCHAIR_BACKEND"
_log = logging.getLogger("npuquant.compat")


def _backend_name(config: CompilerConfig) -> str:
    chosen = os.environ.get(BACKEND_ENV, "").strip()
    if chosen:
        return chosen
    return "eager" if config.debug.run_eagerly is True else "aot_eager"


class NpuBackend:
    """The callable ``torch.compile(backend=...)`` receives; picks the CPU backend at compile time."""

    def __init__(self, config: CompilerConfig) -> None:
        self.config = config

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        from torch._dynamo.backends.registry import lookup_backend

        name = _backend_name(self.config)
        if self.config.debug.graph_dump.type is not None:
            # torchair would write the GE graph to a file; the FX graph is the closest thing here.
            _log.info("torchair graph dump (%s) is not emulated; FX graph:\n%s", self.config.debug.graph_dump.type,
                      gm.code)
        _log.debug("compiling a graph of %d nodes with torch.compile backend %r", len(gm.graph.nodes), name)
        return lookup_backend(name)(gm, example_inputs)

    def __repr__(self) -> str:
        return f"<torchair NPU backend emulated by npuquant on the CPU ({_backend_name(self.config)})>"


def get_npu_backend(
    *, compiler_config: CompilerConfig | None = None, custom_decompositions: dict | None = None
) -> NpuBackend:
    """torchair's ``get_npu_backend``: a torch.compile backend; here it compiles for the CPU.

    Args:
        compiler_config: torchair options (accepted; only ``debug.run_eagerly`` matters on the CPU).
        custom_decompositions: accepted and unused (they steer GE operator conversion on the NPU).
    """
    if compiler_config is None:
        compiler_config = CompilerConfig()
    if not isinstance(compiler_config, CompilerConfig):
        raise TypeError(f"compiler_config must be a torchair CompilerConfig, got {type(compiler_config).__name__}")
    return NpuBackend(compiler_config)
