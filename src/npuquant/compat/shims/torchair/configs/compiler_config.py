"""``torchair.configs.compiler_config.CompilerConfig`` stand-in.

torchair's options tune GE graph compilation on the NPU; none of them changes results, so on the
CPU they are accepted and stored. The common ones start with torchair's defaults; any other
attribute path (``config.some.new.option = value``) is accepted too, so scripts never fail on an
option this emulation does not know. ``debug.run_eagerly = True`` is honoured (no graph compilation).
"""

from __future__ import annotations

from typing import Any

_KNOWN: dict[str, Any] = {
    "mode": "max-autotune",
    "debug": {
        "run_eagerly": False,
        "graph_dump": {"type": None, "path": None},
        "data_dump": {"type": None, "path": None},
        "fx_summary": {"type": None, "skip_compile": True},
        "aclgraph": {"disable_reinplace_inplaceable_ops_pass": False},
    },
    "dump_config": {"enable_dump": False, "dump_path": "./", "dump_mode": "all"},
    "export": {"experimental": {"auto_atc_config_generated": False, "enable_record_nn_module_stack": False}},
    "experimental_config": {
        "frozen_parameter": False,
        "tiling_schedule_optimize": False,
        "keep_inference_input_mutations": True,
        "static_model_ops_lower_limit": None,
        "topology_sorting_strategy": "DFS",
        "enable_view_optimize": True,
        "cc_parallel_enable": False,
    },
    "inference_config": {"dynamic_gears_merge_policy": "zip"},
    "ge_config": {"enable_single_stream": False},
    "aoe_config": {"aoe_mode": None},
    "fusion_config": {"fusion_switch_file": None},
}


class OptionGroup:
    """A group of options: attribute reads of unknown names create (empty) sub-groups."""

    def __init__(self, path: str, defaults: dict[str, Any]) -> None:
        object.__setattr__(self, "_path", path)
        for name, value in defaults.items():
            child = OptionGroup(f"{path}.{name}", value) if isinstance(value, dict) else value
            object.__setattr__(self, name, child)

    def __getattr__(self, name: str) -> OptionGroup:
        if name.startswith("__") or name == "_path":
            raise AttributeError(name)
        group = OptionGroup(f"{self._path}.{name}", {})
        object.__setattr__(self, name, group)
        return group

    def as_dict(self) -> dict[str, Any]:
        """The options as nested dicts (groups with nothing in them are left out)."""
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if name == "_path":
                continue
            if isinstance(value, OptionGroup):
                nested = value.as_dict()
                if nested:
                    out[name] = nested
            else:
                out[name] = value
        return out

    def __repr__(self) -> str:
        return f"<torchair options {self._path}: {self.as_dict()}>"


class CompilerConfig(OptionGroup):
    """torchair's compiler configuration (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("CompilerConfig", _KNOWN)
