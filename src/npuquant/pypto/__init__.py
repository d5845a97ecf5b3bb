"""PyPTO-compatible ``dequantize`` on CPU (SPEC §8), tile by tile.

A thin front-end: it checks PyPTO's rules with PyPTO's messages, then walks the output in
vector tiles (``set_vec_tile_shapes``) and calls ``npuquant.ops.dequantize`` (an adapter over ``torch.ops.npuquant.dequant_affine``)
on each tile. The tile shape never changes the numbers.

    import torch
    from npuquant import pypto

    pypto.set_vec_tile_shapes(4, 16)
    x = pypto.from_torch(torch.tensor([[1, 2, 3, 4]] * 3, dtype=torch.int8))
    scale = pypto.from_torch(torch.ones(3, 1))
    zero_points = pypto.from_torch(torch.full((3, 1), -2.0))
    y = pypto.dequantize(x, scale, pypto.DT_FP32, -1, zero_points)
    y.to_torch()  # [[-1, 0, 1, 2]] * 3

Formula: ``dst = (float(input) + zero_points) * scale`` (``float(input) * scale`` without zero
points), float32 arithmetic.

Sign of the zero points: the seed document (pypto.dequantize) and PyPTO's API doc **add** the
zero points, and the seed's worked example (y2 = [-1, 0, 1, 2] for x = [1, 2, 3, 4], zp = -2)
only matches addition. PyPTO's current device kernel and its tests **subtract** them
(``(input - zero_points) * scale``), and its interpreter computes ``input * scale - zero_points``.
npuquant follows the seed: code ported from hardware that relies on the kernel's subtraction
must negate its zero points.

Other decisions: input rank 2-4 (the seed's range); scale / zero_points may have PyPTO's
reduced shape (``input.shape[:-1]`` for axis -1, ``input.shape[:-2] + [col]`` for axis -2) or
the keep-dim shape the seed example uses (``[..., row, 1]`` / ``[..., 1, col]``); an empty
zero_points tensor means symmetric. Tile-shape errors raise ValueError, rule violations of
``dequantize`` raise RuntimeError (what PyPTO's C++ checks surface as), wrong argument types
raise TypeError. The vector tile shape is process-wide state, like PyPTO's global config.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence

import torch

from ..ops.dequantize import dequantize as dequantize_op
from ..ops.dequantize import normalize_axis, param_shape

__all__ = [
    "DataType",
    "TileOpFormat",
    "Tensor",
    "tensor",
    "from_torch",
    "set_vec_tile_shapes",
    "get_vec_tile_shapes",
    "dequantize",
    "TILEOP_ND",
    "TILEOP_NZ",
    "DT_INT4",
    "DT_INT8",
    "DT_INT16",
    "DT_INT32",
    "DT_INT64",
    "DT_FP8",
    "DT_FP16",
    "DT_FP32",
    "DT_BF16",
    "DT_HF4",
    "DT_HF8",
    "DT_UINT8",
    "DT_UINT16",
    "DT_UINT32",
    "DT_UINT64",
    "DT_BOOL",
    "DT_DOUBLE",
    "DT_FP8E4M3",
    "DT_FP8E5M2",
    "DT_FP8E8M0",
    "DT_FP4_E2M1X2",
    "DT_FP4_E1M2X2",
    "DT_FP4_E2M1",
    "DT_FP4_E1M2",
    "DT_BOTTOM",
]

INT32_MAX = 2**31 - 1
MAX_TILE_DIMS = 4
TILE_ALIGN_BYTES = 32


class DataType(enum.IntEnum):
    """PyPTO's ``DataType``; values are the C++ ordinals PyPTO's Python binding exposes (SPEC §8.5)."""

    DT_INT4 = 0
    DT_INT8 = 1
    DT_INT16 = 2
    DT_INT32 = 3
    DT_INT64 = 4
    DT_FP8 = 5
    DT_FP16 = 6
    DT_FP32 = 7
    DT_BF16 = 8
    DT_HF4 = 9
    DT_HF8 = 10
    DT_UINT8 = 11
    DT_UINT16 = 12
    DT_UINT32 = 13
    DT_UINT64 = 14
    DT_BOOL = 15
    DT_DOUBLE = 16
    DT_FP8E4M3 = 17
    DT_FP8E5M2 = 18
    DT_FP8E8M0 = 19
    DT_FP4_E2M1X2 = 20
    DT_FP4_E1M2X2 = 21
    DT_FP4_E2M1 = 22
    DT_FP4_E1M2 = 23
    DT_BOTTOM = 24

    def __repr__(self) -> str:
        return f"DataType.{self.name}"

    __str__ = __repr__


class TileOpFormat(enum.IntEnum):
    """Tensor storage format; only ND exists on CPU."""

    TILEOP_ND = 0
    TILEOP_NZ = 1

    def __repr__(self) -> str:
        return f"TileOpFormat.{self.name}"

    __str__ = __repr__


# Module-level aliases, as PyPTO exports them (pypto.DT_INT8, ...).
DT_INT4 = DataType.DT_INT4
DT_INT8 = DataType.DT_INT8
DT_INT16 = DataType.DT_INT16
DT_INT32 = DataType.DT_INT32
DT_INT64 = DataType.DT_INT64
DT_FP8 = DataType.DT_FP8
DT_FP16 = DataType.DT_FP16
DT_FP32 = DataType.DT_FP32
DT_BF16 = DataType.DT_BF16
DT_HF4 = DataType.DT_HF4
DT_HF8 = DataType.DT_HF8
DT_UINT8 = DataType.DT_UINT8
DT_UINT16 = DataType.DT_UINT16
DT_UINT32 = DataType.DT_UINT32
DT_UINT64 = DataType.DT_UINT64
DT_BOOL = DataType.DT_BOOL
DT_DOUBLE = DataType.DT_DOUBLE
DT_FP8E4M3 = DataType.DT_FP8E4M3
DT_FP8E5M2 = DataType.DT_FP8E5M2
DT_FP8E8M0 = DataType.DT_FP8E8M0
DT_FP4_E2M1X2 = DataType.DT_FP4_E2M1X2
DT_FP4_E1M2X2 = DataType.DT_FP4_E1M2X2
DT_FP4_E2M1 = DataType.DT_FP4_E2M1
DT_FP4_E1M2 = DataType.DT_FP4_E1M2
DT_BOTTOM = DataType.DT_BOTTOM
TILEOP_ND = TileOpFormat.TILEOP_ND
TILEOP_NZ = TileOpFormat.TILEOP_NZ

# Storage on CPU. Types without a torch counterpart (4-bit, HiFloat, DT_FP8, DT_FP4_E1M2X2) are
# refused by tensor(); from_torch's map (PyPTO converter.py) is the inverse restricted to its list.
_TORCH_DTYPES: dict[DataType, torch.dtype] = {
    DataType.DT_INT8: torch.int8,
    DataType.DT_INT16: torch.int16,
    DataType.DT_INT32: torch.int32,
    DataType.DT_INT64: torch.int64,
    DataType.DT_FP16: torch.float16,
    DataType.DT_FP32: torch.float32,
    DataType.DT_BF16: torch.bfloat16,
    DataType.DT_UINT8: torch.uint8,
    DataType.DT_UINT16: torch.uint16,
    DataType.DT_UINT32: torch.uint32,
    DataType.DT_UINT64: torch.uint64,
    DataType.DT_BOOL: torch.bool,
    DataType.DT_DOUBLE: torch.float64,
    DataType.DT_FP8E4M3: torch.float8_e4m3fn,
    DataType.DT_FP8E5M2: torch.float8_e5m2,
    DataType.DT_FP8E8M0: torch.float8_e8m0fnu,
    DataType.DT_FP4_E2M1X2: torch.float4_e2m1fn_x2,
}
_FROM_TORCH: dict[torch.dtype, DataType] = {t: dt for dt, t in _TORCH_DTYPES.items()}

_ELEMENT_BYTES: dict[DataType, int] = {dt: t.itemsize for dt, t in _TORCH_DTYPES.items()}

_vec_tile_shapes: list[int] | None = None
_name_counter = itertools.count()


def _as_datatype(value: DataType | int, what: str) -> DataType:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be a pypto.DataType, but got {type(value).__name__}")
    try:
        return DataType(value)
    except ValueError:
        raise ValueError(f"{what} must be a pypto.DataType, but got {value}") from None


def _default_name() -> str:
    return f"TENSOR_{next(_name_counter)}"


class Tensor:
    """A PyPTO tensor backed by a CPU torch tensor (``to_torch`` shares its memory).

    ``Tensor(shape, dtype=DT_FP32, name="")`` allocates zero-filled storage (PyPTO leaves the
    content uninitialized; zeros are the deterministic choice).
    """

    def __init__(
        self,
        shape: Sequence[int] | None = None,
        dtype: DataType | int = DataType.DT_FP32,
        name: str = "",
        format: TileOpFormat | int = TileOpFormat.TILEOP_ND,
    ) -> None:
        dims = _check_shape([] if shape is None else shape)
        dt = _as_datatype(dtype, "dtype")
        if dt not in _TORCH_DTYPES:
            raise ValueError(f"pypto.tensor: {dt!r} has no CPU storage in npuquant")
        if TileOpFormat(format) != TileOpFormat.TILEOP_ND:
            raise ValueError("pypto.tensor: only the ND format is supported on CPU")
        self._init(torch.zeros(dims, dtype=_TORCH_DTYPES[dt]), dt, name)

    def _init(self, data: torch.Tensor, dtype: DataType, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, but got {type(name).__name__}")
        self._data = data
        self._dtype = dtype
        self._name = name or _default_name()

    @classmethod
    def _wrap(cls, data: torch.Tensor, dtype: DataType, name: str = "") -> Tensor:
        obj = cls.__new__(cls)
        obj._init(data, dtype, name)
        return obj

    @property
    def shape(self) -> list[int]:
        return list(self._data.shape)

    @property
    def dtype(self) -> DataType:
        return self._dtype

    @property
    def name(self) -> str:
        return self._name

    @property
    def format(self) -> TileOpFormat:
        return TileOpFormat.TILEOP_ND

    def dim(self) -> int:
        return self._data.dim()

    def to_torch(self) -> torch.Tensor:
        """The backing torch tensor (same memory: writes show through both ways)."""
        return self._data

    def __repr__(self) -> str:
        return f"pypto.Tensor(shape={self.shape}, dtype={self._dtype!r}, name={self._name!r})"


tensor = Tensor


def _check_shape(shape: Sequence[int]) -> list[int]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence):
        raise TypeError(f"shape must be a list of ints, but got {type(shape).__name__}")
    dims = list(shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int):
            raise TypeError(f"shape must be a list of ints, but got {shape!r}")
        if d < 0:
            raise ValueError(f"shape entries must be >= 0 (dynamic dims are not supported on CPU), but got {dims}")
    return dims


def from_torch(tensor: torch.Tensor, name: str = "", *, dynamic_axis: Sequence[int] | None = None) -> Tensor:
    """Wraps a contiguous CPU-addressable torch tensor without copying (SPEC §8.4).

    A 0-dim tensor becomes shape ``[1]``. ``dynamic_axis`` is accepted for source compatibility
    and ignored: shapes are always concrete here.

    Raises:
        TypeError: not a torch.Tensor. RuntimeError: not contiguous. ValueError: unsupported dtype.
    """
    del dynamic_axis
    if not isinstance(tensor, torch.Tensor):
        raise TypeError("input type is not currently supported.")
    if not tensor.is_contiguous():
        raise RuntimeError("not all tensors are contiguous")
    dt = _FROM_TORCH.get(tensor.dtype)
    if dt is None:
        raise ValueError(f"Input torch.dtype is not supported. Got {tensor.dtype}")
    data = tensor.reshape(1) if tensor.dim() == 0 else tensor
    return Tensor._wrap(data, dt, name)


def set_vec_tile_shapes(*shapes: int) -> None:
    """Sets the vector tile shape used by later vector ops (1-4 positive ints).

    The 32-byte rule (last tile dim × output element size % 32 == 0) depends on the op's
    output type, so it is checked when an op runs.
    """
    global _vec_tile_shapes
    if not 1 <= len(shapes) <= MAX_TILE_DIMS:
        raise ValueError(f"set_vec_tile_shapes takes 1 to {MAX_TILE_DIMS} dims, but got {len(shapes)}")
    for d in shapes:
        if isinstance(d, bool) or not isinstance(d, int):
            raise ValueError(f"set_vec_tile_shapes takes ints, but got {shapes!r}")
        if d <= 0:
            raise ValueError(f"every tile dim must be > 0, but got {list(shapes)}")
    _vec_tile_shapes = list(shapes)


def get_vec_tile_shapes() -> list[int]:
    """The current vector tile shape (``[]`` when none was set)."""
    return list(_vec_tile_shapes or [])


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def _param(t: Tensor | None, what: str, in_shape: list[int], axis: int) -> torch.Tensor | None:
    """Checks scale / zero_points and returns it in the op's reduced shape (None if absent/empty)."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{what} must be a pypto.Tensor, but got {type(t).__name__}")
    _check(t.dtype == DataType.DT_FP32, f"Dequantize {what} dtype must be FP32, but got dtype={int(t.dtype)}")
    data = t.to_torch()
    if data.numel() == 0:
        _check(what == "zero_points", f"Dequantize {what} must not be empty")
        return None
    reduced = list(param_shape(in_shape, axis))
    keep_dim = in_shape[:-1] + [1] if axis == -1 else in_shape[:-2] + [1, in_shape[-1]]
    _check(
        t.shape in (reduced, keep_dim),
        f"Dequantize {what} shape must be {reduced} (or keep-dim {keep_dim}) for input shape {in_shape} "
        f"and axis={axis}, but got {t.shape}",
    )
    return data.reshape(reduced)


