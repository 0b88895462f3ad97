"""What the gateway answers when a task cannot be done: the exceptions the task code raises, and the
reference's error items and responses the routes turn them into.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import JSONResponse

logger = logging.getLogger("triton_inpaint.gateway")
RETRY_AFTER = {"Retry-After": "5"}  # seconds a caller waits before retrying a 503


class TaskFailed(Exception):
    """A task was refused: ``parameter`` is the reference's field name (or None for the whole task)."""

    def __init__(
        self,
        message: str,
        parameter: str | None = None,
        code: str = "invalidParameter",
        task_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task_type = task_type  # the failed task's type when another task reports it (getResponse)
        self.message = message
        self.parameter = parameter
        self.code = code


class TaskTimedOut(TaskFailed):
    """Triton did not finish the task within the gateway's ``--timeout``: not a fault of the server
    (it answered), nor of the caller's input; HTTP 504, saying how to get the result anyway."""

    def __init__(self, seconds: float, asynchronous: bool = False) -> None:
        self.seconds = seconds
        remedy = "send it with deliveryMethod async, or raise --timeout"
        remedy = "raise --timeout" if asynchronous else remedy
        message = f"took longer than {seconds:g} s (the gateway's --timeout); {remedy}"
        super().__init__(message, code="timeout")

    def for_async(self) -> TaskTimedOut:
        """The same, for an async task (already off the connection: only a longer timeout helps)."""
        return TaskTimedOut(self.seconds, asynchronous=True)


class Unavailable(Exception):
    """A service the gateway needs did not work; the caller retries later (HTTP 503)."""


class TritonUnavailable(Unavailable):
    """Triton did not answer."""


class StorageUnavailable(Unavailable):
    """Images could not be stored (a full disk, a broken volume); nothing of the task was kept."""


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate that slips into a message can
    never make rendering the answer fail (UTF-8 cannot encode it; ``\\ud800`` as an escape is fine)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def error_item(
    message: str,
    parameter: str | None = None,
    task_uuid: str | None = None,
    code: str = "invalidParameter",
    task_type: str | None = None,
) -> dict[str, Any]:
    """One entry of an ``errors`` list, in the reference's shape (its SDKs route an error to the call
    that made the task by ``taskUUID`` and ``taskType``)."""
    item: dict[str, Any] = {"code": code, "message": message}
    if parameter is not None:
        item["parameter"] = parameter
    if task_uuid is not None:
        item["taskUUID"] = task_uuid
    if task_type is not None:
        item["taskType"] = task_type
    return item


def error_response(status: int, *items: dict[str, Any], headers: dict | None = None) -> AsciiJSONResponse:
    return AsciiJSONResponse({"errors": list(items)}, status_code=status, headers=headers)


def unavailable_response(message: str, task_uuid: str | None = None) -> AsciiJSONResponse:
    """503 with Retry-After: a service the gateway needs (Triton, the stores) did not answer."""
    return error_response(
        503, error_item(message, None, task_uuid, "serviceUnavailable"), headers=RETRY_AFTER
    )
