"""The Eden-style async API's routes: create a task, read its status, progress and results."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import ValidationError

from triton_inpaint.gateway.eden.protocol import EdenTaskRequest
from triton_inpaint.gateway.eden.tasks import task_view
from triton_inpaint.gateway.errors import AsciiJSONResponse as JSONResponse
from triton_inpaint.gateway.errors import (
    TaskFailed,
    Unavailable,
    error_item,
    error_response,
    unavailable_response,
)
from triton_inpaint.gateway.services import Services, services
from triton_inpaint.gateway.validation import field_errors, quoted

router = APIRouter()


@router.post("/v2/tasks/create", summary="Create an async inpainting task (Eden-style); returns its id")
async def create_task(body: Annotated[Any, Body()], app: Annotated[Services, Depends(services)]) -> Response:
    try:
        parsed = EdenTaskRequest.model_validate(body)
    except ValidationError as exc:
        problems = field_errors(EdenTaskRequest, exc)
        return error_response(400, *(error_item(f"{name}: {message}", name) for name, message in problems))
    try:
        record = await run_in_threadpool(app.eden.create, parsed.args)
    except TaskFailed as exc:
        return error_response(400, error_item(exc.message, exc.parameter))
    except (Unavailable, OSError) as exc:  # OSError: the task store did not answer
        return unavailable_response(str(exc))
    return JSONResponse({"taskId": record.id}, status_code=201)


@router.get("/v2/tasks/{task_id}", summary="An async task's status, progress and results")
async def get_task(request: Request, task_id: str, app: Annotated[Services, Depends(services)]) -> Response:
    try:
        record = await run_in_threadpool(app.storage.tasks.get_task, task_id)
    except OSError as exc:
        return unavailable_response(str(exc))
    if record is None:
        return error_response(404, error_item(f"no task {quoted(task_id)}", "task_id", code="notFound"))
    return JSONResponse({"task": task_view(record, app.base_url(request))})
