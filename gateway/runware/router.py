"""The Runware API's routes: ``POST /v1`` (a JSON array of tasks) and the WebSocket at ``/v1``.

``POST /v1`` with ``Accept: text/event-stream`` answers as server-sent events instead of one JSON
body: each event's data is a frame as the WebSocket sends it (``{"data": [...]}`` or
``{"errors": [...]}``): the progress items of tasks that asked for them, then each task's results as
soon as that task is done, then ``[DONE]`` (the hosted API's stream terminator).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, WebSocket
from fastapi.responses import Response, StreamingResponse

from triton_inpaint.gateway.errors import AsciiJSONResponse as JSONResponse
from triton_inpaint.gateway.errors import error_item, error_response
from triton_inpaint.gateway.runware.progress import sink_from_thread, wants_progress
from triton_inpaint.gateway.runware.protocol import MAX_TASKS
from triton_inpaint.gateway.runware.websocket import TaskSocket
from triton_inpaint.gateway.services import Services, services

router = APIRouter()
EXAMPLE = [{"taskType": "imageUpload", "taskUUID": "3738f7ee-392d-4fae-927d-604abf2de01b",
            "image": "https://example.com/photo.png"}]  # fmt: skip


@router.post(
    "/v1",
    summary="Run tasks: imageInference (inpainting), imageMasking, imageUpload, imageBackgroundRemoval, "
    "getResponse",
    responses={
        200: {
            "description": "the tasks' items (and errors); with Accept: text/event-stream, server-sent "
            "events: progress items, each task's results as it finishes, then [DONE]",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        400: {"description": "every task was refused"},
        401: {},
        413: {},
        429: {},
        503: {},
    },
)
async def run_tasks(
    request: Request,
    body: Annotated[
        Any, Body(description="a JSON array of tasks, each with taskType and taskUUID", examples=[EXAMPLE])
    ],
    app: Annotated[Services, Depends(services)],
) -> Response:
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > MAX_TASKS:
        return error_response(400, error_item(f"send 1-{MAX_TASKS} tasks in a JSON array", "body"))
    valid, errors = [], []
    for raw in items:
        task, problems = app.runware.parse(raw)
        errors.extend(problems)
        if task is not None:
            valid.append(task)
    caller, url = request.state.caller, app.base_url(request)
    if "text/event-stream" in request.headers.get("accept", ""):
        events = _events(app, valid, errors, caller, url)
        return StreamingResponse(events, media_type="text/event-stream", headers=NO_BUFFERING)
    outcomes = await asyncio.gather(*(app.runware.run(task, url, caller) for task in valid))
    data = [item for items, _, _ in outcomes for item in items]
    errors.extend(error for _, error, _ in outcomes if error is not None)
    statuses = {status for _, _, status in outcomes}
    content: dict[str, Any] = {"data": data}
    if errors:
        content["errors"] = errors
    if data:
        return JSONResponse(content)
    if 503 in statuses:
        return JSONResponse(content, status_code=503, headers={"Retry-After": "5"})
    for status in (500, 504):
        if status in statuses:
            return JSONResponse(content, status_code=status)
    return JSONResponse(content, status_code=400)


KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
# Proxies (nginx's ingress among them) pass events on as they come instead of buffering the body.
NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _events(
    app: Services, tasks: list[Any], errors: list[dict], caller: str, url: str
) -> AsyncIterator[str]:
    """The tasks' frames as server-sent events, as the tasks produce them."""
    frames: asyncio.Queue[dict | None] = asyncio.Queue()

    async def progress(item: dict) -> None:
        frames.put_nowait({"data": [item]})

    sink = sink_from_thread(asyncio.get_running_loop(), progress)

    async def one(task: Any) -> None:
        items, error, _ = await app.runware.run(task, url, caller, sink if wants_progress(task) else None)
        frames.put_nowait({"data": items} if error is None else {"errors": [error]})

    if errors:
        yield _event({"errors": errors})
    runs = asyncio.gather(*(one(task) for task in tasks))
    runs.add_done_callback(lambda _: frames.put_nowait(None))
    while True:
        try:
            frame = await asyncio.wait_for(frames.get(), KEEPALIVE_SECONDS)
        except TimeoutError:
            yield ": keep-alive\n\n"
            continue
        if frame is None:
            break
        yield _event(frame)
    yield "data: [DONE]\n\n"


def _event(frame: dict) -> str:
    return "data: " + json.dumps(frame, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n\n"


@router.websocket("/v1")
async def task_socket(websocket: WebSocket, app: Annotated[Services, Depends(services)]) -> None:
    """The same tasks over the hosted API's WebSocket protocol (gateway/runware/websocket.py)."""
    socket = TaskSocket(websocket, app.config.keys, app.limits, app.runware, app.base_url(websocket))
    await socket.serve()
