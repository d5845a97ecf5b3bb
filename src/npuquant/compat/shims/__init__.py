"""Stand-ins for Ascend's Python packages, importable under their real names while
:func:`npuquant.compat.install` is in effect (``torch_npu`` -> ``shims.torch_npu``, ...)."""
