"""Runware tasks sent with deliveryMethod "async": accepted now (their images stored as uploads, so no
URL is fetched later and the task survives a restart), run by the async worker
(:mod:`triton_inpaint.gateway.worker`) with the same handlers as a task run at once, and read back with
``getResponse`` or followed over the WebSocket.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from triton_inpaint.gateway.errors import TaskFailed, error_item
from triton_inpaint.gateway.inputs.images import image_extension
from triton_inpaint.gateway.runware.handlers import RunwareTasks, inputs_once
from triton_inpaint.gateway.runware.protocol import ASYNC_IMAGE_FIELDS, TASK_TYPES
from triton_inpaint.gateway.store.records import TaskExists, TaskRecord
from triton_inpaint.gateway.worker import Report

RUNWARE_TOOL = "runware"  # the task store's name for these tasks (Eden's: its tool name)
MAX_PENDING_PER_CALLER = 64  # async tasks one key may have waiting or running at once


def runware_task_id(caller: str, task_uuid: str) -> str:
    """The stored id of a caller's async task: its taskUUID, scoped to the caller (a digest, so no key
    is stored), so that one key can neither read nor block another key's tasks."""
    owner = hashlib.sha256(caller.encode()).hexdigest()[:16]
    return f"rw-{owner}-{task_uuid.lower()}"


class RunwareAsync:
    def __init__(self, handlers: RunwareTasks, wake: Callable[[], None]) -> None:
        self.handlers = handlers
        self.runner = handlers.runner
        self.storage = handlers.runner.storage
        self.tasks = self.storage.tasks
        self.wake = wake  # tells the worker a task was stored

    def create(self, task: Any, caller: str, base_url: str) -> TaskRecord:
        """Store a Runware-style task sent with deliveryMethod "async": its image inputs first (as
        uploads: checked now, no URL fetched later), then the task; the worker runs it."""
        task_id = runware_task_id(caller, task.taskUUID)
        prefix = task_id[: -len(task.taskUUID)]
        digest = request_digest(task)
        existing = self.tasks.get_task(task_id)
        if existing is not None:
            return _resent(existing, digest, task.taskUUID)
        pending = self.tasks.count_unfinished(prefix)
        if pending >= MAX_PENDING_PER_CALLER:
            raise TaskFailed(
                f"this key has {pending} async tasks waiting or running (at most {MAX_PENDING_PER_CALLER}); "
                "fetch their results with getResponse before sending more",
                "deliveryMethod",
                "rateLimited",
            )
        if task.taskType == "imageInference":
            inputs_once(task)  # before any image is fetched or decoded
        inputs = {
            name: self.runner.image(getattr(task, name), name)
            for name in ASYNC_IMAGE_FIELDS[task.taskType]
            if getattr(task, name) is not None
        }
        # ``inputs`` was copied to seedImage/maskImage by the schema; those are stored as uploads.
        stored = task.model_dump(mode="json", exclude_none=True, exclude={"deliveryMethod", "inputs"})
        uuids = self.runner.store([(data, image_extension(data)) for data in inputs.values()])
        stored.update(zip(inputs, uuids, strict=True))
        args = {"task": stored, "base_url": base_url}
        try:
            record = self.tasks.create_task(RUNWARE_TOOL, args, task_id, digest)
        except TaskExists as exc:  # the same UUID sent twice at once (to two replicas): one task
            for image_uuid in uuids:
                self.storage.delete_image(image_uuid)
            return _resent(exc.record, digest, task.taskUUID)
        self.wake()
        return record

    def response(self, caller: str, task_uuid: str) -> list[dict[str, Any]]:
        """``getResponse``: an async task's items so far (``status`` processing or success); a task that
        failed raises its error, as the task itself would have."""
        record = self.tasks.get_task(runware_task_id(caller, task_uuid))
        if record is None or record.tool != RUNWARE_TOOL:
            raise TaskFailed(
                f"taskUUID: no async task {task_uuid} of this key (send a task with deliveryMethod "
                "'async' first)",
                "taskUUID",
                "notFound",
            )
        task_type = record.args["task"]["taskType"]
        if record.status in ("pending", "running"):
            # A task that asked for progress shows its last progress item (as sent, with this taskUUID).
            live = record.live if record.status == "running" and record.live else {}
            return [{**live, "taskType": task_type, "taskUUID": task_uuid, "status": "processing"}]
        if record.status == "failed":
            stored = (record.result or {}).get("errors") or [
                {"message": record.error, "code": "inferenceFailed"}
            ]
            error = stored[0]
            code = error.get("code", "inferenceFailed")
            raise TaskFailed(error["message"], error.get("parameter"), code, task_type)
        return [{**item, "status": "success"} for item in record.result["data"]]

    def finished(self, caller: str, task_uuid: str) -> bool:
        """Whether the task has its outcome (a follower stops waiting); not while the store is down."""
        try:
            record = self.tasks.get_task(runware_task_id(caller, task_uuid))
        except OSError:
            return False
        return record is None or record.status in ("completed", "failed")

    def run_stored(self, args: dict[str, Any], report: Report) -> dict[str, Any]:
        """The worker's handler: run an accepted task as it was sent; the progress items of a task
        that asked for them are reported to the task store, where getResponse reads them."""
        stored = args["task"]
        # Validated when it was accepted; rebuilt as it was (validators ran then, e.g. __BLANK__ -> "").
        task = TASK_TYPES[stored["taskType"]].model_construct(**stored)

        def progress(item: dict[str, Any]) -> None:
            report(item["step"] / max(1, item["steps"]), item)

        return {"data": self.handlers.run(task, args["base_url"], progress)}

    @staticmethod
    def failure(exc: TaskFailed) -> dict[str, Any]:
        """A refused task's stored result: the reference's error item, as the task run at once answers."""
        return {"errors": [error_item(exc.message, exc.parameter, None, exc.code)]}


def _resent(record: TaskRecord, digest: str, task_uuid: str) -> TaskRecord:
    """A task whose UUID is taken: the same request sent again (a client retrying after a lost answer)
    gets the one task there is; a different request under that UUID is refused."""
    if record.digest == digest:
        return record
    raise TaskFailed(
        f"taskUUID: {task_uuid} was already used by another async task of this key; send a new UUID",
        "taskUUID",
    )


def request_digest(task: Any) -> str:
    """A digest of a task as it was sent: a resend (the same digest) is told from a reuse of its UUID."""
    sent = task.model_dump(mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()
