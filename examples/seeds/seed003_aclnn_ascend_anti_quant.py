# Seed 003, aclnnAscendAntiQuant, 调用示例: the C++ sample, written in Python against npuquant.aclnn.
# The seed's rendering of the sample is garbled ("[object Object]"); this follows the sample it stands for
# (hicann/ops-nn, quant/ascend_anti_quant_v2/docs/aclnnAscendAntiQuant.md) statement by statement: same
# functions (GetShapeSize, Init, CreateAclTensor, main), same data, same calls in the same order, same
# printout. C-to-Python changes only: out-parameters become returned tuples (SPEC I.1), std::vector
# becomes array.array of the same element type, the CHECK_RET macro becomes an `if`. The document shows
# no output; the sample prints the float16 results as raw 16-bit patterns (`%hd` of a short), which
# tests/test_seed_examples.py checks against (x + offset) * scale = 1..8.
# Run it on any machine: npuquant run examples/seeds/seed003_aclnn_ascend_anti_quant.py
import array
import sys

from npuquant import aclnn
from npuquant.aclnn import (
    ACL_FLOAT,
    ACL_FLOAT16,
    ACL_FORMAT_ND,
    ACL_INT8,
    ACL_MEM_MALLOC_HUGE_FIRST,
    ACL_MEMCPY_DEVICE_TO_HOST,
    ACL_MEMCPY_HOST_TO_DEVICE,
    ACL_SUCCESS,
)


def LOG_PRINT(message, *args):
    print(message % args, end="")


def GetShapeSize(shape):
    shape_size = 1
    for i in shape:
        shape_size *= i
    return shape_size


def Init(deviceId):
    # 固定写法，资源初始化
    ret = aclnn.aclInit(None)
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclInit failed. ERROR: %d\n", ret)
        return ret, None
    ret = aclnn.aclrtSetDevice(deviceId)
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclrtSetDevice failed. ERROR: %d\n", ret)
        return ret, None
    stream, ret = aclnn.aclrtCreateStream()
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclrtCreateStream failed. ERROR: %d\n", ret)
        return ret, None
    return 0, stream


def CreateAclTensor(hostData, shape, dataType):
    size = GetShapeSize(shape) * hostData.itemsize
    # 调用aclrtMalloc申请device侧内存
    deviceAddr, ret = aclnn.aclrtMalloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclrtMalloc failed. ERROR: %d\n", ret)
        return ret, None, None

    # 调用aclrtMemcpy将host侧数据拷贝到device侧内存上
    ret = aclnn.aclrtMemcpy(deviceAddr, size, hostData, size, ACL_MEMCPY_HOST_TO_DEVICE)
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclrtMemcpy failed. ERROR: %d\n", ret)
        return ret, deviceAddr, None

    # 计算连续tensor的strides
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = shape[i + 1] * strides[i + 1]

    # 调用aclCreateTensor接口创建aclTensor
    tensor = aclnn.aclCreateTensor(shape, dataType, strides, 0, ACL_FORMAT_ND, shape, deviceAddr)
    return 0, deviceAddr, tensor


