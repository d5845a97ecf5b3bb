"""``torch_npu.contrib`` stand-in."""

from . import module  # noqa: F401 - torch_npu.contrib.module
