"""``aclTensor``: a strided view over emulated device memory (SPEC §7.5), and torch conversions.

Element ``(i0, .., ik)`` of a tensor lives at ``tensorData + (offset + sum(i_d * stride_d)) * elemsize``.
At creation the view must lie inside its storage (``storageDims``) and the storage inside one
live allocation; both are checked again whenever the memory is used, since it may have been
freed meanwhile. ACL_INT4 tensors count int4 elements, two per byte, low nibble first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import _constants as c
from ._errors import aclGetRecentErrMsg, aclnn_failure, record
from ._runtime import MemoryFault, _is_int, _State, aclrtFree, aclrtMalloc, aclrtMemcpy, device_bytes

MAX_DIMS = 32
INT64_MAX = (1 << 63) - 1

# Storage dtype for each supported aclDataType. HIFLOAT8 has no torch type: its raw bytes are uint8.
TORCH_DTYPES: dict[int, torch.dtype] = {
    c.ACL_FLOAT: torch.float32,
    c.ACL_FLOAT16: torch.float16,
    c.ACL_INT8: torch.int8,
    c.ACL_INT32: torch.int32,
    c.ACL_UINT8: torch.uint8,
    c.ACL_INT16: torch.int16,
    c.ACL_UINT16: torch.uint16,
    c.ACL_UINT32: torch.uint32,
    c.ACL_INT64: torch.int64,
    c.ACL_UINT64: torch.uint64,
    c.ACL_DOUBLE: torch.float64,
    c.ACL_BOOL: torch.bool,
    c.ACL_COMPLEX32: torch.complex32,
    c.ACL_COMPLEX64: torch.complex64,
    c.ACL_COMPLEX128: torch.complex128,
    c.ACL_BF16: torch.bfloat16,
    c.ACL_HIFLOAT8: torch.uint8,
    c.ACL_FLOAT8_E5M2: torch.float8_e5m2,
    c.ACL_FLOAT8_E4M3FN: torch.float8_e4m3fn,
    c.ACL_FLOAT8_E8M0: torch.float8_e8m0fnu,
}
FROM_TORCH: dict[torch.dtype, int] = {t: code for code, t in TORCH_DTYPES.items() if code != c.ACL_HIFLOAT8}


def dtype_name(code: int) -> str:
    """CANN's spelling in messages: ACL_FLOAT16 -> DT_FLOAT16."""
    name = c.DATA_TYPE_NAMES.get(code)
    return f"DT_{name[4:]}" if name else f"DT_UNDEFINED({code})"


def storage_nbytes(data_type: int, elements: int) -> int:
    if data_type == c.ACL_INT4:
        return (elements + 1) // 2
    return elements * TORCH_DTYPES[data_type].itemsize


def contiguous_strides(dims: Sequence[int]) -> list[int]:
    strides, step = [], 1
    for d in reversed(dims):
        strides.append(step)
        step *= max(d, 1)
    return strides[::-1]


class aclTensor:
    """Descriptor of a strided view over device memory; it does not own the memory
    (except tensors made by :func:`from_torch`, whose memory aclDestroyTensor frees)."""

    __slots__ = ("view_dims", "data_type", "strides", "offset", "format", "storage_dims", "address",
                 "destroyed", "owns_memory")  # fmt: skip

    def __init__(
        self,
        view_dims: tuple[int, ...],
        data_type: int,
        strides: tuple[int, ...],
        offset: int,
        format: int,
        storage_dims: tuple[int, ...],
        address: int | None,
    ) -> None:
        self.view_dims = view_dims
        self.data_type = data_type
        self.strides = strides
        self.offset = offset
        self.format = format
        self.storage_dims = storage_dims
        self.address = address
        self.destroyed = False
        self.owns_memory = False

    def __repr__(self) -> str:
        where = f"{self.address:#x}" if self.address else "nullptr"
        state = " destroyed" if self.destroyed else ""
        return (
            f"<aclTensor {dtype_name(self.data_type)} dims={list(self.view_dims)} strides={list(self.strides)} "
            f"offset={self.offset} at {where}{state}>"
        )

    @property
    def numel(self) -> int:
        return math.prod(self.view_dims)

    @property
    def storage_bytes(self) -> int:
        return storage_nbytes(self.data_type, math.prod(self.storage_dims))

    def is_contiguous(self) -> bool:
        """Row-major dense view (the offset may be anything), as aclnn's IsContiguous."""
        expected = contiguous_strides(self.view_dims)
        return all(d == 1 or s == e for d, s, e in zip(self.view_dims, self.strides, expected, strict=True))

    def overlaps_itself(self) -> bool:
        """True when two view elements share one memory location (a broadcast, stride-0 view)."""
        span = 1  # elements covered by the dims seen so far, smallest stride first
        for d, s in sorted((ds for ds in zip(self.view_dims, self.strides, strict=True) if ds[0] > 1),
                           key=lambda ds: ds[1]):  # fmt: skip
            if s < span:
                return True
            span += s * (d - 1)
        return False

    def storage(self) -> torch.Tensor:
        """The uint8 bytes of the storage (shared); raises MemoryFault if the memory is gone."""
        if self.destroyed:
            raise MemoryFault("the tensor has been destroyed by aclDestroyTensor")
        return device_bytes(self.address, self.storage_bytes)

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        """The torch view described by this tensor over its storage bytes ``raw`` (INT4 -> int8 values, a copy)."""
        if self.numel == 0:  # zero strides: contiguous ones may overflow int64 (0 x 2**32 x 2**32)
            return torch.empty_strided(self.view_dims, [0] * len(self.view_dims), dtype=torch.int8
                                       if self.data_type == c.ACL_INT4 else TORCH_DTYPES[self.data_type])  # fmt: skip
        if self.data_type == c.ACL_INT4:
            nibbles = torch.stack((raw & 0xF, raw >> 4), dim=-1).reshape(-1).to(torch.int8)
            storage = (nibbles ^ 8) - 8  # sign-extend
        else:
            storage = raw.view(TORCH_DTYPES[self.data_type])
        return torch.as_strided(storage, self.view_dims, self.strides, storage.storage_offset() + self.offset)


