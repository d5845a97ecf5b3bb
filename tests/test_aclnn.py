"""npuquant.aclnn: the emulated ACL runtime and aclnnAscendAntiQuant (SPEC §7)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from array import array
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import npuquant
from helpers import assert_same_bits, random_int8, random_words
from npuquant import _native, aclnn
from npuquant.aclnn import _runtime
from npuquant.ops import anti_quant

OK = aclnn.ACLNN_SUCCESS
NULLPTR = aclnn.ACLNN_ERR_PARAM_NULLPTR
INVALID = aclnn.ACLNN_ERR_PARAM_INVALID
TORCH_OUT = {aclnn.ACL_FLOAT16: torch.float16, aclnn.ACL_BF16: torch.bfloat16}


@pytest.fixture(autouse=True)
def acl():
    """Every test starts initialized with device 0 set, and ends finalized with no stale messages."""
    if _runtime._State.initialized:
        aclnn.aclFinalize()
    assert aclnn.aclInit(None) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtSetDevice(0) == aclnn.ACL_SUCCESS
    aclnn.aclGetRecentErrMsg()
    yield
    if _runtime._State.initialized:
        aclnn.aclFinalize()
    aclnn.aclGetRecentErrMsg()


def message() -> str:
    text = aclnn.aclGetRecentErrMsg()
    assert text is not None, "an error message was expected"
    return text


def formula(x_values: torch.Tensor, scale, offset, dst: torch.dtype, sqrt_mode: bool = False) -> torch.Tensor:
    """Independent golden: numpy float32 (add, multiply), then a round-half-to-even cast."""
    xf = x_values.numpy().astype(np.float32)
    s = scale.to(torch.float32).numpy()
    if sqrt_mode:
        s = s * s
    if offset is not None:
        xf = xf + offset.to(torch.float32).numpy()
    return torch.from_numpy(np.ascontiguousarray(xf * s)).to(dst)


def out_tensor(shape, dst=aclnn.ACL_FLOAT16, fill: float = 0.0) -> aclnn.aclTensor:
    return aclnn.from_torch(torch.full(shape, fill, dtype=TORCH_OUT[dst]))


def run(x, scale, offset, y, dst=aclnn.ACL_FLOAT16, sqrt_mode=False, stream=None) -> tuple[int, int]:
    """Phase 1, workspace, phase 2, synchronize: returns (phase-1 status, workspace size)."""
    status, ws_size, executor = aclnn.aclnnAscendAntiQuantGetWorkspaceSize(x, scale, offset, dst, sqrt_mode, y)
    if status != OK:
        return status, 0
    ws = None
    if ws_size:
        ws, ret = aclnn.aclrtMalloc(ws_size)
        assert ret == aclnn.ACL_SUCCESS
    assert aclnn.aclnnAscendAntiQuant(ws, ws_size, executor, stream) == OK
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS
    if ws is not None:
        assert aclnn.aclrtFree(ws) == aclnn.ACL_SUCCESS
    return status, ws_size


@contextlib.contextmanager
def held(stream):
    """Holds the stream's worker until the block ends (no timing involved), even if the test fails."""
    gate = threading.Event()
    assert stream.submit(gate.wait)
    try:
        yield
    finally:
        gate.set()


# ============================================================================ runtime: init, device


def test_init_finalize_status_codes(tmp_path):
    assert aclnn.aclInit(None) == aclnn.ACL_ERROR_REPEAT_INITIALIZE
    assert "aclInit" in message()
    assert aclnn.aclFinalize() == aclnn.ACL_SUCCESS
    assert aclnn.aclFinalize() == aclnn.ACL_ERROR_REPEAT_FINALIZE
    assert aclnn.aclrtSetDevice(0) == aclnn.ACL_ERROR_UNINITIALIZE
    assert aclnn.aclrtMalloc(16) == (0, aclnn.ACL_ERROR_UNINITIALIZE)
    assert aclnn.aclrtFree(2**60) == aclnn.ACL_ERROR_UNINITIALIZE
    assert aclnn.aclrtMemcpy(bytearray(1), 1, b"a", 1, 0) == aclnn.ACL_ERROR_UNINITIALIZE
    assert aclnn.aclInit(str(tmp_path / "missing.json")) == aclnn.ACL_ERROR_INVALID_FILE
    config = tmp_path / "acl.json"
    config.write_text("{}")
    assert aclnn.aclInit(str(config)) == aclnn.ACL_SUCCESS


def test_device_must_be_set_and_valid():
    assert aclnn.aclrtResetDevice(0) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtMalloc(16) == (0, aclnn.ACL_ERROR_RT_CONTEXT_NULL)
    assert "aclrtSetDevice" in message()
    assert aclnn.aclrtCreateStream() == (None, aclnn.ACL_ERROR_RT_CONTEXT_NULL)
    assert aclnn.aclrtSetDevice(1) == aclnn.ACL_ERROR_RT_INVALID_DEVICEID
    assert aclnn.aclrtSetDevice(-1) == aclnn.ACL_ERROR_RT_INVALID_DEVICEID
    assert aclnn.aclrtSetDevice("0") == aclnn.ACL_ERROR_RT_INVALID_DEVICEID
    assert aclnn.aclrtResetDevice(3) == aclnn.ACL_ERROR_RT_INVALID_DEVICEID
    assert aclnn.aclrtSetDevice(0) == aclnn.ACL_SUCCESS


def test_reset_device_releases_streams_and_memory():
    stream, _ = aclnn.aclrtCreateStream()
    ptr, _ = aclnn.aclrtMalloc(64)
    assert aclnn.aclrtResetDevice(0) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtSetDevice(0) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_ERROR_INVALID_PARAM
    assert "not a live stream" in message()


# ============================================================================ runtime: memory


def test_malloc_addresses():
    ptrs = []
    for size in (1, 31, 32, 100, 4096):
        ptr, ret = aclnn.aclrtMalloc(size)
        assert ret == aclnn.ACL_SUCCESS
        assert ptr >= 2**60 and ptr % 32 == 0
        ptrs.append(ptr)
    assert len(set(ptrs)) == len(ptrs)
    for ptr in ptrs:
        assert aclnn.aclrtFree(ptr) == aclnn.ACL_SUCCESS
    # never reused
    again, _ = aclnn.aclrtMalloc(1)
    assert again not in ptrs


@pytest.mark.parametrize("size", [0, -1, 1.5, "8", True])
def test_malloc_bad_size(size):
    assert aclnn.aclrtMalloc(size) == (0, aclnn.ACL_ERROR_INVALID_PARAM)
    assert "size" in message()


def test_malloc_bad_policy():
    assert aclnn.aclrtMalloc(8, -1) == (0, aclnn.ACL_ERROR_INVALID_PARAM)


def test_malloc_limit(monkeypatch):
    monkeypatch.setattr(_runtime._State.memory, "limit", 1000)
    ptr, ret = aclnn.aclrtMalloc(600)
    assert ret == aclnn.ACL_SUCCESS
    assert aclnn.aclrtMalloc(600) == (0, aclnn.ACL_ERROR_RT_MEMORY_ALLOCATION)
    assert "limit" in message()
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtMalloc(600)[1] == aclnn.ACL_SUCCESS


def test_free_refusals():
    ptr, _ = aclnn.aclrtMalloc(64)
    assert aclnn.aclrtFree(ptr + 32) == aclnn.ACL_ERROR_INVALID_PARAM  # interior
    assert "not the start of a live allocation" in message()
    assert aclnn.aclrtFree(12345) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtFree(None) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_ERROR_INVALID_PARAM  # double free


