"""The Runware API's routes: ``POST /v1`` (a JSON array of tasks) and the WebSocket at ``/v1``."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, WebSocket
from fastapi.responses import Response

from triton_inpaint.gateway.errors import AsciiJSONResponse as JSONResponse
from triton_inpaint.gateway.errors import error_item, error_response
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
    responses={400: {"description": "every task was refused"}, 401: {}, 413: {}, 429: {}, 503: {}},
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
    return JSONResponse(content, status_code=500 if 500 in statuses else 400)


@router.websocket("/v1")
async def task_socket(websocket: WebSocket, app: Annotated[Services, Depends(services)]) -> None:
    """The same tasks over the hosted API's WebSocket protocol (gateway/runware/websocket.py)."""
    socket = TaskSocket(websocket, app.config.keys, app.limits, app.runware, app.base_url(websocket))
    await socket.serve()
