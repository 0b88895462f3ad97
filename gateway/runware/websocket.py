"""The hosted API's WebSocket protocol at ``/v1``, as its official SDKs speak it.

The client sends JSON arrays of tasks and the server answers JSON objects (``{"data": [...]}`` or
``{"errors": [...]}``): each task's results in their own frame as soon as that task finishes,
correlated by ``taskUUID``, so a slow inpainting never holds back a quick upload or a ping.

- The upgrade carries no key. The first task is ``authentication`` with ``apiKey`` (and
  ``connectionSessionUUID`` when the SDK resumes). The answer is a ``data`` item with
  ``taskType: "authentication"`` and the session's UUID. A wrong key gets an ``errors`` item with
  ``taskType: "authentication"`` and code ``invalidApiKey``, and the connection stays open, as the
  SDKs expect.
- ``ping`` tasks get ``pong`` at once, also while tasks run.
- Every other task goes through the same parsing, limits, runner and error shapes as ``POST /v1``.
  One bad task gets its own ``errors`` frame and never closes the connection or fails the others.
- A message is capped at the gateway's body limit (uvicorn refuses larger frames), and results
  default to URLs, as over REST.
- An imageInference task sent with includeProgress (or includePreviews) gets its progress items
  (gateway/runware/progress.py) in ``data`` frames of their own while it denoises, all before its
  result frame.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from triton_inpaint.gateway.access.limits import Limits, acquire, matching_key, over_limit_message, release
from triton_inpaint.gateway.errors import error_item
from triton_inpaint.gateway.inputs.images import UUID_PATTERN
from triton_inpaint.gateway.runware.dispatch import RunwareDispatch
from triton_inpaint.gateway.runware.progress import sink_from_thread, wants_progress
from triton_inpaint.gateway.runware.protocol import GetResponseTask


class TaskSocket:
    """One WebSocket connection: its authentication, its frames, the tasks it has in flight."""

    def __init__(
        self,
        websocket: WebSocket,
        keys: frozenset[str],
        limits: Limits,
        tasks: RunwareDispatch,
        base_url: str,
    ) -> None:
        self.websocket = websocket
        self.keys = keys
        self.limits = limits
        self.tasks = tasks  # parsing, running and following, as POST /v1 does them
        self.base_url = base_url
        self.max_tasks = tasks.max_tasks  # per message, as per POST /v1 body
        self.caller: str | None = None  # the identity limits count against, once authenticated
        self.session = str(uuid.uuid4())
        self._send_lock = asyncio.Lock()
        self._running: set[asyncio.Task] = set()

    async def serve(self) -> None:
        await self.websocket.accept()
        try:
            while True:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None:
                    text = (message.get("bytes") or b"").decode("utf-8", errors="replace")
                await self._message(text)
        except WebSocketDisconnect:
            return
        finally:
            for running in self._running:
                running.cancel()

    async def _message(self, text: str) -> None:
        try:
            body = json.loads(text)
        except ValueError:
            await self.send(
                {"errors": [error_item("message: is not valid JSON; send a JSON array of tasks", "body")]}
            )
            return
        tasks = body if isinstance(body, list) else [body]
        if len(tasks) > self.max_tasks:
            message = f"message: send 1-{self.max_tasks} tasks in a JSON array, got {len(tasks)}"
            await self.send({"errors": [error_item(message, "body")]})
            return
        for raw in tasks:
            await self._task(raw)

    async def _task(self, raw: Any) -> None:
        task_type = raw.get("taskType") if isinstance(raw, dict) else None
        if task_type == "authentication":
            await self._authenticate(raw)
            return
        if task_type == "ping":
            await self.send({"data": [{"taskType": "ping", "pong": True}]})
            return
        if self.caller is None:
            task_uuid = _task_uuid(raw)
            message = "authenticate first: send an authentication task with your apiKey"
            await self.send(
                {"errors": [error_item(message, "apiKey", task_uuid, "invalidApiKey", task_type)]}
            )
            return
        task, errors = self.tasks.parse(raw)
        if errors:
            await self.send({"errors": errors})
            return
        running = asyncio.create_task(self._run(task))
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    async def _authenticate(self, raw: dict) -> None:
        presented = raw.get("apiKey")
        if self.keys:
            key = matching_key(self.keys, presented if isinstance(presented, str) else None)
            caller = None if key is None else f"key:{key}"
        else:  # no keys configured: the gateway is open, as over REST
            client = self.websocket.client
            caller = f"address:{client.host if client else 'unknown'}"
        if caller is None:
            message = (
                "invalid API key: the apiKey of the authentication task is not one of this gateway's keys"
            )
            await self.send(
                {"errors": [error_item(message, "apiKey", None, "invalidApiKey", "authentication")]}
            )
            return
        self.caller = caller
        resumed = raw.get("connectionSessionUUID")
        if isinstance(resumed, str) and UUID_PATTERN.match(resumed):
            self.session = resumed.lower()
        await self.send({"data": [{"taskType": "authentication", "connectionSessionUUID": self.session}]})

    async def _run(self, task: Any) -> None:
        try:
            wait = await acquire(self.limits, self.caller)
        except OSError as exc:  # shared limits: the database that counts them did not answer
            error = error_item(str(exc), None, task.taskUUID, "serviceUnavailable", task.taskType)
            await self.send({"errors": [error]})
            return
        if wait is not None:
            message = over_limit_message(self.limits, wait)
            error = error_item(message, None, task.taskUUID, "rateLimited", task.taskType)
            await self.send({"errors": [error]})
            return
        progress = None
        if wants_progress(task):
            progress = sink_from_thread(asyncio.get_running_loop(), self._progress_frame)
        try:
            items, error, _ = await self.tasks.run(task, self.base_url, self.caller, progress)
        finally:
            await release(self.limits, self.caller)
        await self.send({"data": items} if error is None else {"errors": [error]})
        accepted = task.taskType != "getResponse" and task.deliveryMethod == "async"
        if accepted and error is None and items and items[0].get("status") == "processing":
            # Accepted for later: its results (or its error) come in their own frame when it is done,
            # read as a getResponse task reads them. (A getResponse polled while the task runs is only
            # answered: the task's own follower pushes the results once.)
            await self.tasks.follow(task, self.caller)
            fetch = GetResponseTask.model_construct(taskType="getResponse", taskUUID=task.taskUUID)
            items, error, _ = await self.tasks.run(fetch, self.base_url, self.caller)
            await self.send({"data": items} if error is None else {"errors": [error]})

    async def _progress_frame(self, item: dict[str, Any]) -> None:
        await self.send({"data": [item]})

    async def send(self, frame: dict[str, Any]) -> None:
        """One JSON frame; sends from concurrent tasks are serialised (a frame is never interleaved)."""
        text = json.dumps(frame, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        async with self._send_lock:
            if self.websocket.application_state != WebSocketState.CONNECTED:
                return
            try:
                await self.websocket.send_text(text)
            except (WebSocketDisconnect, RuntimeError):
                return  # the client left; its tasks' results have nowhere to go


def _task_uuid(raw: Any) -> str | None:
    value = raw.get("taskUUID") if isinstance(raw, dict) else None
    return value if isinstance(value, str) and UUID_PATTERN.match(value) else None