def _h2d(ptr: int, data: bytes) -> None:
    assert aclnn.aclrtMemcpy(ptr, len(data), data, len(data), aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS


def _d2h(ptr: int, n: int) -> bytes:
    out = bytearray(n)
    assert aclnn.aclrtMemcpy(out, n, ptr, n, aclnn.ACL_MEMCPY_DEVICE_TO_HOST) == aclnn.ACL_SUCCESS
    return bytes(out)


def test_memcpy_round_trips_with_every_host_kind():
    ptr, _ = aclnn.aclrtMalloc(16)
    payload = bytes(range(16))
    hosts = [payload, bytearray(payload), memoryview(payload), array("B", payload), np.frombuffer(payload, np.uint8),
             torch.tensor(list(payload), dtype=torch.uint8)]  # fmt: skip
    for host in hosts:
        _h2d(ptr, b"\0" * 16)
        assert aclnn.aclrtMemcpy(ptr, 16, host, 16, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS
        assert _d2h(ptr, 16) == payload
    # writable host destinations
    for dst in (bytearray(16), array("B", bytes(16)), np.zeros(16, np.uint8), torch.zeros(16, dtype=torch.uint8)):
        assert aclnn.aclrtMemcpy(dst, 16, ptr, 16, aclnn.ACL_MEMCPY_DEVICE_TO_HOST) == aclnn.ACL_SUCCESS
        assert bytes(memoryview(dst.numpy() if isinstance(dst, torch.Tensor) else dst)) == payload
    # typed tensors are copied as raw bytes
    floats = torch.tensor([1.5, -2.0, 3.25, 0.0])
    assert aclnn.aclrtMemcpy(ptr, 16, floats, 16, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS
    back = torch.zeros(4)
    assert aclnn.aclrtMemcpy(back, 16, ptr, 16, aclnn.ACL_MEMCPY_DEVICE_TO_HOST) == aclnn.ACL_SUCCESS
    assert torch.equal(back, floats)
    # a non-contiguous source tensor is read in logical order
    grid = torch.arange(16, dtype=torch.uint8).reshape(4, 4)
    assert aclnn.aclrtMemcpy(ptr, 16, grid.t(), 16, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS
    assert _d2h(ptr, 16) == bytes(grid.t().contiguous().reshape(-1).tolist())


def test_memcpy_offsets_device_to_device_and_default_kind():
    a, _ = aclnn.aclrtMalloc(32)
    b, _ = aclnn.aclrtMalloc(32)
    _h2d(a, bytes(range(32)))
    assert aclnn.aclrtMemcpy(b + 8, 24, a + 4, 8, aclnn.ACL_MEMCPY_DEVICE_TO_DEVICE) == aclnn.ACL_SUCCESS
    assert _d2h(b + 8, 8) == bytes(range(4, 12))
    # overlapping copy inside one allocation behaves like memmove
    assert aclnn.aclrtMemcpy(a + 1, 31, a, 16, aclnn.ACL_MEMCPY_DEVICE_TO_DEVICE) == aclnn.ACL_SUCCESS
    assert _d2h(a, 17) == bytes([0]) + bytes(range(16))
    host = bytearray(4)
    assert aclnn.aclrtMemcpy(host, 4, a + 28, 4, aclnn.ACL_MEMCPY_DEFAULT) == aclnn.ACL_SUCCESS
    assert host == bytes(range(28, 32))
    assert aclnn.aclrtMemcpy(a, 4, b"wxyz", 4, aclnn.ACL_MEMCPY_DEFAULT) == aclnn.ACL_SUCCESS
    assert _d2h(a, 4) == b"wxyz"
    h2h = bytearray(3)
    assert aclnn.aclrtMemcpy(h2h, 3, b"abc", 3, aclnn.ACL_MEMCPY_HOST_TO_HOST) == aclnn.ACL_SUCCESS
    assert h2h == b"abc"
    assert aclnn.aclrtMemcpy(a, 4, b"", 0, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS


def test_memcpy_refusals_write_nothing():
    ptr, _ = aclnn.aclrtMalloc(16)
    _h2d(ptr, b"\x11" * 16)
    H2D, D2H = aclnn.ACL_MEMCPY_HOST_TO_DEVICE, aclnn.ACL_MEMCPY_DEVICE_TO_HOST
    refusals = [
        ((ptr, 32, b"\xff" * 32, 32, H2D), "reach past the end"),  # beyond the allocation
        ((ptr + 8, 16, b"\xff" * 16, 16, H2D), "reach past the end"),  # offset + count beyond
        ((ptr, 16, b"\xff" * 8, 16, H2D), "host buffer holds 8"),  # beyond the host source
        ((ptr, 8, b"\xff" * 16, 16, H2D), "exceeds destMax"),
        ((ptr, 16, b"\xff" * 16, 16, 9), "aclrtMemcpyKind"),
        ((ptr, -1, b"", 0, H2D), "destMax"),
        ((ptr, 16, 2**60 + 12345, 16, H2D), "not an integer address"),  # host side given as int
        ((2**60 - 64, 16, b"\xff" * 16, 16, H2D), "not in live device memory"),
        ((ptr, 16, object(), 16, H2D), "bytes-like"),
        ((ptr, 4, torch.zeros(1, device="meta"), 4, H2D), "on the CPU"),
    ]
    for args, text in refusals:
        assert aclnn.aclrtMemcpy(*args) == aclnn.ACL_ERROR_INVALID_PARAM, args
        assert text in message()
        assert _d2h(ptr, 16) == b"\x11" * 16
    # device -> host beyond either side
    host = bytearray(b"\x22" * 8)
    assert aclnn.aclrtMemcpy(host, 16, ptr, 16, D2H) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtMemcpy(host, 8, ptr + 12, 8, D2H) == aclnn.ACL_ERROR_INVALID_PARAM
    assert host == b"\x22" * 8
    assert aclnn.aclrtMemcpy(b"readonly", 8, ptr, 8, D2H) == aclnn.ACL_ERROR_INVALID_PARAM
    assert "read-only" in message()
    strided = torch.zeros(4, 4, dtype=torch.uint8).t()
    assert aclnn.aclrtMemcpy(strided, 16, ptr, 16, D2H) == aclnn.ACL_ERROR_INVALID_PARAM
    assert "contiguous" in message()
    # freed memory
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtMemcpy(host, 8, ptr, 8, D2H) == aclnn.ACL_ERROR_INVALID_PARAM
    assert "freed" in message()


# ============================================================================ error messages


def test_recent_error_message_is_per_thread_newest_first_and_cleared():
    assert aclnn.aclGetRecentErrMsg() is None
    aclnn.aclrtFree(1)
    aclnn.aclrtMalloc(0)
    seen = {}

    def other():
        seen["before"] = aclnn.aclGetRecentErrMsg()
        aclnn.aclrtSetDevice(5)
        seen["after"] = aclnn.aclGetRecentErrMsg()

    worker = threading.Thread(target=other)
    worker.start()
    worker.join()
    assert seen["before"] is None
    assert "invalid device id 5" in seen["after"]
    text = aclnn.aclGetRecentErrMsg()
    first, second = text.split("\n")
    assert "aclrtMalloc" in first and "aclrtFree" in second
    assert aclnn.aclGetRecentErrMsg() is None


# ============================================================================ aclCreateTensor / aclDestroyTensor


def buffer_10x10() -> tuple[int, torch.Tensor]:
    values = torch.arange(100, dtype=torch.int32).remainder(256).sub(128).to(torch.int8).reshape(10, 10)
    ptr, _ = aclnn.aclrtMalloc(100)
    assert aclnn.aclrtMemcpy(ptr, 100, values, 100, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS
    return ptr, values


def test_spec_strided_view_examples():
    ptr, values = buffer_10x10()
    block = aclnn.aclCreateTensor([6, 5], aclnn.ACL_INT8, [10, 1], 22, aclnn.ACL_FORMAT_ND, [10, 10], ptr)
    assert torch.equal(aclnn.to_torch(block), values[2:8, 2:7])
    sparse = aclnn.aclCreateTensor([4, 3], aclnn.ACL_INT8, [20, 2], 22, aclnn.ACL_FORMAT_ND, [10, 10], ptr)
    assert torch.equal(aclnn.to_torch(sparse), values[2:9:2, 2:7:2])
    assert not sparse.is_contiguous() and block.view_dims == (6, 5)
    storage_view = aclnn.aclCreateTensor([2, 5, 10], aclnn.ACL_INT8, None, 0, aclnn.ACL_FORMAT_ND, [10, 10], ptr)
    assert torch.equal(aclnn.to_torch(storage_view), values.reshape(2, 5, 10))
    transposed = aclnn.aclCreateTensor([10, 10], aclnn.ACL_INT8, [1, 10], 0, aclnn.ACL_FORMAT_ND, [10, 10], ptr)
    assert torch.equal(aclnn.to_torch(transposed), values.t())


def test_create_tensor_refusals():
    ptr, _ = buffer_10x10()
    ND = aclnn.ACL_FORMAT_ND
    cases = [
        (([6, 5], aclnn.ACL_INT8, [10, 1], 50, ND, [10, 10], ptr), "outside its storage"),
        (([11, 10], aclnn.ACL_INT8, None, 0, ND, [10, 10], ptr), "outside its storage"),
        (([2], aclnn.ACL_INT8, [200], 0, ND, [10, 10], ptr), "outside its storage"),
        (([10, 10], aclnn.ACL_INT8, None, 0, ND, [10, 11], ptr), "reach past the end"),  # storage > allocation
        (([26], aclnn.ACL_FLOAT, None, 0, ND, [26], ptr), "reach past the end"),  # 104 bytes > 100
        (([10], aclnn.ACL_INT8, None, 0, ND, [10], ptr + 96), "reach past the end"),
        (([4], aclnn.ACL_INT8, None, 0, ND, [4], 2**60 - 4096), "not in live device memory"),
        (([4], aclnn.ACL_INT8, None, 0, ND, [4], 7), "not in live device memory"),
        (([-1, 4], aclnn.ACL_INT8, None, 0, ND, [4], ptr), "viewDims"),
        (([2, 2], aclnn.ACL_INT8, [2, -1], 0, ND, [4], ptr), "stride"),
        (([2, 2], aclnn.ACL_INT8, [2], 0, ND, [4], ptr), "stride has 1 entries"),
        (([4], aclnn.ACL_INT8, None, -1, ND, [4], ptr), "offset"),
        (([4], 99, None, 0, ND, [4], ptr), "unknown aclDataType"),
        (([4], aclnn.ACL_STRING, None, 0, ND, [4], ptr), "not supported"),
        (([4], aclnn.ACL_INT8, None, 0, 123, [4], ptr), "unknown aclFormat"),
        (([4], aclnn.ACL_FLOAT, None, 0, ND, [4], ptr + 2), "aligned"),
        (([4], aclnn.ACL_INT8, None, 0, ND, [4], None), "nullptr"),
        (([4], aclnn.ACL_INT8, None, 0, ND, [4], "0x10"), "tensorData"),
        (("ab", aclnn.ACL_INT8, None, 0, ND, [4], ptr), "viewDims"),
        (([1] * 33, aclnn.ACL_INT8, None, 0, ND, [1], ptr), "at most 32"),
        (([2**63], aclnn.ACL_INT8, [0], 0, ND, [1], ptr), "int64"),
    ]
    for args, text in cases:
        assert aclnn.aclCreateTensor(*args) is None, args
        assert text in message(), args
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_SUCCESS
    assert aclnn.aclCreateTensor([4], aclnn.ACL_INT8, None, 0, ND, [4], ptr) is None
    assert "freed" in message()


def test_create_tensor_empty_and_int4_sizes():
    empty = aclnn.aclCreateTensor([0, 3], aclnn.ACL_FLOAT, None, 0, aclnn.ACL_FORMAT_ND, [0, 3], None)
    assert empty is not None and aclnn.to_torch(empty).shape == (0, 3)
    ptr, _ = aclnn.aclrtMalloc(3)
    # 6 int4 elements need 3 bytes, 7 would need 4
    assert aclnn.aclCreateTensor([6], aclnn.ACL_INT4, None, 0, aclnn.ACL_FORMAT_ND, [6], ptr) is not None
    assert aclnn.aclCreateTensor([7], aclnn.ACL_INT4, None, 0, aclnn.ACL_FORMAT_ND, [7], ptr) is None
    assert "reach past the end" in message()


def test_destroy_tensor():
    t = aclnn.from_torch(torch.zeros(4))
    address = t.address
    assert aclnn.aclDestroyTensor(t) == OK
    assert aclnn.aclDestroyTensor(t) == INVALID
    assert "already destroyed" in message()
    assert aclnn.aclDestroyTensor(None) == NULLPTR
    assert aclnn.aclDestroyTensor("tensor") == INVALID
    # from_torch memory belongs to the tensor
    assert aclnn.aclrtFree(address) == aclnn.ACL_ERROR_INVALID_PARAM
    with pytest.raises(RuntimeError, match="destroyed"):
        aclnn.to_torch(t)
    # user memory is not freed by aclDestroyTensor
    ptr, _ = aclnn.aclrtMalloc(16)
    view = aclnn.aclCreateTensor([4], aclnn.ACL_FLOAT, None, 0, aclnn.ACL_FORMAT_ND, [4], ptr)
    assert aclnn.aclDestroyTensor(view) == OK
    assert aclnn.aclrtFree(ptr) == aclnn.ACL_SUCCESS


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64,
     torch.float64, torch.bool, torch.complex64, torch.float8_e4m3fn, torch.float8_e5m2],
)  # fmt: skip
def test_from_torch_to_torch_round_trip(dtype):
    values = (torch.arange(-6, 6, dtype=torch.float32) / 2).reshape(3, 4).to(dtype)
    t = aclnn.from_torch(values)
    assert t.view_dims == (3, 4) and t.data_type == aclnn._tensor.FROM_TORCH[dtype]
    back = aclnn.to_torch(t)
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8), values.view(torch.uint8))
    scalar = aclnn.from_torch(torch.tensor(5, dtype=torch.int32))
    assert scalar.view_dims == () and aclnn.to_torch(scalar).item() == 5


def test_int4_packing_two_per_byte_low_nibble_first():
    t = aclnn.from_torch(torch.tensor([[1, -1, 0, 7], [-8, 2, 3, -3]], dtype=torch.int8), dtype=aclnn.ACL_INT4)
    assert t.data_type == aclnn.ACL_INT4 and t.view_dims == (2, 4) and t.storage_bytes == 4
    raw = bytearray(4)
    assert aclnn.aclrtMemcpy(raw, 4, t.address, 4, aclnn.ACL_MEMCPY_DEVICE_TO_HOST) == aclnn.ACL_SUCCESS
    assert raw == bytes([0xF1, 0x70, 0x28, 0xD3])
    assert aclnn.to_torch(t).tolist() == [[1, -1, 0, 7], [-8, 2, 3, -3]]
    odd = aclnn.from_torch(torch.tensor([1, 2, 3], dtype=torch.int32), aclnn.ACL_INT4)
    assert odd.storage_bytes == 2 and aclnn.to_torch(odd).tolist() == [1, 2, 3]


def test_from_torch_errors():
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        aclnn.from_torch(torch.tensor([8], dtype=torch.int8), aclnn.ACL_INT4)
    with pytest.raises(ValueError, match="ACL_INT4 needs integer"):
        aclnn.from_torch(torch.tensor([1.0]), aclnn.ACL_INT4)
    with pytest.raises(ValueError, match="does not match"):
        aclnn.from_torch(torch.tensor([1.0]), aclnn.ACL_FLOAT16)
    with pytest.raises(ValueError, match="unsupported aclDataType"):
        aclnn.from_torch(torch.tensor([1.0]), aclnn.ACL_STRING)
    with pytest.raises(ValueError, match="has no aclDataType"):
        aclnn.from_torch(torch.zeros(2, dtype=torch.float8_e4m3fnuz))
    with pytest.raises(TypeError):
        aclnn.from_torch([1, 2])
    with pytest.raises(TypeError):
        aclnn.to_torch(torch.zeros(2))
    assert aclnn.aclrtResetDevice(0) == aclnn.ACL_SUCCESS
    with pytest.raises(RuntimeError, match="aclrtSetDevice"):
        aclnn.from_torch(torch.zeros(2))
    assert aclnn.from_torch(torch.zeros(0, 2)).address is None  # empty: no memory needed


# ============================================================================ phase 1 status paths (§7.3)


def args_int8(shape=(2, 4), scale_n=4, with_offset=True, scale_dtype=torch.float32):
    gen = torch.Generator().manual_seed(sum(shape) + scale_n)
    x = torch.randint(-128, 128, shape, dtype=torch.int8, generator=gen)
    scale = torch.rand(scale_n, generator=gen).to(scale_dtype)
    offset = (torch.randn(scale_n, generator=gen) * 5).to(scale_dtype) if with_offset else None
    return x, scale, offset


def phase1(x, scale, offset, dst, sqrt_mode, y):
    return aclnn.aclnnAscendAntiQuantGetWorkspaceSize(x, scale, offset, dst, sqrt_mode, y)


def test_null_tensors_are_161001():
    x, s, o = (aclnn.from_torch(t) for t in args_int8())
    y = out_tensor((2, 4))
    for args, name in (((None, s, o, 1, False, y), "x"), ((x, None, o, 1, False, y), "scale"),
                       ((x, s, o, 1, False, None), "y")):  # fmt: skip
        assert phase1(*args) == (NULLPTR, 0, None)
        assert f"Expected a proper Tensor but got null for argument {name}." in message()
    status, ws, executor = phase1(x, s, None, 1, False, y)  # offset is optional
    assert status == OK and ws == 0 and executor is not None


def _dtype_case(x_dtype, scale_dtype, offset_dtype, y_dtype, dst):
    x = aclnn.from_torch(torch.zeros(2, 4, dtype=x_dtype))
    s = aclnn.from_torch(torch.ones(4, dtype=scale_dtype))
    o = None if offset_dtype is None else aclnn.from_torch(torch.ones(4, dtype=offset_dtype))
    y = aclnn.from_torch(torch.zeros(2, 4, dtype=y_dtype))
    return phase1(x, s, o, dst, False, y)


@pytest.mark.parametrize(
    ("dtypes", "text"),
    [
        ((torch.float16, torch.float32, None, torch.float16, 1),
         "Tensor x not implemented for DT_FLOAT16, should be in dtype support list [DT_INT4,DT_INT8,DT_INT32,]."),
        ((torch.uint8, torch.float32, None, torch.float16, 1), "Tensor x not implemented for DT_UINT8"),
        ((torch.int8, torch.float32, None, torch.float32, 0),
         "Tensor y not implemented for DT_FLOAT, should be in dtype support list [DT_FLOAT16,DT_BF16,]."),
        ((torch.int8, torch.float16, None, torch.float16, 1),
         "Tensor scale not implemented for DT_FLOAT16, should be in dtype support list [DT_FLOAT,DT_BF16,]."),
        ((torch.int8, torch.float32, torch.float64, torch.float16, 1), "Tensor offset not implemented for DT_DOUBLE"),
        ((torch.int8, torch.float32, torch.bfloat16, torch.float16, 1),
         "Expected both tensors to have same dtype, but found scale DT_FLOAT and offset DT_BF16."),
        ((torch.int8, torch.float32, None, torch.bfloat16, 1), "out(y) data type must be the same as dstType."),
        ((torch.int8, torch.float32, None, torch.float16, 27), "out(y) data type must be the same as dstType."),
        ((torch.int8, torch.float32, None, torch.float16, 0), "out(y) data type must be the same as dstType."),
        ((torch.int8, torch.float32, None, torch.float16, "1"), "dstType must be an int64"),
    ],
)  # fmt: skip
def test_dtype_violations_are_161002(dtypes, text):
    assert _dtype_case(*dtypes) == (INVALID, 0, None)
    assert text in message()


def test_accepted_dtype_combinations():
    for scale_dtype in (torch.float32, torch.bfloat16):
        for y_dtype, dst in ((torch.float16, 1), (torch.bfloat16, 27)):
            assert _dtype_case(torch.int8, scale_dtype, scale_dtype, y_dtype, dst)[0] == OK


def test_sqrt_mode_must_be_bool():
    x, s, o = (aclnn.from_torch(t) for t in args_int8())
    assert phase1(x, s, o, 1, "yes", out_tensor((2, 4)))[0] == INVALID
    assert "sqrtMode" in message()
    assert phase1(x, s, o, 1, 1, out_tensor((2, 4)))[0] == OK


def test_int32_shape_rules():
    x = aclnn.from_torch(torch.zeros(2, 3, dtype=torch.int32))
    s = aclnn.from_torch(torch.ones(1))
    assert phase1(x, s, None, 1, False, out_tensor((2, 24)))[0] == OK  # SPEC §10.19
    cases = [
        ((2, 23), "x dtype is int32. The last dim of y should be 8 times the last dim of x. "
                  "x shape:[2,3], y shape:[2,23]"),
        ((3, 24), "The shape of x and y should be same, expect for the size of the last axis.x shape:[2,3], "
                  "y shape:[3,24], axis:0"),
        ((2, 3, 8), "dim num of x and y should be same. x shape:[2,3], y shape:[2,3,8]"),
        ((2, 3), "The last dim of y should be 8 times"),
    ]  # fmt: skip
    for y_shape, text in cases:
        assert phase1(x, s, None, 1, False, out_tensor(y_shape)) == (INVALID, 0, None)
        assert text in message()
    scalar = aclnn.from_torch(torch.tensor(5, dtype=torch.int32))
    assert phase1(scalar, s, None, 1, False, out_tensor((8,)))[0] == OK
    assert phase1(scalar, s, None, 1, False, out_tensor((1, 8)))[0] == INVALID
    assert "x dtype is int32. And x is scalar, y should be (8,)." in message()


def test_int4_and_int8_shape_rules():
    odd = aclnn.from_torch(torch.zeros(2, 3, dtype=torch.int8), aclnn.ACL_INT4)
    s = aclnn.from_torch(torch.ones(1))
    assert phase1(odd, s, None, 1, False, out_tensor((2, 3)))[0] == INVALID
    assert "x dtype is int4, the size of last dim must be an even number. x shape:[2,3], y shape:[2,3]" in message()
    even = aclnn.from_torch(torch.zeros(2, 4, dtype=torch.int8), aclnn.ACL_INT4)
    assert phase1(even, s, None, 1, False, out_tensor((2, 8)))[0] == INVALID
    assert "Expected tensor for y to have same size as tensor for x, but [2,8] does not equal [2,4]." in message()
    x8 = aclnn.from_torch(torch.zeros(2, 4, dtype=torch.int8))
    assert phase1(x8, s, None, 1, False, out_tensor((4, 2)))[0] == INVALID
    assert "but [4,2] does not equal [2,4]." in message()


def test_scale_offset_and_rank_rules():
    x, _, _ = args_int8()
    xd = aclnn.from_torch(x)
    y = out_tensor((2, 4))

    def status(scale, offset, x_tensor=xd, y_tensor=y):
        return phase1(x_tensor, aclnn.from_torch(scale),
                      None if offset is None else aclnn.from_torch(offset), 1, False, y_tensor)[0]  # fmt: skip

    assert status(torch.ones(2, 4), None) == INVALID
    assert "scale dim num must be 1. scale:2" in message()
    assert status(torch.ones(4), torch.ones(1, 4)) == INVALID
    assert "offset dim num must be 1. offset:2" in message()
    assert status(torch.ones(4), torch.ones(1)) == INVALID
    assert "Expected tensor for scale to have same size as tensor for offset, but [4] does not equal [1]." in message()
    assert status(torch.ones(3), None) == INVALID
    assert "the last dim size(4) of out(y) must be same as scale and offset(3)." in message()
    assert status(torch.ones(1), torch.ones(3)) == INVALID
    assert "The size of tensor offset [3] must match the size [2,4]." in message()
    assert status(torch.ones(1), torch.ones(1)) == OK
    nine = aclnn.from_torch(torch.zeros([1] * 9, dtype=torch.int8))
    assert status(torch.ones(1), None, nine, out_tensor([1] * 9)) == INVALID
    assert "The x tensor cannot be larger than 8 dimensions." in message()
    eight = aclnn.from_torch(torch.zeros([1] * 7 + [2], dtype=torch.int8))
    assert status(torch.ones(2), None, eight, out_tensor([1] * 7 + [2])) == OK


def test_empty_x_is_success_with_zero_workspace():
    x = aclnn.from_torch(torch.zeros(0, 4, dtype=torch.int8))
    s = aclnn.from_torch(torch.ones(4))
    y = aclnn.from_torch(torch.zeros(0, 4, dtype=torch.float16))
    status, ws, executor = phase1(x, s, None, 1, False, y)
    assert (status, ws) == (OK, 0) and executor is not None
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == OK
    assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_SUCCESS
    # the empty executor is single-use too
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == INVALID
    x32 = aclnn.from_torch(torch.zeros(3, 0, dtype=torch.int32))
    one = aclnn.from_torch(torch.ones(1))
    assert phase1(x32, one, None, 1, False, aclnn.from_torch(torch.zeros(3, 0, dtype=torch.float16)))[:2] == (OK, 0)


def test_int4_must_be_contiguous():
    ptr, _ = aclnn.aclrtMalloc(16)
    strided = aclnn.aclCreateTensor([2, 4], aclnn.ACL_INT4, [8, 1], 0, aclnn.ACL_FORMAT_ND, [32], ptr)
    assert strided is not None
    s = aclnn.from_torch(torch.ones(1))
    assert phase1(strided, s, None, 1, False, out_tensor((2, 4)))[0] == INVALID
    assert "when x is of type int4, it must be contiguous" in message()


def test_bad_tensor_objects_are_refused():
    x, s, o = (aclnn.from_torch(t) for t in args_int8())
    y = out_tensor((2, 4))
    assert phase1(torch.zeros(2, 4), s, o, 1, False, y)[0] == INVALID
    assert "x must be an aclTensor" in message()
    aclnn.aclDestroyTensor(o)
    assert phase1(x, s, o, 1, False, y)[0] == INVALID
    assert "offset has been destroyed" in message()


def test_freed_memory_and_overlapping_output_are_refused():
    x, s, _ = (aclnn.from_torch(t) for t in args_int8())
    ptr, _ = aclnn.aclrtMalloc(16)
    y = aclnn.aclCreateTensor([2, 4], aclnn.ACL_FLOAT16, None, 0, aclnn.ACL_FORMAT_ND, [2, 4], ptr)
    assert y is not None
    aclnn.aclrtFree(ptr)
    assert phase1(x, s, None, 1, False, y)[0] == INVALID
    assert "y: address" in message()
    big = 1 << 40  # a stride-0 "output" of 2**41 elements over 4 bytes must never be computed
    ptr, _ = aclnn.aclrtMalloc(4)
    overlap = aclnn.aclCreateTensor([2, big], aclnn.ACL_FLOAT16, [1, 0], 0, aclnn.ACL_FORMAT_ND, [2], ptr)
    xb = aclnn.aclCreateTensor([2, big], aclnn.ACL_INT8, [1, 0], 0, aclnn.ACL_FORMAT_ND, [2], ptr)
    assert phase1(xb, aclnn.from_torch(torch.ones(1)), None, 1, False, overlap)[0] == INVALID
    assert "overlap" in message()
    with pytest.raises(RuntimeError, match="more than host memory allows"):
        aclnn.to_torch(xb)


# ============================================================================ numerics


def test_spec_examples():
    x = aclnn.from_torch(torch.tensor([1, 2, 3, 4], dtype=torch.int8))
    two = aclnn.from_torch(torch.tensor([2.0]))
    y = out_tensor((4,))
    assert run(x, two, two, y) == (OK, 0)
    assert aclnn.to_torch(y).tolist() == [6.0, 8.0, 10.0, 12.0]
    assert run(x, two, None, y) == (OK, 0)
    assert aclnn.to_torch(y).tolist() == [2.0, 4.0, 6.0, 8.0]
    packed = aclnn.from_torch(torch.tensor([[1985229328, -1985229329]], dtype=torch.int32))
    y16 = out_tensor((1, 16))
    run(packed, aclnn.from_torch(torch.tensor([0.5])), aclnn.from_torch(torch.tensor([1.0])), y16)
    assert aclnn.to_torch(y16).tolist() == [[0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 0, -0.5, -1, -1.5, -2, -2.5, -3, -3.5]]


@pytest.mark.parametrize("scale_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dst", [aclnn.ACL_FLOAT16, aclnn.ACL_BF16])
@pytest.mark.parametrize("sqrt_mode", [False, True])
@pytest.mark.parametrize("with_offset", [False, True])
def test_int8_matches_formula_and_npu_anti_quant(scale_dtype, dst, sqrt_mode, with_offset):
    x, scale, offset = args_int8((3, 5, 6), 6, with_offset, scale_dtype)
    y = out_tensor((3, 5, 6), dst)
    run(aclnn.from_torch(x), aclnn.from_torch(scale), offset if offset is None else aclnn.from_torch(offset), y, dst,
        sqrt_mode)  # fmt: skip
    expected = formula(x, scale, offset, TORCH_OUT[dst], sqrt_mode)
    assert_same_bits(aclnn.to_torch(y), expected)
    if not sqrt_mode:
        torch_api = npuquant.npu_anti_quant(x, scale, offset=offset, dst_dtype=TORCH_OUT[dst])
        assert_same_bits(aclnn.to_torch(y), torch_api)


def test_sqrt_mode_with_bf16_scale_squares_in_float32():
    x = torch.tensor([[1, -3, 7, 100]], dtype=torch.int8)
    scale = torch.tensor([1.5, 0.3, -2.25, 0.0078125], dtype=torch.bfloat16)
    offset = torch.tensor([0.5, 1.0, -1.0, 2.0], dtype=torch.bfloat16)
    y = out_tensor((1, 4), aclnn.ACL_BF16)
    run(aclnn.from_torch(x), aclnn.from_torch(scale), aclnn.from_torch(offset), y, aclnn.ACL_BF16, True)
    expected = formula(x, scale, offset, torch.bfloat16, sqrt_mode=True)
    assert_same_bits(aclnn.to_torch(y), expected)
    assert aclnn.to_torch(y)[0, 0].item() == (1 + 0.5) * 2.25
    run(aclnn.from_torch(x), aclnn.from_torch(scale), aclnn.from_torch(offset), y, aclnn.ACL_BF16, False)
    assert aclnn.to_torch(y)[0, 0].item() == (1 + 0.5) * 1.5


def test_int4_input():
    values = torch.tensor([[0, 1, -1, 7], [-8, 3, -2, 5]], dtype=torch.int8)
    scale = torch.tensor([0.5, 2.0, -1.0, 0.25])
    offset = torch.tensor([1.0, 0.0, 2.0, -3.0])
    y = out_tensor((2, 4))
    run(aclnn.from_torch(values, aclnn.ACL_INT4), aclnn.from_torch(scale), aclnn.from_torch(offset), y)
    assert_same_bits(aclnn.to_torch(y), formula(values, scale, offset, torch.float16))
    # the same numbers through raw bytes written by hand: element 2k in the low nibble of byte k
    ptr, _ = aclnn.aclrtMalloc(3)
    assert aclnn.aclrtMemcpy(ptr, 3, bytes([0x10, 0x32, 0xF1]), 3, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == 0
    x = aclnn.aclCreateTensor([1, 6], aclnn.ACL_INT4, None, 0, aclnn.ACL_FORMAT_ND, [1, 6], ptr)
    y6 = out_tensor((1, 6))
    run(x, aclnn.from_torch(torch.tensor([1.0])), None, y6)
    assert aclnn.to_torch(y6).tolist() == [[0.0, 1.0, 2.0, 3.0, 1.0, -1.0]]


def test_int32_input_matches_unpacked_formula():
    gen = torch.Generator().manual_seed(7)
    values = torch.randint(-8, 8, (3, 16), dtype=torch.int8, generator=gen)
    packed = npuquant.pack_int4(values)
    scale = torch.rand(16, generator=gen).to(torch.bfloat16)
    offset = torch.randn(16, generator=gen).to(torch.bfloat16)
    y = out_tensor((3, 16), aclnn.ACL_BF16)
    run(aclnn.from_torch(packed), aclnn.from_torch(scale), aclnn.from_torch(offset), y, aclnn.ACL_BF16)
    assert_same_bits(aclnn.to_torch(y), formula(values, scale, offset, torch.bfloat16))


def test_special_values():
    x = torch.tensor([[-128, 127, 0, 1]], dtype=torch.int8)
    scale = torch.tensor([float("nan"), float("inf"), float("-inf"), 1e6])
    y = out_tensor((1, 4))
    run(aclnn.from_torch(x), aclnn.from_torch(scale), None, y)
    got = aclnn.to_torch(y)[0]
    assert torch.isnan(got[0]) and got[1] == float("inf") and torch.isnan(got[2]) and got[3] == float("inf")


@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    x_kind=st.sampled_from(["int8", "int4", "int32"]),
    per_channel=st.booleans(),
    with_offset=st.booleans(),
    scale_bf16=st.booleans(),
    dst=st.sampled_from([aclnn.ACL_FLOAT16, aclnn.ACL_BF16]),
    sqrt_mode=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_formula(shape, x_kind, per_channel, with_offset, scale_bf16, dst, sqrt_mode, seed):
    gen = torch.Generator().manual_seed(seed)
    out_shape = list(shape)
    if x_kind == "int4":
        out_shape[-1] *= 2
    if x_kind == "int32":
        out_shape[-1] *= 8
    lo, hi = (-128, 128) if x_kind == "int8" else (-8, 8)
    values = torch.randint(lo, hi, out_shape, dtype=torch.int8, generator=gen)
    if x_kind == "int8":
        x = aclnn.from_torch(values)
    elif x_kind == "int4":
        x = aclnn.from_torch(values, aclnn.ACL_INT4)
    else:
        x = aclnn.from_torch(npuquant.pack_int4(values))
    n = out_shape[-1] if per_channel else 1
    sdtype = torch.bfloat16 if scale_bf16 else torch.float32
    scale = (torch.rand(n, generator=gen) * 4 - 2).to(sdtype)
    offset = (torch.randn(n, generator=gen) * 3).to(sdtype) if with_offset else None
    y = out_tensor(out_shape, dst)
    aclnn_offset = None if offset is None else aclnn.from_torch(offset)
    assert run(x, aclnn.from_torch(scale), aclnn_offset, y, dst, sqrt_mode)[0] == OK
    assert_same_bits(aclnn.to_torch(y), formula(values, scale, offset, TORCH_OUT[dst], sqrt_mode))
    aclnn.aclrtResetDevice(0)  # release this example's memory
    aclnn.aclrtSetDevice(0)


EDGE_SCALES = torch.tensor(
    [0x7FC12345, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000, 0x00000001, 0x80000000, 0x7F7FFFFF, 0x477FF000,
     0x3F808000, 0x3F818000, 0x1F800000, 0x5F800000, 0x3F800000, 0xBF000000, 0x00800000],
    dtype=torch.int64,
).to(torch.int32).view(torch.float32)  # fmt: skip


@pytest.mark.parametrize("sqrt_mode", [False, True])
@pytest.mark.parametrize("dst", [aclnn.ACL_FLOAT16, aclnn.ACL_BF16])
def test_native_kernels_match_the_reference(isa, dst, sqrt_mode):
    # Phase 2 runs the native operator (every kernel variant here): bit for bit the reference's
    # result, sqrt mode included, for edge scales (NaN payloads, inf, denormals, overflow, ties).
    torch_dst = TORCH_OUT[dst]
    x8, words, v4 = random_int8(7, 16), random_words(5, 2), torch.randint(-8, 8, (4, 16), dtype=torch.int8)
    grid = random_int8(16, 9)
    stored = aclnn.from_torch(grid)
    transposed = aclnn.aclCreateTensor([9, 16], aclnn.ACL_INT8, [1, 9], 0, aclnn.ACL_FORMAT_ND, [16, 9], stored.address)
    cases = [
        (aclnn.from_torch(x8), x8, EDGE_SCALES, torch.randn(16) * 3),
        (aclnn.from_torch(x8), x8, EDGE_SCALES.bfloat16(), None),  # bf16 scale
        (transposed, grid.t(), torch.rand(1), torch.randn(1)),  # strided x, one scale
        (aclnn.from_torch(words), npuquant.unpack_int4(words), EDGE_SCALES, None),  # int32: 8 int4 per word
        (aclnn.from_torch(v4, aclnn.ACL_INT4), v4, EDGE_SCALES.flip(0), torch.randn(16)),
    ]
    for x_acl, values, scale, offset in cases:
        y = out_tensor(values.shape, dst, fill=-3.0)
        acl_offset = None if offset is None else aclnn.from_torch(offset)
        assert run(x_acl, aclnn.from_torch(scale), acl_offset, y, dst, sqrt_mode)[0] == OK
        got = aclnn.to_torch(y)
        with _native.force_reference():
            expected = anti_quant.anti_quant(values, scale, offset, torch_dst, sqrt_mode)
        assert_same_bits(got, expected)
        y_ref = out_tensor(values.shape, dst, fill=-3.0)
        with _native.force_reference():  # the same run on the reference path
            assert run(x_acl, aclnn.from_torch(scale), acl_offset, y_ref, dst, sqrt_mode)[0] == OK
        assert_same_bits(got, aclnn.to_torch(y_ref))
    aclnn.aclrtResetDevice(0)
    aclnn.aclrtSetDevice(0)


# ============================================================================ strided views and workspaces


def test_strided_input_and_output_views_spec_examples():
    ptr, values = buffer_10x10()
    ND = aclnn.ACL_FORMAT_ND
    for dims, strides, expected_x in (([6, 5], [10, 1], values[2:8, 2:7]), ([4, 3], [20, 2], values[2:9:2, 2:7:2])):
        x = aclnn.aclCreateTensor(dims, aclnn.ACL_INT8, strides, 22, ND, [10, 10], ptr)
        scale = torch.linspace(0.5, 2.0, dims[1])
        offset = torch.linspace(-3.0, 3.0, dims[1])
        # y: the same strided window inside a 10x10 float16 buffer filled with a sentinel
        y_buffer = torch.full((10, 10), -7.0, dtype=torch.float16)
        y_storage = aclnn.from_torch(y_buffer)
        y = aclnn.aclCreateTensor(dims, aclnn.ACL_FLOAT16, strides, 22, ND, [10, 10], y_storage.address)
        status, ws = run(x, aclnn.from_torch(scale), aclnn.from_torch(offset), y)
        assert status == OK and ws > 0  # non-contiguous arguments need a workspace
        expected = formula(expected_x, scale, offset, torch.float16)
        assert_same_bits(aclnn.to_torch(y), expected)
        whole = aclnn.to_torch(y_storage)
        mask = torch.ones(10, 10, dtype=torch.bool)
        rows, cols = (slice(2, 8), slice(2, 7)) if dims == [6, 5] else (slice(2, 9, 2), slice(2, 7, 2))
        mask[rows, cols] = False
        assert torch.all(whole[mask] == -7.0)  # nothing outside the view was written
        assert_same_bits(whole[rows, cols].contiguous(), expected)


def test_transposed_input_and_strided_scale():
    gen = torch.Generator().manual_seed(11)
    values = torch.randint(-128, 128, (6, 4), dtype=torch.int8, generator=gen)
    x = aclnn.from_torch(values)
    xt = aclnn.aclCreateTensor([4, 6], aclnn.ACL_INT8, [1, 4], 0, aclnn.ACL_FORMAT_ND, [6, 4], x.address)
    scales = torch.rand(12, generator=gen)
    s = aclnn.from_torch(scales)
    every_other = aclnn.aclCreateTensor([6], aclnn.ACL_FLOAT, [2], 1, aclnn.ACL_FORMAT_ND, [12], s.address)
    y = out_tensor((4, 6))
    assert run(xt, every_other, None, y)[1] > 0
    assert_same_bits(aclnn.to_torch(y), formula(values.t(), scales[1::2], None, torch.float16))


def test_workspace_checks_in_phase_two():
    ptr, _ = buffer_10x10()
    x = aclnn.aclCreateTensor([4, 3], aclnn.ACL_INT8, [20, 2], 22, aclnn.ACL_FORMAT_ND, [10, 10], ptr)
    y = out_tensor((4, 3), fill=5.0)
    status, ws_size, executor = phase1(x, aclnn.from_torch(torch.ones(1)), None, 1, False, y)
    assert status == OK and ws_size >= 4 * 3 * 2 and ws_size % 32 == 0
    small, _ = aclnn.aclrtMalloc(ws_size - 8)
    assert aclnn.aclnnAscendAntiQuant(None, ws_size, executor, None) == INVALID
    assert "workspace must be" in message()
    assert aclnn.aclnnAscendAntiQuant(small, ws_size - 8, executor, None) == INVALID
    assert "smaller than" in message()
    assert aclnn.aclnnAscendAntiQuant(small, ws_size, executor, None) == INVALID
    assert "reach past the end" in message()
    assert aclnn.aclnnAscendAntiQuant(2**62, ws_size, executor, None) == INVALID
    assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_SUCCESS
    assert torch.all(aclnn.to_torch(y) == 5.0)  # refused runs wrote nothing
    good, _ = aclnn.aclrtMalloc(ws_size)
    assert aclnn.aclnnAscendAntiQuant(good, ws_size, executor, None) == OK  # the executor is still unused
    assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_SUCCESS
    assert not torch.all(aclnn.to_torch(y) == 5.0)


# ============================================================================ executors


def simple_executor(values=(1, 2, 3, 4)):
    x = aclnn.from_torch(torch.tensor([values], dtype=torch.int8))
    s = aclnn.from_torch(torch.tensor([1.0]))
    y = out_tensor((1, len(values)))
    status, ws, executor = phase1(x, s, None, 1, False, y)
    assert status == OK and ws == 0
    return x, y, executor


def test_executor_is_single_use():
    _, y, executor = simple_executor()
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == OK
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == INVALID
    assert "single-use" in message()
    assert aclnn.aclDestroyAclOpExecutor(executor) == INVALID  # already released by the run
    assert aclnn.aclSetAclOpExecutorRepeatable(executor) == INVALID
    assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_SUCCESS
    assert aclnn.to_torch(y).tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_repeatable_executor_runs_many_times():
    x, y, executor = simple_executor()
    assert aclnn.aclSetAclOpExecutorRepeatable(executor) == OK
    for i in range(3):
        data = array("b", [i, i + 1, -i, 10 * i])
        assert aclnn.aclrtMemcpy(x.address, 4, data, 4, aclnn.ACL_MEMCPY_HOST_TO_DEVICE) == aclnn.ACL_SUCCESS
        assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == OK
        assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_SUCCESS
        assert aclnn.to_torch(y).tolist() == [[float(v) for v in data]]
    assert aclnn.aclDestroyAclOpExecutor(executor) == OK
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == INVALID
    assert aclnn.aclDestroyAclOpExecutor(executor) == INVALID


def test_executor_argument_errors():
    assert aclnn.aclnnAscendAntiQuant(None, 0, None, None) == NULLPTR
    assert aclnn.aclnnAscendAntiQuant(None, 0, "executor", None) == INVALID
    assert aclnn.aclSetAclOpExecutorRepeatable(None) == aclnn.ACLNN_ERR_INNER_NULLPTR
    assert aclnn.aclDestroyAclOpExecutor(None) == aclnn.ACLNN_ERR_INNER_NULLPTR
    assert aclnn.aclSetAclOpExecutorRepeatable(object()) == INVALID
    assert aclnn.aclDestroyAclOpExecutor(object()) == INVALID
    _, _, executor = simple_executor()
    assert aclnn.aclDestroyAclOpExecutor(executor) == OK  # an unused single-use executor may be dropped
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == INVALID
    _, _, executor = simple_executor()
    assert aclnn.aclnnAscendAntiQuant(None, -1, executor, None) == INVALID
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, "stream") == INVALID
    assert "not an aclrtStream" in message()


def test_tensor_lifetime_checked_in_phase_two():
    x, y, executor = simple_executor()
    aclnn.aclDestroyTensor(y)
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == INVALID
    assert "y was destroyed before phase 2" in message()
    # memory freed between the phases: refused, nothing written, no crash
    ptr, _ = aclnn.aclrtMalloc(4)
    x = aclnn.aclCreateTensor([1, 4], aclnn.ACL_INT8, None, 0, aclnn.ACL_FORMAT_ND, [1, 4], ptr)
    y = out_tensor((1, 4), fill=9.0)
    status, _, executor = phase1(x, aclnn.from_torch(torch.tensor([1.0])), None, 1, False, y)
    assert status == OK
    aclnn.aclrtFree(ptr)
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == aclnn.ACLNN_ERR_RUNTIME_ERROR
    assert "x: address" in message()
    assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_SUCCESS
    assert aclnn.to_torch(y).tolist() == [[9.0] * 4]


# ============================================================================ streams


def test_several_runs_queued_then_one_synchronize():
    stream, ret = aclnn.aclrtCreateStream()
    assert ret == aclnn.ACL_SUCCESS
    gen = torch.Generator().manual_seed(3)
    jobs = []
    for i in range(6):
        values = torch.randint(-128, 128, (4, 8), dtype=torch.int8, generator=gen)
        scale = torch.rand(8, generator=gen) + i
        y = out_tensor((4, 8))
        status, ws, executor = phase1(aclnn.from_torch(values), aclnn.from_torch(scale), None, 1, False, y)
        assert status == OK
        assert aclnn.aclnnAscendAntiQuant(None, ws, executor, stream) == OK
        jobs.append((y, formula(values, scale, None, torch.float16)))
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS
    for y, expected in jobs:
        assert_same_bits(aclnn.to_torch(y), expected)
    assert aclnn.aclrtDestroyStream(stream) == aclnn.ACL_SUCCESS


def test_runs_are_asynchronous_and_in_order():
    stream, _ = aclnn.aclrtCreateStream()
    y = out_tensor((1, 4), fill=-1.0)
    s = aclnn.from_torch(torch.tensor([1.0]))
    last = None
    with held(stream):
        for i in range(8):
            x = aclnn.from_torch(torch.tensor([[i, i, i, i]], dtype=torch.int8))
            status, _, executor = phase1(x, s, None, 1, False, y)
            assert aclnn.aclnnAscendAntiQuant(None, 0, executor, stream) == OK
            last = float(i)
        assert aclnn.to_torch(y).tolist() == [[-1.0] * 4]  # phase 2 returned, nothing ran yet
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS
    assert aclnn.to_torch(y).tolist() == [[last] * 4]  # FIFO: the last queued run wrote last


def test_streams_are_independent():
    blocked, _ = aclnn.aclrtCreateStream()
    free, _ = aclnn.aclrtCreateStream()
    with held(blocked):
        _, y, executor = simple_executor()
        assert aclnn.aclnnAscendAntiQuant(None, 0, executor, free) == OK
        assert aclnn.aclrtSynchronizeStream(free) == aclnn.ACL_SUCCESS
        assert aclnn.to_torch(y).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert aclnn.aclrtSynchronizeStream(blocked) == aclnn.ACL_SUCCESS


def test_stream_lifecycle_and_errors():
    stream, _ = aclnn.aclrtCreateStream()
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtSynchronizeStream(0) == aclnn.ACL_SUCCESS  # nullptr = default stream
    assert aclnn.aclrtDestroyStream(stream) == aclnn.ACL_SUCCESS
    assert aclnn.aclrtDestroyStream(stream) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtDestroyStream(None) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_ERROR_INVALID_PARAM
    assert aclnn.aclrtSynchronizeStream("s") == aclnn.ACL_ERROR_INVALID_PARAM
    _, _, executor = simple_executor()
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, stream) == INVALID
    assert "not a live stream" in message()
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == OK  # refused run left it unused
    aclnn.aclrtResetDevice(0)
    assert aclnn.aclrtSynchronizeStream(None) == aclnn.ACL_ERROR_RT_CONTEXT_NULL


def test_default_stream_needs_a_device():
    _, _, executor = simple_executor()
    aclnn.aclrtResetDevice(0)
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, None) == aclnn.ACLNN_ERR_RUNTIME_ERROR


