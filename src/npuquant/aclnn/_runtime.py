"""Emulated ACL runtime: initialisation, one device, tracked device memory, streams.

Device memory is host RAM held in torch uint8 tensors, one per ``aclrtMalloc``. Device
addresses are plain ints starting at 2**60, above every user-space address on x86-64 and
AArch64, so they can never be mistaken for (or used as) real host pointers; every access is
looked up and bounds-checked against its allocation. Addresses are never reused.

Each stream owns one worker thread that runs its tasks in FIFO order, so phase 2 of an
aclnn call returns before the work is done, exactly as on the device; results are only
guaranteed after ``aclrtSynchronizeStream``. Tasks hold references to the memory they use,
so freeing memory with work still queued cannot crash the process (the results are lost,
as they would be on the device).
"""

from __future__ import annotations

import bisect
import itertools
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _constants as c
from ._errors import acl_failure

BASE_ADDRESS = 1 << 60
ALIGNMENT = 512  # every allocation starts on a 512-byte boundary (so 32-byte aligned, as CANN guarantees)
GUARD_BYTES = 512  # unmapped gap after each allocation: a small overrun never lands in a neighbour
DEVICE_COUNT = 1

_lock = threading.RLock()  # guards the state below; stream tasks never take it


class MemoryFault(Exception):
    """An access outside tracked device memory or a bad host buffer; the message says which."""


@dataclass(frozen=True)
class _Allocation:
    base: int
    size: int
    data: torch.Tensor  # uint8, exactly `size` bytes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _default_memory_limit() -> int:
    env = os.environ.get("NPUQUANT_ACL_MEMORY_LIMIT")
    if env:
        return int(env)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 8 << 30