def _int_list(value: object, name: str, allow_none: bool = False) -> tuple[int, ...] | None:
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not isinstance(value, torch.Size):
        raise ValueError(f"{name} must be a list of ints, got {type(value).__name__}")
    items = tuple(value)
    if len(items) > MAX_DIMS:
        raise ValueError(f"{name} has {len(items)} entries; at most {MAX_DIMS} are supported")
    for item in items:
        if not _is_int(item) or not 0 <= item <= INT64_MAX:
            raise ValueError(f"{name} entries must be non-negative int64 values, got {list(items)}")
    return items


def aclCreateTensor(
    viewDims: Sequence[int],
    dataType: int,
    stride: Sequence[int] | None,
    offset: int,
    format: int,
    storageDims: Sequence[int],
    tensorData: int | None,
) -> aclTensor | None:
    """Describes a strided view over device memory (SPEC §7.5); None on failure (aclGetRecentErrMsg says why).

    ``stride`` is in elements (None = contiguous), ``offset`` in elements from the storage start,
    ``tensorData`` a device address from aclrtMalloc (None / 0 only for empty storage)."""
    try:
        dims = _int_list(viewDims, "viewDims")
        if not _is_int(dataType) or dataType not in c.DATA_TYPE_NAMES:
            raise ValueError(f"unknown aclDataType {dataType!r}")
        if dataType != c.ACL_INT4 and dataType not in TORCH_DTYPES:
            raise ValueError(f"{dtype_name(dataType)} is not supported by the emulation")
        strides = _int_list(stride, "stride", allow_none=True)
        strides = tuple(contiguous_strides(dims)) if strides is None else strides
        if len(strides) != len(dims):
            raise ValueError(f"stride has {len(strides)} entries but viewDims has {len(dims)}")
        if not _is_int(offset) or not 0 <= offset <= INT64_MAX:
            raise ValueError(f"offset must be a non-negative int, got {offset!r}")
        if not _is_int(format) or format not in c.FORMATS:
            raise ValueError(f"unknown aclFormat {format!r}")
        storage_dims = _int_list(storageDims, "storageDims")
        elements = math.prod(storage_dims)
        if math.prod(dims) > 0:
            last = offset + sum((d - 1) * s for d, s in zip(dims, strides, strict=True))
            if last >= elements:
                raise ValueError(
                    f"the view (dims {list(dims)}, strides {list(strides)}, offset {offset}) reaches element {last}, "
                    f"outside its storage of {elements} elements (storageDims {list(storage_dims)})"
                )
        if tensorData is not None and not _is_int(tensorData):
            raise ValueError(f"tensorData must be a device address (int) from aclrtMalloc, got {type(tensorData).__name__}")
        address = tensorData or None
        nbytes = storage_nbytes(dataType, elements)
        if address is None and nbytes:
            raise ValueError(f"tensorData is nullptr but the storage holds {nbytes} bytes")
        if address is not None:
            align = 1 if dataType == c.ACL_INT4 else TORCH_DTYPES[dataType].itemsize
            if address % align:
                raise ValueError(f"tensorData {address:#x} is not aligned to the {align}-byte element size")
            device_bytes(address, nbytes)  # the storage must lie inside one live allocation
    except (ValueError, MemoryFault) as exc:
        record(f"aclCreateTensor failed: {exc}")
        return None
    return aclTensor(dims, dataType, strides, offset, format, storage_dims, address)