def test_failed_task_is_reported_by_synchronize():
    stream, _ = aclnn.aclrtCreateStream()
    stream.submit(lambda: 1 / 0)
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_ERROR_RT_AICORE_EXCEPTION
    assert "ZeroDivisionError" in message()
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS  # reported once
    _, y, executor = simple_executor()
    assert aclnn.aclnnAscendAntiQuant(None, 0, executor, stream) == OK  # the stream still works
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS
    assert aclnn.to_torch(y).tolist() == [[1.0, 2.0, 3.0, 4.0]]


def test_freeing_memory_with_work_queued_does_not_crash():
    stream, _ = aclnn.aclrtCreateStream()
    with held(stream):
        x, y, executor = simple_executor()
        assert aclnn.aclnnAscendAntiQuant(None, 0, executor, stream) == OK
        assert aclnn.aclDestroyTensor(x) == OK  # frees x's memory while the run is queued
        assert aclnn.aclDestroyTensor(y) == OK
    assert aclnn.aclrtSynchronizeStream(stream) == aclnn.ACL_SUCCESS
    assert aclnn.aclFinalize() == aclnn.ACL_SUCCESS  # drains and stops every stream


# ============================================================================ the example


def test_example_runs_and_prints_the_results():
    script = Path(__file__).resolve().parents[1] / "examples" / "aclnn_anti_quant.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"result[{i}] is: {i + 1:f}" for i in range(8)]


