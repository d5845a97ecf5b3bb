"""``torchair.ge_concrete_graph`` stand-in (importable; GE graphs do not exist on the CPU)."""

from . import ge_apis  # noqa: F401