def _tile_shape_for(out_shape: list[int], otype: DataType) -> list[int]:
    _check(
        _vec_tile_shapes is not None,
        "Dequantize needs a vector tile shape: call pypto.set_vec_tile_shapes(...) before it",
    )
    tile = list(_vec_tile_shapes)
    if len(tile) != len(out_shape):
        raise ValueError(
            f"the vector tile shape {tile} has {len(tile)} dims but the output {out_shape} has {len(out_shape)}: "
            "the tile rank must match the output rank"
        )
    if tile[-1] * _ELEMENT_BYTES[otype] % TILE_ALIGN_BYTES:
        raise ValueError(
            f"the tileShape of last axis need to 32Byte align: {tile[-1]} x {_ELEMENT_BYTES[otype]} bytes "
            f"({otype.name}) is not a multiple of {TILE_ALIGN_BYTES}"
        )
    return tile


def dequantize(
    input: Tensor,
    scale: Tensor,
    otype: DataType | int,
    axis: int,
    zero_points: Tensor | None = None,
) -> Tensor:
    """``dst = (float(input) + zero_points) * scale`` per row (axis -1) or per column (axis -2).

    Args:
        input: DT_INT8 / DT_INT16, 2-4 dims ``[..., row, col]``, not empty.
        scale: DT_FP32, shape ``[..., row]`` (axis -1) or ``[..., col]`` (axis -2), or the keep-dim
            form ``[..., row, 1]`` / ``[..., 1, col]``.
        otype: DT_FP32.
        axis: -1 / ``ndim - 1`` (per-row) or -2 / ``ndim - 2`` (per-column).
        zero_points: optional, like scale; None or empty means symmetric (``float(input) * scale``).

    Returns:
        A DT_FP32 Tensor of input's shape, computed tile by tile with the current vector tile
        shape (which must be set and have the output's rank).

    Raises:
        TypeError: an argument is not a pypto.Tensor / DataType / int.
        RuntimeError: a dequantize rule is broken (SPEC §8.1 messages) or no tile shape is set.
        ValueError: the tile shape does not fit the output (rank, 32-byte alignment).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a pypto.Tensor, but got {type(input).__name__}")
    if not isinstance(scale, Tensor):
        raise TypeError(f"scale must be a pypto.Tensor, but got {type(scale).__name__}")
    _check(
        input.dtype in (DataType.DT_INT8, DataType.DT_INT16),
        f"Dequantize input dtype must be INT8 or INT16, but got dtype={int(input.dtype)}",
    )
    out_type = _as_datatype(otype, "otype")
    _check(out_type == DataType.DT_FP32, f"Dequantize output type must be FP32, but got dtype={int(out_type)}")
    in_shape = input.shape
    _check(2 <= len(in_shape) <= 4, f"Dequantize input shape only supports 2-4 dims, but got {len(in_shape)} dims")
    numel = input.to_torch().numel()
    _check(numel > 0, f"Dequantize input must not be empty, but got shape {in_shape}")
    _check(numel <= INT32_MAX, f"Dequantize input shape size must not exceed {INT32_MAX}, but got {numel}")
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise TypeError(f"axis must be an int, but got {type(axis).__name__}")
    norm = normalize_axis(axis, len(in_shape))
    _check(
        norm in (-1, -2),
        f"Dequantize axis must be -1 (per-row) or -2 (per-column), but got axis={axis} (normalized={norm})",
    )
    scale_t = _param(scale, "scale", in_shape, norm)
    zp_t = _param(zero_points, "zero_points", in_shape, norm)
    tile = _tile_shape_for(in_shape, out_type)

    x = input.to_torch()
    out = torch.empty(in_shape, dtype=torch.float32, device=x.device)
    op = dequantize_op  # validated above: the operator itself, once per tile
    starts = [range(0, size, step) for size, step in zip(in_shape, tile, strict=True)]
    for origin in itertools.product(*starts):
        tile_idx = tuple(slice(o, o + t) for o, t in zip(origin, tile, strict=True))
        # The parameters follow the tile along every axis they keep.
        param_idx = tile_idx[:-1] if norm == -1 else tile_idx[:-2] + tile_idx[-1:]
        out[tile_idx] = op(x[tile_idx], scale_t[param_idx], None if zp_t is None else zp_t[param_idx], norm)
    return Tensor._wrap(out, DataType.DT_FP32)