# ============================================================================ malformed input never raises

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 2, 3, 4, 27, 29, 2**60, 2**60 + 512, -1]),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.lists(st.integers(-3, 2**40), max_size=4),
    st.just(object()),
    st.just(torch.zeros(2, 2)),
    st.just(bytearray(4)),
)


@contextlib.contextmanager
def small_memory_limit():
    memory = _runtime._State.memory
    saved, memory.limit = memory.limit, 1 << 20
    try:
        yield
    finally:
        memory.limit = saved


@given(args=st.lists(junk, min_size=7, max_size=7))
def test_c_api_returns_status_codes_for_any_arguments(args):
    with small_memory_limit():
        _call_everything(args)


def _call_everything(a):
    results = [
        aclnn.aclrtMalloc(a[0], a[1]),
        aclnn.aclrtFree(a[0]),
        aclnn.aclrtMemcpy(a[0], a[1], a[2], a[3], a[4]),
        aclnn.aclrtSynchronizeStream(a[0]),
        aclnn.aclrtDestroyStream(a[0]),
        aclnn.aclrtSetDevice(a[0]),
        aclnn.aclDestroyTensor(a[0]),
        aclnn.aclnnAscendAntiQuantGetWorkspaceSize(a[0], a[1], a[2], a[3], a[4], a[5]),
        aclnn.aclnnAscendAntiQuant(a[0], a[1], a[2], a[3]),
        aclnn.aclSetAclOpExecutorRepeatable(a[0]),
        aclnn.aclDestroyAclOpExecutor(a[0]),
    ]
    tensor = aclnn.aclCreateTensor(*a)
    assert tensor is None or isinstance(tensor, aclnn.aclTensor)
    for result in results:
        status = result[-1] if isinstance(result, tuple) and len(result) == 2 else result
        status = result[0] if isinstance(result, tuple) and len(result) == 3 else status
        assert isinstance(status, int)
    aclnn.aclGetRecentErrMsg()
    aclnn.aclrtSetDevice(0)


