"""``aclnnAscendAntiQuant``: the two-phase aclnn API over the emulated runtime (SPEC §7.1-7.3, §7.6).

Phase 1 checks the arguments in the order and with the messages of CANN's
``aclnn_ascend_anti_quant.cpp`` and returns an executor; phase 2 queues the computation on a
stream. The math is npu_anti_quant's dispatch function, run on torch views of device memory.
"""

from __future__ import annotations

import torch

from ..ops.anti_quant import anti_quant as anti_quant_dispatch
from . import _constants as c
from ._errors import aclnn_failure
from ._runtime import MemoryFault, StreamFault, _is_int, device_bytes, resolve_stream
from ._tensor import aclTensor, dtype_name

X_DTYPES = (c.ACL_INT4, c.ACL_INT8, c.ACL_INT32)
Y_DTYPES = (c.ACL_FLOAT16, c.ACL_BF16)
SCALE_DTYPES = (c.ACL_FLOAT, c.ACL_BF16)
OUTPUT_TORCH_DTYPES = {c.ACL_FLOAT16: torch.float16, c.ACL_BF16: torch.bfloat16}
MAX_DIM_LEN = 8
INT4_PER_INT32 = 8
WORKSPACE_ALIGN = 32


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _invalid(message: str) -> _Refused:
    return _Refused(c.ACLNN_ERR_PARAM_INVALID, message)


