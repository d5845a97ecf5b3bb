"""``torchair.core`` stand-in."""

from . import utils  # noqa: F401
