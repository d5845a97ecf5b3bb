"""``torchair.configs`` stand-in."""

from . import compiler_config  # noqa: F401
