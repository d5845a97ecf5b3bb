"""Native CPU path of ``npu_quant_matmul``: an exact int8 GEMM with the epilogue fused (csrc/gemm_s8.c).

* :class:`PackedWeight`: int8 weights ``(k, n)`` (or a batch ``(B, k, n)``) rearranged once into
  the kernel's panel layout (16 columns x 4 k per 64-byte group), with exact column sums.
* :func:`packed_weight`: the same, cached per weight tensor. A cached pack is reused only while
  the weight's storage, view (offset, shape, strides) and version counter are unchanged, so an
  in-place edit (``w.add_(1)``, ``w.copy_(...)``, ``w[0] = 3``) or a new tensor is re-packed.
  Edits that bypass the version counter (writes through ``w.data``, numpy views, DLPack, or a
  separately created tensor on the same storage) are invisible to it, as they are to autograd:
  call :func:`clear_pack_cache` after those. Memory: one packed copy (about k * n bytes) per
  cached weight, freed with the weight; ``NPUQUANT_PACK_CACHE=0`` / :func:`set_pack_cache` turn it off.
* :func:`unpacked_int4_weight`: A4W4 weights unpacked to int8 once per weight (same cache), so
  their pack is reused as well; :func:`decoded_quant_param`: int64 (FP19) scales decoded once per
  scale tensor (same cache, same rules).
* :func:`quant_matmul`: the native twin of ``ops.quant_matmul._compute`` (same contract, bit for bit).
* :func:`quant_matmul_asymmetric`: the native twin of ``asymmetric.reference`` (see asymmetric.py).

The kernels accumulate in int32 exactly (modulo 2**32, like the reference and the device):
AVX-512 VNNI ``vpdpbusd`` with a -128 * colsum correction, AVX2 int16 ``vpmaddwd`` (never the
saturating ``vpmaddubsw``), or scalar C, chosen at run time by ``npuquant._native``'s ISA level.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import weakref
from collections.abc import Callable

import torch

from ... import _native

__all__ = [
    "PackedWeight",
    "pack_weight",
    "packed_weight",
    "clear_pack_cache",
    "unpacked_int4_weight",
    "decoded_quant_param",
    "set_pack_cache",
    "quant_matmul",
    "quant_matmul_asymmetric",
]

PANEL = 16  # output columns per packed panel
KGROUP = 4  # consecutive k per packed group
OUT_KINDS = {torch.int32: 0, torch.int8: 1, torch.float16: 2, torch.bfloat16: 3, torch.float32: 4}
_ERRORS = {
    -1: "a size is negative",
    -2: "a required pointer is missing",
    -4: "a batch index is out of range",
    -5: "unknown output kind",
    -6: "out of memory",
}


class _GemmArgs(ctypes.Structure):
    """Mirror of ``npq_gemm_args`` in csrc/gemm_s8.c (same field order and types)."""

    _fields_ = [
        ("batch", ctypes.c_int64),
        ("m", ctypes.c_int64),
        ("n", ctypes.c_int64),
        ("k", ctypes.c_int64),
        ("a", ctypes.c_void_p),
        ("a_sm", ctypes.c_int64),
        ("a_sk", ctypes.c_int64),
        ("a_nbatch", ctypes.c_int64),
        ("a_boff", ctypes.c_void_p),
        ("a_bidx", ctypes.c_void_p),
        ("w", ctypes.c_void_p),
        ("w_nbatch", ctypes.c_int64),
        ("colsum", ctypes.c_void_p),
        ("w_bidx", ctypes.c_void_p),
        ("out_kind", ctypes.c_int64),
        ("bias_i32", ctypes.c_void_p),
        ("bias_i32_bstride", ctypes.c_int64),
        ("scale", ctypes.c_void_p),
        ("scale_nstride", ctypes.c_int64),
        ("pertoken", ctypes.c_void_p),
        ("row_offset", ctypes.c_void_p),
        ("add", ctypes.c_void_p),
        ("add_nstride", ctypes.c_int64),
        ("add_bstride", ctypes.c_int64),
        ("out", ctypes.c_void_p),
    ]


_lib = _native.lib
if _lib is not None:
    _lib.npq_gemm_panels.restype = ctypes.c_int64
    _lib.npq_gemm_panels.argtypes = [ctypes.c_int64]
    _lib.npq_gemm_packed_bytes.restype = ctypes.c_int64
    _lib.npq_gemm_packed_bytes.argtypes = [ctypes.c_int64, ctypes.c_int64]
    _lib.npq_gemm_pack_b.restype = ctypes.c_int
    _lib.npq_gemm_pack_b.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int,
    ]
    _lib.npq_gemm_s8.restype = ctypes.c_int
    _lib.npq_gemm_s8.argtypes = [ctypes.POINTER(_GemmArgs), ctypes.c_int]


def _require_lib() -> ctypes.CDLL:
    if _lib is None:
        raise RuntimeError(f"npuquant native GEMM unavailable: {_native.load_error}")
    return _lib


def _check_rc(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed: {_ERRORS.get(rc, f'error {rc}')}")


class PackedWeight:
    """int8 weights ``(k, n)`` or ``(B, k, n)`` prepacked for the native GEMM.

    Attributes:
        k, n: logical sizes; ``batch``: number of weight matrices (1 for a 2-D weight).
        data: uint8 ``(batch, panels * ceil(k/4) * 64)``: panel p holds columns 16p..16p+15;
            for each group of 4 k, 16 columns x 4 bytes (byte ``[p][k//4][j][k%4] = W[k, 16p+j]``),
            zero-padded in k and n.
        colsum: int32 ``(batch, panels * 16)``: exact column sums of W (zero for padding columns).
        version: the source tensor's ``_version`` when packed (None when it has none).

    Build one with :func:`pack_weight` (always packs) or :func:`packed_weight` (cached).
    """

    __slots__ = ("k", "n", "batch", "data", "colsum", "version", "_source", "_data_ptr", "_colsum_ptr", "__weakref__")

    def __init__(self, weight: torch.Tensor) -> None:
        lib = _require_lib()
        if weight.dtype != torch.int8 or weight.dim() not in (2, 3):
            raise ValueError(
                f"PackedWeight needs an int8 (k, n) or (B, k, n) tensor, got {weight.dtype} {tuple(weight.shape)}"
            )
        if weight.device.type != "cpu":
            raise ValueError(f"PackedWeight packs CPU tensors, got one on {weight.device}")
        w3 = weight if weight.dim() == 3 else weight.unsqueeze(0)
        self.batch, self.k, self.n = (int(s) for s in w3.shape)
        panels = lib.npq_gemm_panels(self.n)
        per_batch = lib.npq_gemm_packed_bytes(self.k, self.n)
        self.data = torch.empty((self.batch, per_batch), dtype=torch.uint8)
        self.colsum = torch.empty((self.batch, panels * PANEL), dtype=torch.int32)
        # The pack owns these buffers and never resizes them: their addresses are fixed, read once.
        self._data_ptr, self._colsum_ptr = self.data.data_ptr(), self.colsum.data_ptr()
        self.version = _version_of(weight)
        self._source = _source_key(weight)
        sk, sn = w3.stride(1), w3.stride(2)
        for b in range(self.batch):
            ptr = w3.data_ptr() + b * w3.stride(0) if w3.numel() else None
            rc = lib.npq_gemm_pack_b(
                ptr, self.k, self.n, sk, sn, self.data[b].data_ptr(), self.colsum[b].data_ptr(), _native.num_threads()
            )
            _check_rc(rc, "npq_gemm_pack_b")

    @property
    def nbytes(self) -> int:
        """Bytes held by the pack (panels + column sums)."""
        return self.data.numel() + 4 * self.colsum.numel()

    def matches(self, weight: torch.Tensor) -> bool:
        """Whether this pack is current for ``weight``: same storage, view and version counter."""
        return self.version is not None and _source_key(weight) == self._source and _version_of(weight) == self.version

    def unpack(self) -> torch.Tensor:
        """The logical int8 weights back, ``(k, n)`` (or ``(B, k, n)``): lets any path use a pack."""
        panels = self.colsum.shape[1] // PANEL
        k4 = (self.k + KGROUP - 1) // KGROUP
        grid = self.data.view(torch.int8).reshape(self.batch, panels, k4, PANEL, KGROUP)
        w = grid.permute(0, 2, 4, 1, 3).reshape(self.batch, k4 * KGROUP, panels * PANEL)[:, : self.k, : self.n]
        w = w.contiguous()
        return w[0] if self.batch == 1 else w

    def __repr__(self) -> str:
        return f"PackedWeight(k={self.k}, n={self.n}, batch={self.batch}, nbytes={self.nbytes})"


def _version_of(t: torch.Tensor) -> int | None:
    if t.is_inference():  # inference tensors have no version counter: never cache them
        return None
    try:
        return int(t._version)
    except RuntimeError:
        return None


def _source_key(t: torch.Tensor, storage: torch.UntypedStorage | None = None) -> tuple:
    st = t.untyped_storage() if storage is None else storage
    return (id(st), st.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def pack_weight(weight: torch.Tensor) -> PackedWeight:
    """Packs int8 ``(k, n)`` / ``(B, k, n)`` weights (any strides, e.g. ``w.t()``) for the native GEMM."""
    return PackedWeight(weight)


# ------------------------------------------------------------------------------------ pack cache

_cache_lock = threading.RLock()  # re-entrant: a weakref callback may fire while it is held
# id(storage) -> (weakref to the storage, {(kind, view key): (version, cached object)})
_cache: dict[int, tuple[weakref.ref, dict[tuple, tuple[int, object]]]] = {}
_cache_enabled = os.environ.get("NPUQUANT_PACK_CACHE", "1") not in ("0", "")


def set_pack_cache(enabled: bool) -> bool:
    """Turns the weight-pack cache on or off (``NPUQUANT_PACK_CACHE=0`` starts it off); returns the old state."""
    global _cache_enabled
    previous, _cache_enabled = _cache_enabled, bool(enabled)
    if not enabled:
        clear_pack_cache()
    return previous


def clear_pack_cache() -> None:
    """Drops every cached pack (needed only after weight edits that bypass the version counter)."""
    with _cache_lock:
        _cache.clear()


def _forget(storage_id: int, ref: weakref.ref) -> None:
    with _cache_lock:
        entry = _cache.get(storage_id)
        if entry is not None and entry[0] is ref:
            del _cache[storage_id]


def _cached(weight: torch.Tensor, kind: tuple, build):
    """``build()`` for ``weight``, reused while its storage lives and its version is unchanged."""
    if not _cache_enabled:
        return build()
    version = _version_of(weight)
    if version is None:
        return build()
    storage = weight.untyped_storage()
    sid = id(storage)
    key = (kind, _source_key(weight, storage))
    with _cache_lock:
        entry = _cache.get(sid)
        if entry is not None and entry[0]() is storage:
            hit = entry[1].get(key)
            if hit is not None and hit[0] == version:
                return hit[1]
    value = build()  # outside the lock: packing a big weight takes a while
    with _cache_lock:
        entry = _cache.get(sid)
        if entry is None or entry[0]() is not storage:
            ref = weakref.ref(storage, functools.partial(_forget, sid))
            entry = (ref, {})
            _cache[sid] = entry
        values = entry[1]
        for stale in [k for k, (v, _) in values.items() if v != version]:
            del values[stale]  # every view of a storage shares one version counter
        values[key] = (version, value)
    return value


def packed_weight(weight: torch.Tensor) -> PackedWeight:
    """:func:`pack_weight`, cached while the weight's storage lives and its version is unchanged.

    The cache holds one pack per (storage, view) and drops it with the storage, so a model's
    weights are packed at their first use and reused after; a changed weight is re-packed.
    """
    return _cached(weight, ("pack",), lambda: PackedWeight(weight))


def decoded_quant_param(scale: torch.Tensor, decode: Callable[[], tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """``decode()`` (the float32 FP19 scale and integer offset the kernel uses for an int64 quant
    param, or for a float32 scale torch_npu FP19-encodes), cached for ``scale`` like packs.

    A model's int64 scales are static like its weights; decoding one takes a dozen small tensor
    ops, more than the M=1 GEMM it feeds. The results are shared: callers only read them.
    """
    return _cached(scale, ("quant_param",), decode)


def unpacked_int4_weight(x2: torch.Tensor, packed_along_k: bool) -> torch.Tensor:
    """A4W4 weights (int32, 8 int4 per word, SPEC §2/§4.7) -> logical int8 ``(k, n)``, cached like packs.

    ``x2`` is ``(k, n/8)`` packed along n, or (``packed_along_k``) the ``.t()`` view ``(k/8, n)``
    of a ``(n, k/8)`` tensor. The int8 result is kept while ``x2`` is unchanged, so its own pack
    (:func:`packed_weight`) is reused too: a model's int4 weights are unpacked and packed once.
    """

    def build() -> torch.Tensor:
        from ..int4 import native as int4_native
        from ..int4 import reference as int4_reference

        unpack = int4_native.unpack_int4 if _native.use_native(x2) else int4_reference.unpack_int4
        if packed_along_k:
            return unpack(x2.transpose(-1, -2)).transpose(-1, -2)
        return unpack(x2)

    return _cached(x2, ("int4", packed_along_k), build)


# ------------------------------------------------------------------------------------ GEMM calls


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t  # already what the kernel reads (the common case: no conversion calls)
    return t.to(torch.float32).contiguous()


def _index_array(values: list[int]) -> ctypes.Array:
    return (ctypes.c_int64 * max(1, len(values)))(*values)


_ZEROS: dict[int, ctypes.Array] = {}  # read-only index arrays of zeros, by length


def _zeros(length: int) -> ctypes.Array:
    arr = _ZEROS.get(length)
    if arr is None:
        arr = _index_array([0] * length)
        if length <= 64:
            _ZEROS[length] = arr
    return arr


def _run(
    x1: torch.Tensor,
    packed: PackedWeight,
    w_shared: bool,
    out_dtype: torch.dtype,
    *,
    scale: torch.Tensor | None = None,
    pertoken: torch.Tensor | None = None,
    row_offset: torch.Tensor | None = None,
    bias_i32: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> torch.Tensor:
    """x1 int8 ``(B, m, k)`` (any strides) times the pack, epilogue fused; returns ``(B, m, n)``.

    ``w_shared``: every batch uses the pack's single matrix (else batch b uses matrix b).

    ``scale``/``add``: float32 ``(1,)`` or ``(n,)`` (``add`` may be ``(B, n)``); ``bias_i32``:
    int32 ``(1, n)`` or ``(B, n)``; ``pertoken``/``row_offset``: float32 ``(m,)``.
    """
    lib = _require_lib()
    batch, m, k = x1.shape
    n = packed.n
    if k != packed.k:
        raise RuntimeError(f"x1 has k={k} but the packed weight has k={packed.k}")
    out = torch.empty((batch, m, n), dtype=out_dtype)
    if out.numel() == 0:
        return out
    if batch == 1 or x1.stride(0) == 0:
        a_boff, a_bidx = _zeros(1), _zeros(batch)
    else:
        a_boff = _index_array([b * x1.stride(0) for b in range(batch)])
        a_bidx = _index_array(list(range(batch)))
    w_bidx = _zeros(batch) if w_shared else _index_array(list(range(batch)))
    scale, pertoken, row_offset, add = _f32(scale), _f32(pertoken), _f32(row_offset), _f32(add)
    if bias_i32 is not None:
        bias_i32 = bias_i32.contiguous()
    args = _GemmArgs(
        batch=batch,
        m=m,
        n=n,
        k=k,
        a=x1.data_ptr() if x1.numel() else None,
        a_sm=x1.stride(1),
        a_sk=x1.stride(2),
        a_nbatch=len(a_boff),
        a_boff=ctypes.addressof(a_boff),
        a_bidx=ctypes.addressof(a_bidx),
        w=packed._data_ptr,
        w_nbatch=packed.batch,
        colsum=packed._colsum_ptr,
        w_bidx=ctypes.addressof(w_bidx),
        out_kind=OUT_KINDS[out_dtype],
        bias_i32=_ptr(bias_i32),
        bias_i32_bstride=0 if bias_i32 is None or bias_i32.shape[0] == 1 else n,
        scale=_ptr(scale),
        scale_nstride=0 if scale is None or scale.numel() == 1 else 1,
        pertoken=_ptr(pertoken),
        row_offset=_ptr(row_offset),
        add=_ptr(add),
        add_nstride=0 if add is None or add.shape[-1] == 1 else 1,
        add_bstride=0 if add is None or add.dim() == 1 or add.shape[0] == 1 else n,
        out=out.data_ptr(),
    )
    _check_rc(lib.npq_gemm_s8(ctypes.byref(args), _native.num_threads()), "npq_gemm_s8")
    return out


def weights_for(x2: torch.Tensor) -> tuple[PackedWeight, bool]:
    """Cached pack for x2 ``(B, k, n)``, and whether it is one matrix shared by every batch.

    A batch stride of 0 (one weight shared by every batch, as an expanded 2-D weight) packs the
    2-D view once, so a model weight passed as ``w.t()`` keeps hitting the same cache entry.
    """
    batch = x2.shape[0]
    if batch == 1 or x2.stride(0) == 0:
        return packed_weight(x2[0]), True
    return packed_weight(x2), False


def quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Native ``ops.quant_matmul._compute``: same normalised arguments, bit-identical result.

    x1 int8 ``(B, m, k)``, x2 int8 ``(B, k, n)`` (any strides), scale float32 ``(1,)``/``(n,)``
    (effective, already FP19 where applicable), offset None or float32 ``(1,)``/``(n,)``,
    pertoken_scale None or float32 ``(m,)``, bias None or ``(1, n)``/``(B, n)`` int32 / float.
    """
    packed, w_shared = weights_for(x2)
    bias_i32 = bias if bias is not None and bias.dtype == torch.int32 else None
    adds = [t for t in (None if bias is None or bias_i32 is not None else bias, offset) if t is not None]
    if len(adds) > 1:  # not a valid npu_quant_matmul combination; keep the reference's two roundings
        from . import reference

        return reference.quant_matmul(x1, x2, scale, offset, pertoken_scale, bias, out_dtype)
    if out_dtype == torch.int32:
        return _run(x1, packed, w_shared, out_dtype, bias_i32=bias_i32)
    return _run(
        x1,
        packed,
        w_shared,
        out_dtype,
        scale=scale,
        pertoken=pertoken_scale,
        bias_i32=bias_i32,
        add=adds[0] if adds else None,
    )


def quant_matmul_asymmetric(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    x_offset: torch.Tensor,
    packed: PackedWeight,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Native twin of ``asymmetric.reference`` on validated 2-D arguments: x_q int8 ``(m, k)``,
    x_scale/x_offset float32 ``(m,)``, w_scale ``(1,)``/``(n,)``, bias None or ``(n,)``; ``(m, n)`` out."""
    out = _run(
        x_q.unsqueeze(0),
        packed,
        True,
        out_dtype,
        scale=w_scale,
        pertoken=x_scale,
        row_offset=x_offset,
        add=bias,
    )
    return out[0]