@given(
    dims=st.lists(st.integers(0, 2**33), max_size=3),
    strides=st.lists(st.integers(0, 2**33), max_size=3),
    offset=st.integers(0, 2**33),
    storage=st.lists(st.integers(0, 64), max_size=3),
    shift=st.integers(-64, 64),
    dtype=st.sampled_from([aclnn.ACL_INT8, aclnn.ACL_INT4, aclnn.ACL_INT32, aclnn.ACL_FLOAT16, aclnn.ACL_FLOAT]),
)
# empty, but its contiguous strides would overflow int64 (found by hypothesis)
@example(dims=[0, 3_036_988_439, 3_037_012_561], strides=[], offset=0, storage=[], shift=0, dtype=aclnn.ACL_INT8)
def test_any_view_either_fits_its_allocation_or_is_refused(dims, strides, offset, storage, shift, dtype):
    with small_memory_limit():  # stride-0 views may describe 2**66 elements: keep copies small
        _check_any_view(dims, strides, offset, storage, shift, dtype)


def _check_any_view(dims, strides, offset, storage, shift, dtype):
    ptr, _ = aclnn.aclrtMalloc(256)
    t = aclnn.aclCreateTensor(dims, dtype, strides[: len(dims)] if len(strides) >= len(dims) else None, offset,
                              aclnn.ACL_FORMAT_ND, storage, ptr + 64 + shift)  # fmt: skip
    if t is not None:
        assert 0 <= t.address - ptr and t.address - ptr + t.storage_bytes <= 256
        try:
            values = aclnn.to_torch(t)
        except RuntimeError as exc:  # only a view far bigger than memory may be refused here
            assert "more than host memory allows" in str(exc)
        else:
            assert values.shape == tuple(dims)
    aclnn.aclGetRecentErrMsg()
    aclnn.aclrtFree(ptr)