def _shape(dims: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _support_list(codes: tuple[int, ...]) -> str:
    return "[" + "".join(f"{dtype_name(code)}," for code in codes) + "]"


class aclOpExecutor:
    """What phase 1 prepared for phase 2. Single-use unless aclSetAclOpExecutorRepeatable is called."""

    __slots__ = ("x", "scale", "offset", "y", "dst_dtype", "sqrt_mode", "workspace_size", "empty",
                 "repeatable", "released")  # fmt: skip

    def __init__(self, x, scale, offset, y, sqrt_mode: bool, workspace_size: int, empty: bool) -> None:
        self.x: aclTensor = x
        self.scale: aclTensor = scale
        self.offset: aclTensor | None = offset
        self.y: aclTensor = y
        self.dst_dtype = OUTPUT_TORCH_DTYPES[y.data_type]
        self.sqrt_mode = sqrt_mode
        self.workspace_size = workspace_size
        self.empty = empty
        self.repeatable = False
        self.released = False

    def __repr__(self) -> str:
        state = "released" if self.released else ("repeatable" if self.repeatable else "single-use")
        return f"<aclOpExecutor aclnnAscendAntiQuant workspace={self.workspace_size} {state}>"

    def tensors(self) -> list[tuple[str, aclTensor]]:
        named = [("x", self.x), ("scale", self.scale), ("offset", self.offset), ("y", self.y)]
        return [(name, t) for name, t in named if t is not None]


# ---------------------------------------------------------------------------------------------- phase 1


def _check_dtypes(x: aclTensor, scale: aclTensor, offset: aclTensor | None, y: aclTensor, dst_type: object) -> None:
    for name, t, allowed in (("x", x, X_DTYPES), ("y", y, Y_DTYPES), ("scale", scale, SCALE_DTYPES),
                             ("offset", offset, SCALE_DTYPES)):  # fmt: skip
        if t is not None and t.data_type not in allowed:
            raise _invalid(
                f"Tensor {name} not implemented for {dtype_name(t.data_type)}, "
                f"should be in dtype support list {_support_list(allowed)}."
            )
    if offset is not None and offset.data_type != scale.data_type:
        raise _invalid(
            f"Expected both tensors to have same dtype, but found scale {dtype_name(scale.data_type)} "
            f"and offset {dtype_name(offset.data_type)}."
        )
    if not _is_int(dst_type):
        raise _invalid(f"dstType must be an int64, got {type(dst_type).__name__}")
    if y.data_type != dst_type:
        raise _invalid("out(y) data type must be the same as dstType.")


def _broadcasts_to(dims: tuple[int, ...], target: tuple[int, ...]) -> bool:
    if len(dims) > len(target):
        return False
    return all(d in (1, t) for d, t in zip(reversed(dims), reversed(target), strict=False))


def _check_shapes(x: aclTensor, scale: aclTensor, offset: aclTensor | None, y: aclTensor) -> None:
    xs, ys = x.view_dims, y.view_dims
    shapes = f"x shape:{_shape(xs)}, y shape:{_shape(ys)}"
    same_as_x = f"Expected tensor for y to have same size as tensor for x, but {_shape(ys)} does not equal {_shape(xs)}."
    if x.data_type == c.ACL_INT4:
        if ys != xs:
            raise _invalid(same_as_x)
        if not xs or xs[-1] % 2:
            raise _invalid(f"x dtype is int4, the size of last dim must be an even number. {shapes}")
    elif x.data_type == c.ACL_INT32:
        if not xs:
            if ys != (INT4_PER_INT32,):
                raise _invalid(f"x dtype is int32. And x is scalar, y should be (8,). {shapes}")
        else:
            if len(xs) != len(ys):
                raise _invalid(f"dim num of x and y should be same. {shapes}")
            for axis in range(len(xs) - 1):
                if xs[axis] != ys[axis]:
                    raise _invalid(
                        "x dtype is int32. The shape of x and y should be same, expect for the size of the last axis."
                        f"{shapes}, axis:{axis}"
                    )
            if xs[-1] * INT4_PER_INT32 != ys[-1]:
                raise _invalid(f"x dtype is int32. The last dim of y should be 8 times the last dim of x. {shapes}")
    elif ys != xs:
        raise _invalid(same_as_x)
    if len(xs) > MAX_DIM_LEN:
        raise _invalid(f"The x tensor cannot be larger than {MAX_DIM_LEN} dimensions.")
    if len(scale.view_dims) != 1:
        raise _invalid(f"scale dim num must be 1. scale:{len(scale.view_dims)}")
    if offset is not None:
        if len(offset.view_dims) != 1:
            raise _invalid(f"offset dim num must be 1. offset:{len(offset.view_dims)}")
        if not _broadcasts_to(offset.view_dims, ys):
            raise _invalid(f"The size of tensor offset {_shape(offset.view_dims)} must match the size {_shape(ys)}.")
        if offset.view_dims != scale.view_dims:
            raise _invalid(
                f"Expected tensor for scale to have same size as tensor for offset, but {_shape(scale.view_dims)} "
                f"does not equal {_shape(offset.view_dims)}."
            )
    n = scale.view_dims[0]
    last = ys[-1] if ys else 0
    if n != 1 and n != last:
        raise _invalid(f"the last dim size({last}) of out(y) must be same as scale and offset({n}).")
    if not _broadcasts_to(scale.view_dims, ys):
        raise _invalid(f"The size of tensor scale {_shape(scale.view_dims)} must match the size {_shape(ys)}.")


def _phase1(x, scale, offset, dst_type, sqrt_mode, y) -> aclOpExecutor:
    for name, t in (("x", x), ("scale", scale), ("y", y)):
        if t is None:
            raise _Refused(c.ACLNN_ERR_PARAM_NULLPTR, f"Expected a proper Tensor but got null for argument {name}.")
    for name, t in (("x", x), ("scale", scale), ("offset", offset), ("y", y)):
        if t is None:
            continue
        if not isinstance(t, aclTensor):
            raise _invalid(f"{name} must be an aclTensor, got {type(t).__name__}")
        if t.destroyed:
            raise _invalid(f"{name} has been destroyed by aclDestroyTensor")
    _check_dtypes(x, scale, offset, y, dst_type)
    if not isinstance(sqrt_mode, bool) and sqrt_mode not in (0, 1):
        raise _invalid(f"sqrtMode must be a bool, got {sqrt_mode!r}")
    _check_shapes(x, scale, offset, y)
    if x.numel == 0:  # CANN: empty x -> nothing to do, workspace 0
        return aclOpExecutor(x, scale, offset, y, bool(sqrt_mode), 0, empty=True)
    if x.data_type == c.ACL_INT4 and not x.is_contiguous():
        raise _invalid("when x is of type int4, it must be contiguous")
    # The emulation's own guarantees: live memory, and an output whose elements are distinct.
    for name, t in (("x", x), ("scale", scale), ("offset", offset), ("y", y)):
        if t is not None:
            try:
                t.storage()
            except MemoryFault as exc:
                raise _invalid(f"{name}: {exc}") from None
    if y.overlaps_itself():
        raise _invalid("out(y) must not be a view whose elements overlap (stride 0); it could not be written")
    # Like CANN, non-contiguous arguments need scratch space: the result is staged there.
    dense = all(t.is_contiguous() for t in (x, scale, offset, y) if t is not None)
    workspace = 0 if dense else -(-y.numel * 2 // WORKSPACE_ALIGN) * WORKSPACE_ALIGN
    return aclOpExecutor(x, scale, offset, y, bool(sqrt_mode), workspace, empty=False)


def aclnnAscendAntiQuantGetWorkspaceSize(
    x: aclTensor | None,
    scale: aclTensor | None,
    offset: aclTensor | None,
    dstType: int,
    sqrtMode: bool,
    y: aclTensor | None,
) -> tuple[int, int, aclOpExecutor | None]:
    """Phase 1: validates and returns ``(status, workspaceSize, executor)``.

    Status 161001 when x, scale or y is None; 161002 for a dtype, shape or attribute violation
    (the message is kept for aclGetRecentErrMsg); 0 otherwise, including an empty x (workspace 0)."""
    try:
        executor = _phase1(x, scale, offset, dstType, sqrtMode, y)
    except _Refused as exc:
        return aclnn_failure(exc.status, str(exc)), 0, None
    return c.ACLNN_SUCCESS, executor.workspace_size, executor


# ---------------------------------------------------------------------------------------------- phase 2


def _run(executor: aclOpExecutor, raw: dict[str, torch.Tensor], workspace: torch.Tensor | None) -> None:
    """The task a stream executes: compute from views of device memory, then write y's view."""
    x = executor.x.view(raw["x"])
    if executor.x.data_type == c.ACL_INT32 and x.dim() == 0:
        x = x.reshape(1)  # a scalar int32 is one word of 8 int4 values
    scale = executor.scale.view(raw["scale"])
    offset = executor.offset.view(raw["offset"]) if executor.offset is not None else None
    result = anti_quant_dispatch(x, scale, offset, executor.dst_dtype, executor.sqrt_mode)
    result = result.reshape(executor.y.view_dims)
    if workspace is not None:
        staged = workspace[: result.numel() * result.element_size()].view(result.dtype).view(result.shape)
        staged.copy_(result)
        result = staged
    executor.y.view(raw["y"]).copy_(result)


def aclnnAscendAntiQuant(
    workspace: int | None, workspaceSize: int, executor: aclOpExecutor | None, stream: object
) -> int:
    """Phase 2: queues the computation on ``stream`` (None = default stream) and returns a status.

    The result is in y's memory once the stream is synchronized. Nothing is queued (and nothing
    written) when a check fails."""
    if executor is None:
        return aclnn_failure(c.ACLNN_ERR_PARAM_NULLPTR, "Expected a proper executor but got null.")
    if not isinstance(executor, aclOpExecutor):
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, f"executor must be an aclOpExecutor, got {type(executor).__name__}")
    if executor.released:
        return aclnn_failure(
            c.ACLNN_ERR_PARAM_INVALID,
            "the executor was already run or destroyed: executors are single-use unless "
            "aclSetAclOpExecutorRepeatable is called right after phase 1",
        )
    if not _is_int(workspaceSize) or workspaceSize < executor.workspace_size:
        return aclnn_failure(
            c.ACLNN_ERR_PARAM_INVALID,
            f"workspaceSize {workspaceSize!r} is smaller than the {executor.workspace_size} bytes phase 1 returned",
        )
    try:
        target = resolve_stream(stream)
    except StreamFault as exc:
        status = c.ACLNN_ERR_RUNTIME_ERROR if exc.status == c.ACL_ERROR_RT_CONTEXT_NULL else c.ACLNN_ERR_PARAM_INVALID
        return aclnn_failure(status, f"stream: {exc}")
    for name, t in executor.tensors():
        if t.destroyed:
            return aclnn_failure(
                c.ACLNN_ERR_PARAM_INVALID, f"{name} was destroyed before phase 2; tensors must outlive the run"
            )
    ws = None
    if executor.workspace_size and not executor.empty:
        if not _is_int(workspace) or workspace % WORKSPACE_ALIGN:
            return aclnn_failure(
                c.ACLNN_ERR_PARAM_INVALID,
                f"workspace must be a {WORKSPACE_ALIGN}-byte aligned device address of {executor.workspace_size} bytes, "
                f"got {workspace!r}",
            )
        try:
            ws = device_bytes(workspace, executor.workspace_size)
        except MemoryFault as exc:
            return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, f"workspace: {exc}")
    raw: dict[str, torch.Tensor] = {}
    if not executor.empty:
        for name, t in executor.tensors():
            try:
                raw[name] = t.storage()
            except MemoryFault as exc:
                return aclnn_failure(c.ACLNN_ERR_RUNTIME_ERROR, f"{name}: {exc}")
    if not executor.repeatable:
        executor.released = True
    if executor.empty:
        return c.ACLNN_SUCCESS
    if not target.submit(lambda: _run(executor, raw, ws)):
        return aclnn_failure(c.ACLNN_ERR_RUNTIME_ERROR, "stream: the stream was destroyed")
    return c.ACLNN_SUCCESS


