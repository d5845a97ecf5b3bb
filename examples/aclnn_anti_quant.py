"""aclnnAscendAntiQuant, step for step as in CANN's C sample, on npuquant's emulated runtime.

    init -> device -> stream -> tensors -> workspace -> run -> synchronize -> copy back -> destroy -> finalize

y = float16((x + offset) * scale) with x = [0..7] as int8 (4, 2), scale = [1], offset = [1],
so the printed results are 1..8. Run: ``python examples/aclnn_anti_quant.py``.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array

from npuquant import aclnn
from npuquant.aclnn import ACL_SUCCESS


def log(message: str) -> None:
    print(message)


def init(device_id: int) -> tuple[aclnn.aclrtStream | None, int]:
    # (Fixed) initialise ACL, pick the device, create a stream.
    ret = aclnn.aclInit(None)
    if ret != ACL_SUCCESS:
        log(f"aclInit failed. ERROR: {ret}")
        return None, ret
    ret = aclnn.aclrtSetDevice(device_id)
    if ret != ACL_SUCCESS:
        log(f"aclrtSetDevice failed. ERROR: {ret}")
        return None, ret
    stream, ret = aclnn.aclrtCreateStream()
    if ret != ACL_SUCCESS:
        log(f"aclrtCreateStream failed. ERROR: {ret}")
    return stream, ret


def create_acl_tensor(host_data: array, shape: list[int], data_type: int) -> tuple[int, aclnn.aclTensor | None, int]:
    """Device memory + host-to-device copy + a contiguous aclTensor over it: (deviceAddr, tensor, ret)."""
    size = math.prod(shape) * host_data.itemsize
    device_addr, ret = aclnn.aclrtMalloc(size, aclnn.ACL_MEM_MALLOC_HUGE_FIRST)
    if ret != ACL_SUCCESS:
        log(f"aclrtMalloc failed. ERROR: {ret}")
        return 0, None, ret
    ret = aclnn.aclrtMemcpy(device_addr, size, host_data, size, aclnn.ACL_MEMCPY_HOST_TO_DEVICE)
    if ret != ACL_SUCCESS:
        log(f"aclrtMemcpy failed. ERROR: {ret}")
        return device_addr, None, ret
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = shape[i + 1] * strides[i + 1]
    tensor = aclnn.aclCreateTensor(shape, data_type, strides, 0, aclnn.ACL_FORMAT_ND, shape, device_addr)
    return device_addr, tensor, ACL_SUCCESS


def main() -> int:
    # 1. (Fixed) device and stream.
    device_id = 0
    stream, ret = init(device_id)
    if ret != ACL_SUCCESS:
        log(f"Init acl failed. ERROR: {ret}")
        return ret

    # 2. Inputs and output, shaped as the API requires.
    self_shape, scale_shape, offset_shape, out_shape = [4, 2], [1], [1], [4, 2]
    self_host = array("b", [0, 1, 2, 3, 4, 5, 6, 7])
    scale_host = array("f", [1.0])
    offset_host = array("f", [1.0])
    out_host = array("H", [0] * 8)  # float16 bit patterns, like the C sample's `short`

    self_addr, self_tensor, ret = create_acl_tensor(self_host, self_shape, aclnn.ACL_INT8)
    if ret != ACL_SUCCESS:
        return ret
    scale_addr, scale, ret = create_acl_tensor(scale_host, scale_shape, aclnn.ACL_FLOAT)
    if ret != ACL_SUCCESS:
        return ret
    offset_addr, offset, ret = create_acl_tensor(offset_host, offset_shape, aclnn.ACL_FLOAT)
    if ret != ACL_SUCCESS:
        return ret
    out_addr, out, ret = create_acl_tensor(out_host, out_shape, aclnn.ACL_FLOAT16)
    if ret != ACL_SUCCESS:
        return ret

    dst_type = aclnn.ACL_FLOAT16  # 1
    sqrt_mode = False

    # 3. Phase 1: workspace size and executor.
    ret, workspace_size, executor = aclnn.aclnnAscendAntiQuantGetWorkspaceSize(
        self_tensor, scale, offset, dst_type, sqrt_mode, out
    )
    if ret != ACL_SUCCESS:
        log(f"aclnnAscendAntiQuantGetWorkspaceSize failed. ERROR: {ret} ({aclnn.aclGetRecentErrMsg()})")
        return ret
    workspace_addr = None
    if workspace_size > 0:
        workspace_addr, ret = aclnn.aclrtMalloc(workspace_size, aclnn.ACL_MEM_MALLOC_HUGE_FIRST)
        if ret != ACL_SUCCESS:
            log(f"allocate workspace failed. ERROR: {ret}")
            return ret
    # Phase 2: queue the computation on the stream.
    ret = aclnn.aclnnAscendAntiQuant(workspace_addr, workspace_size, executor, stream)
    if ret != ACL_SUCCESS:
        log(f"aclnnAscendAntiQuant failed. ERROR: {ret} ({aclnn.aclGetRecentErrMsg()})")
        return ret

    # 4. (Fixed) wait for the stream.
    ret = aclnn.aclrtSynchronizeStream(stream)
    if ret != ACL_SUCCESS:
        log(f"aclrtSynchronizeStream failed. ERROR: {ret}")
        return ret

    # 5. Copy the result back to the host and print it.
    size = math.prod(out_shape)
    result = bytearray(size * 2)
    ret = aclnn.aclrtMemcpy(result, len(result), out_addr, size * 2, aclnn.ACL_MEMCPY_DEVICE_TO_HOST)
    if ret != ACL_SUCCESS:
        log(f"copy result from device to host failed. ERROR: {ret}")
        return ret
    for i, (value,) in enumerate(struct.iter_unpack("<e", result)):
        log(f"result[{i}] is: {value:f}")

    # 6. Release the aclTensors.
    for tensor in (self_tensor, scale, offset, out):
        aclnn.aclDestroyTensor(tensor)

    # 7. Release device resources.
    for addr in (self_addr, scale_addr, offset_addr, out_addr):
        aclnn.aclrtFree(addr)
    if workspace_size > 0:
        aclnn.aclrtFree(workspace_addr)
    aclnn.aclrtDestroyStream(stream)
    aclnn.aclrtResetDevice(device_id)
    aclnn.aclFinalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
