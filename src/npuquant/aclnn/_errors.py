"""Per-thread error messages behind ``aclGetRecentErrMsg`` (CANN-WEB: newest first, cleared on read)."""

from __future__ import annotations

import threading

from . import _constants as c

_MAX_KEPT = 64  # a caller that never reads the messages must not grow memory without bound
_local = threading.local()


def _messages() -> list[str]:
    messages = getattr(_local, "messages", None)
    if messages is None:
        messages = _local.messages = []
    return messages


def record(text: str) -> None:
    """Adds a message for the calling thread."""
    messages = _messages()
    messages.insert(0, text)
    del messages[_MAX_KEPT:]


def aclnn_failure(status: int, text: str) -> int:
    """Records an aclnn failure the way CANN prints it and returns ``status``."""
    prefix = "AclNN_Parameter_Error(EZ1001)" if status in (c.ACLNN_ERR_PARAM_NULLPTR, c.ACLNN_ERR_PARAM_INVALID) else (
        "AclNN_Inner_Error(EZ9999)"
    )
    record(f"{prefix}: {text}")
    return status


def acl_failure(status: int, function: str, text: str) -> int:
    """Records a failed ACL runtime call and returns ``status``."""
    record(f"{function} failed (error {status}): {text}")
    return status


def aclGetRecentErrMsg() -> str | None:
    """The calling thread's recent error messages, newest first, joined by newlines; None if there are none.

    Reading clears them (as CANN does)."""
    messages = _messages()
    if not messages:
        return None
    text = "\n".join(messages)
    messages.clear()
    return text
