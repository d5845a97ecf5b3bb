"""``torch_npu.testing``: the harness Ascend's op tests import (``testcase``, ``common_utils``).

Written for npuquant from the documented behaviour of torch_npu's helpers: the same names,
arguments and tolerance rules, so op-plugin test files run unmodified under
``npuquant run -m pytest FILE`` (or ``python FILE`` through ``run_tests``).
"""