def aclDestroyTensor(tensor: aclTensor) -> int:
    """Releases the descriptor (not the memory, except for tensors made by from_torch)."""
    if tensor is None:
        return aclnn_failure(c.ACLNN_ERR_PARAM_NULLPTR, "aclDestroyTensor: tensor is nullptr.")
    if not isinstance(tensor, aclTensor):
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, f"aclDestroyTensor: not an aclTensor: {type(tensor).__name__}")
    if tensor.destroyed:
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, f"aclDestroyTensor: {tensor!r} was already destroyed")
    tensor.destroyed = True
    if tensor.owns_memory and tensor.address is not None:
        aclrtFree(tensor.address)
    return c.ACLNN_SUCCESS


def _pack_int4_bytes(values: torch.Tensor) -> torch.Tensor:
    """Flat int values in [-8, 7] -> uint8 bytes, element 2k in the low nibble of byte k."""
    nibbles = (values.to(torch.int16) & 0xF).to(torch.uint8)
    if nibbles.numel() % 2:
        nibbles = torch.cat((nibbles, nibbles.new_zeros(1)))
    pairs = nibbles.reshape(-1, 2)
    return pairs[:, 0] | (pairs[:, 1] << 4)


def from_torch(tensor: torch.Tensor, dtype: int | None = None, format: int = c.ACL_FORMAT_ND) -> aclTensor:
    """Copies a tensor into fresh device memory and describes it (contiguous, storage = view).

    ``dtype`` (an aclDataType) defaults to the tensor's dtype; ``ACL_INT4`` packs integer values in [-8, 7]
    two per byte. The memory belongs to the aclTensor: aclDestroyTensor frees it.
    Needs aclInit and aclrtSetDevice first.

    Raises:
        TypeError: not a tensor. ValueError: unsupported or mismatched dtype, int4 values out of
        range. RuntimeError: the runtime refused (message from aclGetRecentErrMsg).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"from_torch expects a torch.Tensor, got {type(tensor).__name__}")
    src = tensor.detach().cpu().contiguous()
    code = FROM_TORCH.get(src.dtype) if dtype is None else dtype
    if code is None:
        raise ValueError(f"from_torch: {src.dtype} has no aclDataType")
    if code == c.ACL_INT4:
        if src.dtype.is_floating_point or src.dtype.is_complex or src.dtype == torch.bool:
            raise ValueError(f"from_torch: ACL_INT4 needs integer values in [-8, 7], got {src.dtype}")
        if src.numel() and (int(src.min()) < -8 or int(src.max()) > 7):
            raise ValueError("from_torch: ACL_INT4 values must be in [-8, 7]")
        payload = _pack_int4_bytes(src.reshape(-1))
    elif code in TORCH_DTYPES:
        if TORCH_DTYPES[code] != src.dtype:
            raise ValueError(f"from_torch: dtype {dtype_name(code)} does not match the tensor's {src.dtype}")
        payload = src.reshape(-1).view(torch.uint8)
    else:
        raise ValueError(f"from_torch: unsupported aclDataType {dtype!r}")
    nbytes = payload.numel()
    address = None
    if nbytes:
        address, ret = aclrtMalloc(nbytes)
        if ret != c.ACL_SUCCESS:
            raise RuntimeError(f"from_torch: aclrtMalloc returned {ret}: {_last_message()}")
        ret = aclrtMemcpy(address, nbytes, payload, nbytes, c.ACL_MEMCPY_HOST_TO_DEVICE)
        if ret != c.ACL_SUCCESS:  # pragma: no cover - fresh memory of the right size
            aclrtFree(address)
            raise RuntimeError(f"from_torch: aclrtMemcpy returned {ret}: {_last_message()}")
    dims = list(src.shape)
    result = aclCreateTensor(dims, code, None, 0, format, dims, address)
    if result is None:
        if address is not None:
            aclrtFree(address)
        raise RuntimeError(f"from_torch: {_last_message()}")
    result.owns_memory = True
    return result


def to_torch(tensor: aclTensor) -> torch.Tensor:
    """Copies the view's current values out as a contiguous CPU tensor (ACL_INT4 -> int8 values).

    Reads device memory as it is now: synchronize the stream that writes it first.

    Raises:
        TypeError: not an aclTensor. RuntimeError: destroyed tensor or freed memory.
    """
    if not isinstance(tensor, aclTensor):
        raise TypeError(f"to_torch expects an aclTensor, got {type(tensor).__name__}")
    itemsize = 1 if tensor.data_type == c.ACL_INT4 else TORCH_DTYPES[tensor.data_type].itemsize
    if tensor.numel * itemsize > _State.memory.limit:  # a stride-0 view can describe far more than exists
        raise RuntimeError(f"to_torch: {tensor!r} holds {tensor.numel} elements, more than host memory allows")
    try:
        raw = tensor.storage()
    except MemoryFault as exc:
        raise RuntimeError(f"to_torch: {exc}") from None
    view = tensor.view(raw)
    if tensor.numel == 0:  # already a fresh tensor; cloning would compute contiguous strides, which may overflow
        return view
    return view.clone(memory_format=torch.contiguous_format)


def _last_message() -> str:
    return aclGetRecentErrMsg() or "no details"
