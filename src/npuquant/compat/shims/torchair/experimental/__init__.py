"""``torchair.experimental`` stand-in."""

from . import inference  # noqa: F401