class _DeviceMemory:
    def __init__(self) -> None:
        self.by_base: dict[int, _Allocation] = {}
        self.bases: list[int] = []  # sorted, since addresses only grow
        self.next_address = BASE_ADDRESS
        self.in_use = 0
        self.limit = _default_memory_limit()

    def malloc(self, size: int) -> _Allocation:
        if self.in_use + size > self.limit:
            raise MemoryError(
                f"{size} bytes requested, {self.in_use} in use, emulated device memory limit {self.limit} bytes "
                "(NPUQUANT_ACL_MEMORY_LIMIT)"
            )
        try:
            data = torch.empty(size, dtype=torch.uint8)  # uninitialized, like device memory
        except RuntimeError as exc:
            raise MemoryError(str(exc)) from None
        alloc = _Allocation(self.next_address, size, data)
        self.next_address += -(-(size + GUARD_BYTES) // ALIGNMENT) * ALIGNMENT
        self.by_base[alloc.base] = alloc
        self.bases.append(alloc.base)
        self.in_use += size
        return alloc

    def free(self, base: int) -> bool:
        alloc = self.by_base.pop(base, None)
        if alloc is None:
            return False
        self.bases.remove(base)
        self.in_use -= alloc.size
        return True

    def find(self, address: int, nbytes: int) -> tuple[_Allocation, int]:
        """The allocation holding ``[address, address + nbytes)`` and the offset of address in it."""
        if not _is_int(address):
            raise MemoryFault(f"a device address must be an int from aclrtMalloc, got {type(address).__name__}")
        i = bisect.bisect_right(self.bases, address) - 1
        alloc = self.by_base[self.bases[i]] if i >= 0 else None
        if alloc is None or address >= alloc.base + alloc.size + (1 if nbytes == 0 else 0):
            raise MemoryFault(f"address {address:#x} is not in live device memory (never allocated, or freed)")
        offset = address - alloc.base
        if offset + nbytes > alloc.size:
            raise MemoryFault(
                f"{nbytes} bytes at {address:#x} reach past the end of its allocation "
                f"({alloc.size} bytes at {alloc.base:#x}; {alloc.size - offset} bytes available)"
            )
        return alloc, offset

    def clear(self) -> None:
        self.by_base.clear()
        self.bases.clear()
        self.in_use = 0


class aclrtStream:
    """Opaque stream handle: tasks run in submission order on the stream's own worker thread."""

    _numbers = itertools.count(1)

    def __init__(self) -> None:
        self.number = next(self._numbers)
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._error: str | None = None
        self._state_lock = threading.Lock()
        self._alive = True
        self._thread = threading.Thread(target=self._work, name=f"npuquant-acl-stream-{self.number}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<aclrtStream #{self.number}{'' if self._alive else ' destroyed'}>"

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                task()
            except Exception as exc:  # a failing task must not kill the stream; reported at synchronize
                with self._state_lock:
                    if self._error is None:
                        self._error = f"{type(exc).__name__}: {exc}"
            finally:
                self._queue.task_done()

    @property
    def alive(self) -> bool:
        return self._alive

    def submit(self, task: Callable[[], None]) -> bool:
        with self._state_lock:
            if not self._alive:
                return False
            self._queue.put(task)
            return True

    def synchronize(self) -> str | None:
        """Blocks until every queued task ran; returns (and clears) the first task failure."""
        self._queue.join()
        with self._state_lock:
            error, self._error = self._error, None
        return error

    def close(self) -> None:
        """Drains the queue, then stops the worker."""
        with self._state_lock:
            if not self._alive:
                return
            self._alive = False
            self._queue.put(None)
        self._thread.join()


class _State:
    initialized = False
    device: int | None = None
    memory = _DeviceMemory()
    streams: dict[int, aclrtStream] = {}
    default_stream: aclrtStream | None = None


def _release_device() -> None:
    """aclrtResetDevice: every stream is drained and destroyed, every allocation freed."""
    for stream in list(_State.streams.values()):
        stream.close()
    _State.streams.clear()
    if _State.default_stream is not None:
        _State.default_stream.close()
        _State.default_stream = None
    _State.memory.clear()
    _State.device = None


def _require_device(function: str) -> int:
    if not _State.initialized:
        return acl_failure(c.ACL_ERROR_UNINITIALIZE, function, "call aclInit first")
    if _State.device is None:
        return acl_failure(c.ACL_ERROR_RT_CONTEXT_NULL, function, "no current device: call aclrtSetDevice first")
    return c.ACL_SUCCESS


# ---------------------------------------------------------------------------------------------- init / device


def aclInit(config: str | os.PathLike[str] | None = None) -> int:
    """Initialises the runtime. ``config`` (a JSON path in CANN) may be None or an existing file; its content is ignored."""
    with _lock:
        if _State.initialized:
            return acl_failure(c.ACL_ERROR_REPEAT_INITIALIZE, "aclInit", "already initialized; call aclFinalize first")
        if config not in (None, ""):
            if not isinstance(config, (str, os.PathLike)) or not os.path.isfile(config):
                return acl_failure(c.ACL_ERROR_INVALID_FILE, "aclInit", f"config file {config!r} does not exist")
        _State.initialized = True
        return c.ACL_SUCCESS


def aclFinalize() -> int:
    """Releases everything (streams are drained first) and ends the runtime."""
    with _lock:
        if not _State.initialized:
            return acl_failure(c.ACL_ERROR_REPEAT_FINALIZE, "aclFinalize", "not initialized (or already finalized)")
        _release_device()
        _State.initialized = False
        return c.ACL_SUCCESS


def _check_device_id(function: str, device_id: object) -> int:
    if not _State.initialized:
        return acl_failure(c.ACL_ERROR_UNINITIALIZE, function, "call aclInit first")
    if not _is_int(device_id) or not 0 <= device_id < DEVICE_COUNT:
        return acl_failure(
            c.ACL_ERROR_RT_INVALID_DEVICEID, function, f"invalid device id {device_id!r}: the emulation has device 0 only"
        )
    return c.ACL_SUCCESS


def aclrtSetDevice(deviceId: int) -> int:
    """Makes device ``deviceId`` (only 0 exists) current for the process."""
    with _lock:
        ret = _check_device_id("aclrtSetDevice", deviceId)
        if ret == c.ACL_SUCCESS:
            _State.device = deviceId
        return ret


def aclrtResetDevice(deviceId: int) -> int:
    """Releases the device's resources: streams (drained, then destroyed) and all device memory."""
    with _lock:
        ret = _check_device_id("aclrtResetDevice", deviceId)
        if ret == c.ACL_SUCCESS and _State.device is not None:
            _release_device()
        return ret


# ---------------------------------------------------------------------------------------------- memory


def aclrtMalloc(size: int, policy: int = c.ACL_MEM_MALLOC_HUGE_FIRST) -> tuple[int, int]:
    """Allocates ``size`` bytes of emulated device memory: ``(devPtr, ret)``; devPtr is 0 on failure.

    The memory is uninitialized, as on the device."""
    with _lock:
        ret = _require_device("aclrtMalloc")
        if ret != c.ACL_SUCCESS:
            return 0, ret
        if not _is_int(size) or size <= 0:
            return 0, acl_failure(c.ACL_ERROR_INVALID_PARAM, "aclrtMalloc", f"size must be a positive int, got {size!r}")
        if not _is_int(policy) or policy < 0:
            return 0, acl_failure(c.ACL_ERROR_INVALID_PARAM, "aclrtMalloc", f"invalid policy {policy!r}")
        try:
            alloc = _State.memory.malloc(size)
        except MemoryError as exc:
            return 0, acl_failure(c.ACL_ERROR_RT_MEMORY_ALLOCATION, "aclrtMalloc", str(exc))
        return alloc.base, c.ACL_SUCCESS


def aclrtFree(devPtr: int) -> int:
    """Frees an allocation; ``devPtr`` must be exactly what aclrtMalloc returned."""
    with _lock:
        if not _State.initialized:
            return acl_failure(c.ACL_ERROR_UNINITIALIZE, "aclrtFree", "call aclInit first")
        if not _is_int(devPtr) or not _State.memory.free(devPtr):
            shown = f"{devPtr:#x}" if _is_int(devPtr) else repr(devPtr)
            return acl_failure(
                c.ACL_ERROR_INVALID_PARAM,
                "aclrtFree",
                f"{shown} is not the start of a live allocation (unknown, inside an allocation, or already freed)",
            )
        return c.ACL_SUCCESS


def device_bytes(address: int | None, nbytes: int) -> torch.Tensor:
    """The uint8 tensor over ``[address, address + nbytes)`` of device memory (shares memory).

    Raises MemoryFault when the range is not inside one live allocation."""
    if nbytes == 0 and address in (None, 0):
        return torch.empty(0, dtype=torch.uint8)
    with _lock:
        alloc, offset = _State.memory.find(address, nbytes)
        return alloc.data[offset : offset + nbytes]


def _host_bytes(buffer: object, nbytes: int, writable: bool, side: str) -> torch.Tensor:
    """The first ``nbytes`` of a host buffer as a uint8 tensor (shared when writable, copied otherwise)."""
    if isinstance(buffer, torch.Tensor):
        if buffer.device.type != "cpu":
            raise MemoryFault(f"{side}: host tensors must be on the CPU, got {buffer.device}")
        t = buffer.detach()
        if not t.is_contiguous():
            if writable:
                raise MemoryFault(f"{side}: a host tensor written by aclrtMemcpy must be contiguous")
            t = t.contiguous()
        total = t.numel() * t.element_size()
        if nbytes > total:
            raise MemoryFault(f"{side}: {nbytes} bytes requested but the host tensor holds {total}")
        return t.reshape(-1).view(torch.uint8)[:nbytes]
    if _is_int(buffer):
        raise MemoryFault(
            f"{side}: the host side must be a bytes-like object or a CPU tensor, not an integer address"
        )
    try:
        view = memoryview(buffer)
    except TypeError:
        raise MemoryFault(
            f"{side}: the host side must be a bytes-like object or a CPU tensor, got {type(buffer).__name__}"
        ) from None
    if writable and view.readonly:
        raise MemoryFault(f"{side}: the host buffer is read-only")
    if not view.c_contiguous:
        raise MemoryFault(f"{side}: the host buffer must be C-contiguous")
    if nbytes > view.nbytes:
        raise MemoryFault(f"{side}: {nbytes} bytes requested but the host buffer holds {view.nbytes}")
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    flat = view.cast("B")
    if writable:
        return torch.frombuffer(flat, dtype=torch.uint8, count=nbytes)
    return torch.frombuffer(bytearray(flat[:nbytes]), dtype=torch.uint8)


def aclrtMemcpy(dst: object, destMax: int, src: object, count: int, kind: int) -> int:
    """Synchronous copy of ``count`` bytes (SPEC I.1).

    Device sides are ints from aclrtMalloc (plus a byte offset); host sides are bytes-like
    objects or CPU tensors. Both ranges are checked before anything is written. Like the
    device, this does not wait for queued stream work: synchronize the stream first."""
    function = "aclrtMemcpy"
    with _lock:
        if not _State.initialized:
            return acl_failure(c.ACL_ERROR_UNINITIALIZE, function, "call aclInit first")
    for name, value in (("destMax", destMax), ("count", count)):
        if not _is_int(value) or value < 0:
            return acl_failure(c.ACL_ERROR_INVALID_PARAM, function, f"{name} must be a non-negative int, got {value!r}")
    if count > destMax:
        return acl_failure(c.ACL_ERROR_INVALID_PARAM, function, f"count ({count}) exceeds destMax ({destMax})")
    if not _is_int(kind) or not c.ACL_MEMCPY_HOST_TO_HOST <= kind <= c.ACL_MEMCPY_DEFAULT:
        return acl_failure(c.ACL_ERROR_INVALID_PARAM, function, f"invalid aclrtMemcpyKind {kind!r}")
    if kind == c.ACL_MEMCPY_DEFAULT:
        dst_on_device, src_on_device = _is_int(dst), _is_int(src)
    else:
        dst_on_device = kind in (c.ACL_MEMCPY_HOST_TO_DEVICE, c.ACL_MEMCPY_DEVICE_TO_DEVICE)
        src_on_device = kind in (c.ACL_MEMCPY_DEVICE_TO_HOST, c.ACL_MEMCPY_DEVICE_TO_DEVICE)
    try:
        target = device_bytes(dst, count) if dst_on_device else _host_bytes(dst, count, True, "dst")
        source = device_bytes(src, count) if src_on_device else _host_bytes(src, count, False, "src")
    except MemoryFault as exc:
        return acl_failure(c.ACL_ERROR_INVALID_PARAM, function, str(exc))
    if count:
        if dst_on_device and src_on_device:
            source = source.clone()  # the ranges may overlap
        target.copy_(source)
    return c.ACL_SUCCESS


# ---------------------------------------------------------------------------------------------- streams


def aclrtCreateStream() -> tuple[aclrtStream | None, int]:
    """A new stream with its own in-order worker: ``(stream, ret)``."""
    with _lock:
        ret = _require_device("aclrtCreateStream")
        if ret != c.ACL_SUCCESS:
            return None, ret
        stream = aclrtStream()
        _State.streams[id(stream)] = stream
        return stream, c.ACL_SUCCESS


class StreamFault(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def resolve_stream(stream: object) -> aclrtStream:
    """A live stream for ``stream``; None or 0 (nullptr) means the device's default stream."""
    with _lock:
        if stream is None or (_is_int(stream) and stream == 0):
            if not _State.initialized or _State.device is None:
                raise StreamFault(
                    c.ACL_ERROR_RT_CONTEXT_NULL, "the default stream needs aclInit and aclrtSetDevice first"
                )
            if _State.default_stream is None:
                _State.default_stream = aclrtStream()
            return _State.default_stream
        if not isinstance(stream, aclrtStream):
            raise StreamFault(c.ACL_ERROR_INVALID_PARAM, f"not an aclrtStream: {type(stream).__name__}")
        if _State.streams.get(id(stream)) is not stream:
            raise StreamFault(c.ACL_ERROR_INVALID_PARAM, f"{stream!r} is not a live stream (destroyed or reset)")
        return stream


def aclrtSynchronizeStream(stream: aclrtStream | None) -> int:
    """Blocks until every task queued on ``stream`` has finished; reports a task failure."""
    try:
        live = resolve_stream(stream)
    except StreamFault as exc:
        return acl_failure(exc.status, "aclrtSynchronizeStream", str(exc))
    error = live.synchronize()
    if error is not None:
        return acl_failure(c.ACL_ERROR_RT_AICORE_EXCEPTION, "aclrtSynchronizeStream", f"a task failed: {error}")
    return c.ACL_SUCCESS


def aclrtDestroyStream(stream: aclrtStream) -> int:
    """Waits for the stream's queued tasks, then destroys it."""
    with _lock:
        if stream is None:
            return acl_failure(c.ACL_ERROR_INVALID_PARAM, "aclrtDestroyStream", "stream is nullptr")
        if not isinstance(stream, aclrtStream) or _State.streams.get(id(stream)) is not stream:
            return acl_failure(c.ACL_ERROR_INVALID_PARAM, "aclrtDestroyStream", f"{stream!r} is not a live stream")
        del _State.streams[id(stream)]
    stream.close()
    return c.ACL_SUCCESS