# ---------------------------------------------------------------------------------------------- executors


def aclSetAclOpExecutorRepeatable(executor: aclOpExecutor | None) -> int:
    """Lets phase 2 run the executor any number of times; call it right after phase 1.
    The caller must then release it with aclDestroyAclOpExecutor."""
    if executor is None:
        return aclnn_failure(c.ACLNN_ERR_INNER_NULLPTR, "aclSetAclOpExecutorRepeatable: executor is nullptr.")
    if not isinstance(executor, aclOpExecutor):
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, f"not an aclOpExecutor: {type(executor).__name__}")
    if executor.released:
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, "aclSetAclOpExecutorRepeatable: the executor was already released")
    executor.repeatable = True
    return c.ACLNN_SUCCESS


def aclDestroyAclOpExecutor(executor: aclOpExecutor | None) -> int:
    """Releases an executor (needed for repeatable ones; queued runs still complete)."""
    if executor is None:
        return aclnn_failure(c.ACLNN_ERR_INNER_NULLPTR, "aclDestroyAclOpExecutor: executor is nullptr.")
    if not isinstance(executor, aclOpExecutor):
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, f"not an aclOpExecutor: {type(executor).__name__}")
    if executor.released:
        return aclnn_failure(c.ACLNN_ERR_PARAM_INVALID, "aclDestroyAclOpExecutor: the executor was already released")
    executor.released = True
    return c.ACLNN_SUCCESS
