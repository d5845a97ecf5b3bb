"""CANN's ``aclnnAscendAntiQuant`` and the ACL runtime calls around it, emulated on the CPU (SPEC §7).

The same call sequence as the C API, with the same names and status codes, so code written
against CANN's two-phase pattern can be developed and tested without an NPU::

    from npuquant import aclnn

    aclnn.aclInit(None); aclnn.aclrtSetDevice(0)
    stream, ret = aclnn.aclrtCreateStream()
    dev, ret = aclnn.aclrtMalloc(nbytes)                      # emulated device memory
    aclnn.aclrtMemcpy(dev, nbytes, host, nbytes, aclnn.ACL_MEMCPY_HOST_TO_DEVICE)
    x = aclnn.aclCreateTensor([4, 2], aclnn.ACL_INT8, None, 0, aclnn.ACL_FORMAT_ND, [4, 2], dev)
    ...
    status, workspace_size, executor = aclnn.aclnnAscendAntiQuantGetWorkspaceSize(x, scale, offset, 1, False, y)
    status = aclnn.aclnnAscendAntiQuant(workspace, workspace_size, executor, stream)
    aclnn.aclrtSynchronizeStream(stream)                        # results are valid from here on

Conventions (pyACL style): functions that return a value in C through an out-pointer return a
tuple ``(value, ret)`` (``aclrtMalloc``, ``aclrtCreateStream``) or ``(status, ...)`` for aclnn;
the rest return the status. Nothing raises on bad input: a status code comes back and
:func:`aclGetRecentErrMsg` (per thread) says why. Only the conveniences :func:`from_torch` /
:func:`to_torch` raise.

Emulation details (documented decisions):

* One device (id 0). Device memory is host RAM, tracked per allocation; device addresses are
  ints from 2**60 up, never real host pointers, never reused. Every access (tensor views,
  memcpy on either side, workspaces) is bounds-checked first; a refused call writes nothing.
  ``NPUQUANT_ACL_MEMORY_LIMIT`` (bytes) caps the total, default half the physical RAM.
* Streams run their tasks asynchronously, in order, on one worker thread each; ``None`` (or
  0) is the default stream. ``aclrtMemcpy`` is synchronous and, as on the device, does not
  wait for queued work.
* Phase 1 follows CANN's checks and messages (``aclnn_ascend_anti_quant.cpp``), then adds the
  emulation's own: the tensors' memory must be live and y must not overlap itself. The
  workspace is 0 for contiguous arguments; otherwise it is y's size (the result is staged in it,
  as CANN stages non-contiguous outputs), and phase 2 checks it.
* The math is ``npuquant.ops.anti_quant.anti_quant`` (the implementation behind
  ``npu_anti_quant``): ``y = cast_dstType((x [+ offset]) * scale)``, scale squared first
  when ``sqrtMode``; float32 arithmetic, round-half-to-even cast.
"""

from __future__ import annotations

from . import _constants
from ._anti_quant import (
    aclDestroyAclOpExecutor,
    aclnnAscendAntiQuant,
    aclnnAscendAntiQuantGetWorkspaceSize,
    aclOpExecutor,
    aclSetAclOpExecutorRepeatable,
)
from ._constants import *  # noqa: F403 - the C headers' constants, same names
from ._errors import aclGetRecentErrMsg
from ._runtime import (
    aclFinalize,
    aclInit,
    aclrtCreateStream,
    aclrtDestroyStream,
    aclrtFree,
    aclrtMalloc,
    aclrtMemcpy,
    aclrtResetDevice,
    aclrtSetDevice,
    aclrtStream,
    aclrtSynchronizeStream,
)
from ._tensor import aclCreateTensor, aclDestroyTensor, aclTensor, from_torch, to_torch

__all__ = [
    "aclInit",
    "aclFinalize",
    "aclrtSetDevice",
    "aclrtResetDevice",
    "aclrtMalloc",
    "aclrtFree",
    "aclrtMemcpy",
    "aclrtCreateStream",
    "aclrtSynchronizeStream",
    "aclrtDestroyStream",
    "aclrtStream",
    "aclCreateTensor",
    "aclDestroyTensor",
    "aclTensor",
    "aclnnAscendAntiQuantGetWorkspaceSize",
    "aclnnAscendAntiQuant",
    "aclOpExecutor",
    "aclSetAclOpExecutorRepeatable",
    "aclDestroyAclOpExecutor",
    "aclGetRecentErrMsg",
    "from_torch",
    "to_torch",
] + [name for name in vars(_constants) if name.startswith("ACL")]
