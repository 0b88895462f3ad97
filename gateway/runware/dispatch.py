"""How a Runware task object becomes its answer, the same for ``POST /v1`` and the WebSocket: parsed
(errors naming each field), then run now, accepted for later (deliveryMethod "async") or read back
(getResponse), counted in the metrics, and every outcome turned into the reference's items or error.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from triton_inpaint.gateway.errors import TaskFailed, Unavailable, error_item, logger
from triton_inpaint.gateway.inputs.images import UUID_PATTERN
from triton_inpaint.gateway.runware.async_tasks import RunwareAsync
from triton_inpaint.gateway.runware.handlers import RunwareTasks
from triton_inpaint.gateway.runware.progress import ProgressSink
from triton_inpaint.gateway.runware.protocol import ASYNC_IMAGE_FIELDS, MAX_TASKS, TASK_TYPES
from triton_inpaint.gateway.validation import field_errors, quoted

# A failed task's HTTP status by its error code: the server failed it (500), it outlasted the gateway's
# --timeout (504); any other code is a refusal of the caller's input (400).
TASK_FAILED_STATUS = {"inferenceFailed": 500, "timeout": 504}
# (items, error item or None, HTTP-like status: 200, 400 refused, 500 failed on the server, 503)
Outcome = tuple[list[dict], dict | None, int]


class TaskMetrics:
    """Tasks by type and outcome, and their seconds: Prometheus metrics in a registry of the app's own
    (``GET /metrics``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks_total = Counter(
            "gateway_tasks_total",
            "Tasks by type and outcome",
            ["task_type", "outcome"],
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "gateway_task_seconds",
            "Seconds per task",
            ["task_type"],
            registry=self.registry,
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
        )


class RunwareDispatch:
    max_tasks = MAX_TASKS  # per POST /v1 body or WebSocket message

    def __init__(self, handlers: RunwareTasks, async_tasks: RunwareAsync, metrics: TaskMetrics) -> None:
        self.handlers = handlers
        self.async_tasks = async_tasks
        self.metrics = metrics

    def parse(self, raw: Any) -> tuple[Any, list[dict]]:
        """One task object of a ``/v1`` body or WebSocket message: (the validated task, no errors), or
        (None, its errors, each naming the field)."""
        if not isinstance(raw, dict):
            return None, [error_item("each task must be a JSON object", "body")]
        # Echoed in errors only when it is a UUID: anything else is the caller's raw input.
        task_uuid = raw.get("taskUUID")
        task_uuid = task_uuid if isinstance(task_uuid, str) and UUID_PATTERN.match(task_uuid) else None
        task_type = raw.get("taskType")
        schema = TASK_TYPES.get(task_type) if isinstance(task_type, str) else None
        if schema is None:
            message = f"taskType: must be one of {', '.join(TASK_TYPES)}, got {quoted(task_type)}"
            return None, [error_item(message, "taskType", task_uuid)]
        try:
            return schema.model_validate(raw), []
        except ValidationError as exc:
            return None, [
                error_item(f"{name}: {message}", name, task_uuid, task_type=task_type)
                for name, message in field_errors(schema, exc)
            ]

    def dispatch(self, task: Any, url: str, caller: str, progress: ProgressSink | None = None) -> list[dict]:
        """Run a task now, accept it for later (deliveryMethod "async": acknowledged "processing"), or
        read an async task's results (getResponse). ``progress`` takes the progress items of a task run
        now (an async task's go to the task store, for getResponse)."""
        if task.taskType == "getResponse":
            return self.async_tasks.response(caller, task.taskUUID)
        if task.deliveryMethod == "async" and task.taskType in ASYNC_IMAGE_FIELDS:
            record = self.async_tasks.create(task, caller, url)
            if record.status in ("completed", "failed"):  # a resend of a finished task: its outcome
                return self.async_tasks.response(caller, task.taskUUID)
            return [{"taskType": task.taskType, "taskUUID": task.taskUUID, "status": "processing"}]
        return self.handlers.run(task, url, progress)

    async def run(self, task: Any, url: str, caller: str, progress: ProgressSink | None = None) -> Outcome:
        """The task's answer, whatever happened: one task's failure never takes the others' down."""
        started = time.monotonic()
        count = self.metrics.tasks_total
        try:
            items = await run_in_threadpool(self.dispatch, task, url, caller, progress)
            count.labels(task.taskType, "ok").inc()
            return items, None, 200
        except TaskFailed as exc:
            status = TASK_FAILED_STATUS.get(exc.code, 400)
            count.labels(task.taskType, {500: "failed", 504: "timeout"}.get(status, "refused")).inc()
            error = error_item(
                exc.message, exc.parameter, task.taskUUID, exc.code, exc.task_type or task.taskType
            )
            return [], error, status
        except (Unavailable, OSError) as exc:  # OSError: the task store did not answer
            count.labels(task.taskType, "unavailable").inc()
            return [], error_item(str(exc), None, task.taskUUID, "serviceUnavailable", task.taskType), 503
        except Exception as exc:  # noqa: BLE001 - one task's bug must not take the others' answers down
            logger.exception("task %s failed", task.taskUUID)
            count.labels(task.taskType, "failed").inc()
            message = f"internal error: {type(exc).__name__}"
            return [], error_item(message, None, task.taskUUID, "internalError", task.taskType), 500
        finally:
            self.metrics.task_seconds.labels(task.taskType).observe(time.monotonic() - started)

    async def follow(self, task: Any, caller: str) -> None:
        """Wait until an accepted async task is done (its results then go out in their own frame)."""
        while not await run_in_threadpool(self.async_tasks.finished, caller, task.taskUUID):
            await asyncio.sleep(0.5)