def main():
    # 1. （固定写法）device/stream初始化，参考acl API手册
    # 根据自己的实际device填写deviceId
    deviceId = 0
    ret, stream = Init(deviceId)
    # check根据自己的需要处理
    if ret != 0:
        LOG_PRINT("Init acl failed. ERROR: %d\n", ret)
        return ret
    # 2. 构造输入与输出，需要根据API的接口自定义构造
    selfShape = [4, 2]
    scaleShape = [1]
    offsetShape = [1]
    outShape = [4, 2]
    selfHostData = array.array("b", [0, 1, 2, 3, 4, 5, 6, 7])  # std::vector<int8_t>
    scaleHostData = array.array("f", [1])  # std::vector<float>
    offsetHostData = array.array("f", [1])  # std::vector<float>
    outHostData = array.array("h", [0, 0, 0, 0, 0, 0, 0, 0])  # std::vector<short>
    # 创建self aclTensor
    ret, selfDeviceAddr, self = CreateAclTensor(selfHostData, selfShape, ACL_INT8)
    if ret != ACL_SUCCESS:
        return ret
    # 创建scale aclTensor
    ret, scaleDeviceAddr, scale = CreateAclTensor(scaleHostData, scaleShape, ACL_FLOAT)
    if ret != ACL_SUCCESS:
        return ret
    # 创建offset aclTensor
    ret, offsetDeviceAddr, offset = CreateAclTensor(offsetHostData, offsetShape, ACL_FLOAT)
    if ret != ACL_SUCCESS:
        return ret
    # 创建out aclTensor
    ret, outDeviceAddr, out = CreateAclTensor(outHostData, outShape, ACL_FLOAT16)
    if ret != ACL_SUCCESS:
        return ret

    dstType = 1
    sqrtMode = False

    # 3. 调用CANN算子库API，需要修改为具体的API
    # 调用aclnnAscendAntiQuant第一段接口
    ret, workspaceSize, executor = aclnn.aclnnAscendAntiQuantGetWorkspaceSize(
        self, scale, offset, dstType, sqrtMode, out
    )
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclnnAscendAntiQuantGetWorkspaceSize failed. ERROR: %d\n", ret)
        return ret
    # 根据第一段接口计算出的workspaceSize申请device内存
    workspaceAddr = None
    if workspaceSize > 0:
        workspaceAddr, ret = aclnn.aclrtMalloc(workspaceSize, ACL_MEM_MALLOC_HUGE_FIRST)
        if ret != ACL_SUCCESS:
            LOG_PRINT("allocate workspace failed. ERROR: %d\n", ret)
            return ret
    # 调用aclnnAscendAntiQuant第二段接口
    ret = aclnn.aclnnAscendAntiQuant(workspaceAddr, workspaceSize, executor, stream)
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclnnAscendAntiQuant failed. ERROR: %d\n", ret)
        return ret
    # 4. （固定写法）同步等待任务执行结束
    ret = aclnn.aclrtSynchronizeStream(stream)
    if ret != ACL_SUCCESS:
        LOG_PRINT("aclrtSynchronizeStream failed. ERROR: %d\n", ret)
        return ret
    # 5. 获取输出的值，将device侧内存上的结果拷贝至host侧，需要根据具体API的接口定义修改，查看resultData中数据
    size = GetShapeSize(outShape)
    resultData = array.array("h", [0] * size)  # std::vector<short>
    ret = aclnn.aclrtMemcpy(
        resultData, len(resultData) * resultData.itemsize, outDeviceAddr, size * resultData.itemsize,
        ACL_MEMCPY_DEVICE_TO_HOST,
    )
    if ret != ACL_SUCCESS:
        LOG_PRINT("copy result from device to host failed. ERROR: %d\n", ret)
        return ret
    for i in range(size):
        LOG_PRINT("result[%ld] is: %hd\n", i, resultData[i])

    # 6. 释放aclTensor，需要根据具体API的接口定义修改
    aclnn.aclDestroyTensor(self)
    aclnn.aclDestroyTensor(scale)
    aclnn.aclDestroyTensor(offset)
    aclnn.aclDestroyTensor(out)

    # 7. 释放device资源，需要根据具体API的接口定义修改
    aclnn.aclrtFree(selfDeviceAddr)
    aclnn.aclrtFree(scaleDeviceAddr)
    aclnn.aclrtFree(offsetDeviceAddr)
    aclnn.aclrtFree(outDeviceAddr)
    if workspaceSize > 0:
        aclnn.aclrtFree(workspaceAddr)
    aclnn.aclrtDestroyStream(stream)
    aclnn.aclrtResetDevice(deviceId)
    aclnn.aclFinalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
