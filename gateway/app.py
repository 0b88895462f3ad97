"""The HTTP API: Runware-style ``POST /v1`` tasks, Eden-style async tasks, images, health and metrics."""

from __future__ import annotations

import asyncio
import copy
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import ValidationError
from starlette.requests import HTTPConnection

from triton_inpaint.client import InpaintClient

from .catalog import catalog
from .guard import AsciiJSONResponse as JSONResponse  # every answer ASCII-safe
from .guard import RequestGuard
from .guard import error_item as _error
from .guard import error_response as _errors
from .images import UUID_PATTERN
from .limits import KeyLimits, Limits
from .page import add_page_routes
from .records import TaskRecord, TaskStoreUnavailable
from .service import AsyncInpainting, GatewayConfig, TaskFailed, TaskRunner, Unavailable, logger
from .storage import IMAGE_EXTENSIONS, GatewayStorage, open_storage
from .tasks import ASYNC_IMAGE_FIELDS, TASK_TYPES, EdenTaskRequest, field_errors, quoted
from .websocket import TaskSocket

MAX_TASKS = 16  # tasks in one POST /v1


def create_app(config: GatewayConfig, storage: GatewayStorage | None = None) -> FastAPI:
    if storage is None:
        storage = open_storage(config.data_dir, config.s3, config.database_url)
    runner = TaskRunner(config, storage)
    worker = AsyncInpainting(runner)
    limits: Limits
    if storage.tasks.shared:  # replicas share the store: limits count there too
        from .postgres import SharedKeyLimits  # psycopg is loaded only by a gateway that uses it

        limits = SharedKeyLimits(storage.tasks, config.concurrency_per_key, config.requests_per_minute)
    else:
        limits = KeyLimits(config.concurrency_per_key, config.requests_per_minute)
    trusted_hosts = config.trusted_host_names()
    registry = CollectorRegistry()
    tasks_total = Counter(
        "gateway_tasks_total", "Tasks by type and outcome", ["task_type", "outcome"], registry=registry
    )
    task_seconds = Histogram(
        "gateway_task_seconds",
        "Seconds per task",
        ["task_type"],
        registry=registry,
        buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            worker.stop()
            limits.close()
            storage.tasks.close()

    app = FastAPI(
        title="triton-inpaint gateway",
        version="0.1.0",
        description="Inpainting over HTTP in the style of the Runware and Eden APIs, served by Triton.",
        lifespan=lifespan,
        default_response_class=JSONResponse,
    )
    app.add_middleware(
        RequestGuard,
        keys=config.keys,
        limits=limits,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        uploads_per_key=config.uploads_per_key,
    )

    @app.exception_handler(RequestValidationError)
    async def unreadable_body(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's 422 would describe (and echo) the body; the reference answers 400 naming it.
        return _errors(400, _error("body: is not valid JSON; send a JSON array of tasks", "body"))

    def base_url(request: HTTPConnection) -> str:
        """Where result URLs point: ``--public-url``, else the request's own host when it is one the
        gateway trusts (``--trusted-host``), else the address it listens on: never a Host header an
        arbitrary caller chose. A WebSocket's results are fetched over HTTP(S)."""
        if config.public_url:
            return config.public_url.rstrip("/")
        host = request.headers.get("host", "").lower()
        if host in trusted_hosts:
            scheme = {"ws": "http", "wss": "https"}.get(request.url.scheme, request.url.scheme)
            return f"{scheme}://{host}"
        return config.listen_url.rstrip("/")

    def parse_task(raw: Any) -> tuple[Any, list[dict]]:
        """One task object of a ``/v1`` body or WebSocket message: (the validated task, no errors), or
        (None, its errors, each naming the field)."""
        if not isinstance(raw, dict):
            return None, [_error("each task must be a JSON object", "body")]
        # Echoed in errors only when it is a UUID: anything else is the caller's raw input.
        task_uuid = raw.get("taskUUID")
        task_uuid = task_uuid if isinstance(task_uuid, str) and UUID_PATTERN.match(task_uuid) else None
        task_type = raw.get("taskType")
        schema = TASK_TYPES.get(task_type) if isinstance(task_type, str) else None
        if schema is None:
            message = f"taskType: must be one of {', '.join(TASK_TYPES)}, got {quoted(task_type)}"
            return None, [_error(message, "taskType", task_uuid)]
        try:
            return schema.model_validate(raw), []
        except ValidationError as exc:
            return None, [
                _error(f"{name}: {message}", name, task_uuid, task_type=task_type)
                for name, message in field_errors(schema, exc)
            ]

    def dispatch(task: Any, url: str, caller: str) -> list[dict]:
        """Run a task now, accept it for later (deliveryMethod "async": acknowledged "processing"), or
        read an async task's results (getResponse)."""
        if task.taskType == "getResponse":
            return worker.response(caller, task.taskUUID)
        if task.deliveryMethod == "async" and task.taskType in ASYNC_IMAGE_FIELDS:
            record = worker.create_runware(task, caller, url)
            if record.status in ("completed", "failed"):  # a resend of a finished task: its outcome
                return worker.response(caller, task.taskUUID)
            return [{"taskType": task.taskType, "taskUUID": task.taskUUID, "status": "processing"}]
        return runner.run(task, url)

    async def run_one(task: Any, url: str, caller: str) -> tuple[list[dict], dict | None, int]:
        """(items, error, status): status 200, 400 (refused), 500 (failed on the server) or 503."""
        started = time.monotonic()
        try:
            items = await run_in_threadpool(dispatch, task, url, caller)
            tasks_total.labels(task.taskType, "ok").inc()
            return items, None, 200
        except TaskFailed as exc:
            failed = exc.code == "inferenceFailed"
            tasks_total.labels(task.taskType, "failed" if failed else "refused").inc()
            error = _error(
                exc.message, exc.parameter, task.taskUUID, exc.code, exc.task_type or task.taskType
            )
            return [], error, 500 if failed else 400
        except (Unavailable, OSError) as exc:  # OSError: the task store did not answer
            tasks_total.labels(task.taskType, "unavailable").inc()
            return [], _error(str(exc), None, task.taskUUID, "serviceUnavailable", task.taskType), 503
        except Exception as exc:  # noqa: BLE001 - one task's bug must not take the others' answers down
            logger.exception("task %s failed", task.taskUUID)
            tasks_total.labels(task.taskType, "failed").inc()
            message = f"internal error: {type(exc).__name__}"
            return [], _error(message, None, task.taskUUID, "internalError", task.taskType), 500
        finally:
            task_seconds.labels(task.taskType).observe(time.monotonic() - started)

    @app.post(
        "/v1",
        summary="Run tasks: imageInference (inpainting), imageMasking, imageUpload, imageBackgroundRemoval, "
        "getResponse",
        responses={400: {"description": "every task was refused"}, 401: {}, 413: {}, 429: {}, 503: {}},
    )
    async def run_tasks(
        request: Request,
        body: Annotated[
            Any,
            Body(
                description="a JSON array of tasks, each with taskType and taskUUID",
                examples=[
                    [
                        {
                            "taskType": "imageUpload",
                            "taskUUID": "3738f7ee-392d-4fae-927d-604abf2de01b",
                            "image": "https://example.com/photo.png",
                        }
                    ]
                ],
            ),
        ],
    ) -> Response:
        items = body if isinstance(body, list) else [body]
        if not items or len(items) > MAX_TASKS:
            return _errors(400, _error(f"send 1-{MAX_TASKS} tasks in a JSON array", "body"))
        valid, errors = [], []
        for raw in items:
            task, problems = parse_task(raw)
            errors.extend(problems)
            if task is not None:
                valid.append(task)
        caller = request.state.caller
        outcomes = await asyncio.gather(*(run_one(task, base_url(request), caller) for task in valid))
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

    @app.websocket("/v1")
    async def task_socket(websocket: WebSocket) -> None:
        """The same tasks over the hosted API's WebSocket protocol (gateway/websocket.py)."""
        socket = TaskSocket(
            websocket, config.keys, limits, parse_task, run_one, base_url(websocket), follow, MAX_TASKS
        )
        await socket.serve()

    async def follow(task: Any, caller: str) -> None:
        """Wait until an accepted async task is done (its results then go out in their own frame)."""
        while not await run_in_threadpool(worker.finished, caller, task.taskUUID):
            await asyncio.sleep(0.5)

    @app.get(
        "/v1/models",
        summary="The served models with their defaults, every imageInference control with its range and "
        "hint, and the automatic masks on offer",
        responses={401: {}, 429: {}, 503: {}},
    )
    async def models() -> Response:
        def read() -> dict[str, Any]:
            with InpaintClient(config.triton_url, "grpc", timeout=10.0) as client:
                return catalog(client)

        try:
            return JSONResponse(await asyncio.wait_for(run_in_threadpool(read), timeout=15.0))
        except Exception as exc:  # noqa: BLE001 - whatever failed, Triton could not be asked
            message = f"Triton at {config.triton_url} is not reachable: {exc or type(exc).__name__}"
            return _errors(503, _error(message, code="serviceUnavailable"), headers={"Retry-After": "5"})

    @app.post("/v2/tasks/create", summary="Create an async inpainting task (Eden-style); returns its id")
    async def create_task(request: Request, body: Annotated[Any, Body()]) -> Response:
        try:
            parsed = EdenTaskRequest.model_validate(body)
        except ValidationError as exc:
            problems = field_errors(EdenTaskRequest, exc)
            return _errors(400, *(_error(f"{name}: {message}", name) for name, message in problems))
        try:
            record = await run_in_threadpool(worker.create, parsed.args)
        except TaskFailed as exc:
            return _errors(400, _error(exc.message, exc.parameter))
        except (Unavailable, OSError) as exc:  # OSError: the task store did not answer
            return _errors(503, _error(str(exc), code="serviceUnavailable"), headers={"Retry-After": "5"})
        return JSONResponse({"taskId": record.id}, status_code=201)

    @app.get("/v2/tasks/{task_id}", summary="An async task's status, progress and results")
    async def get_task(request: Request, task_id: str) -> Response:
        try:
            record = await run_in_threadpool(storage.tasks.get_task, task_id)
        except OSError as exc:
            return _errors(503, _error(str(exc), code="serviceUnavailable"), headers={"Retry-After": "5"})
        if record is None:
            return _errors(404, _error(f"no task {quoted(task_id)}", "task_id", code="notFound"))
        return JSONResponse({"task": _task_view(record, base_url(request))})

    @app.get("/images/{name}", summary="A stored image (uploads, results, masks) by UUID and extension")
    async def get_image(name: str) -> Response:
        image_uuid, _, ext = name.partition(".")
        missing = _errors(404, _error(f"no image {quoted(name)}", "name", code="notFound"))
        if ext not in IMAGE_EXTENSIONS:
            return missing
        try:
            listed = await run_in_threadpool(storage.image_link, image_uuid.lower())
            if listed is None or listed[0] != ext:
                return missing
            if listed[1] is not None:  # the bucket serves it: a presigned URL, made fresh each time
                return Response(status_code=307, headers={"Location": listed[1], "Cache-Control": "no-store"})
            stored = await run_in_threadpool(storage.get_image, image_uuid.lower())
        except OSError as exc:
            logger.error("reading image %s failed: %s", name, exc)
            message = f"the image store is unavailable ({exc}); retry later"
            return _errors(503, _error(message, code="serviceUnavailable"), headers={"Retry-After": "5"})
        if stored is None:
            return missing
        return Response(
            stored.data,
            media_type=stored.media_type,
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    def openapi() -> dict[str, Any]:
        """FastAPI's schema, with the task bodies described by their pydantic models (the handlers
        read the body themselves, to answer each task's errors in the reference's format)."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            bodies, definitions = request_schemas()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
            for path, body in bodies.items():
                schema["paths"][path]["post"]["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": body}},
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", summary="The gateway process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Triton is reachable and serves at least one inpainting model")
    async def readyz() -> Response:
        def check() -> list[str] | None:
            with InpaintClient(config.triton_url, "grpc", timeout=5.0) as client:
                return client.served_models() if client.server_ready() else None

        try:
            models = await asyncio.wait_for(run_in_threadpool(check), timeout=10.0)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready, with its reason
            return JSONResponse(
                {
                    "status": "unavailable",
                    "reason": f"Triton at {config.triton_url}: {exc or type(exc).__name__}",
                },
                status_code=503,
            )
        if models is None:
            reason = "Triton is not ready: a model is loading, or being restored after its process died"
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        if not models:
            return JSONResponse(
                {"status": "unavailable", "reason": "no inpainting model is ready"}, status_code=503
            )
        try:
            await asyncio.wait_for(run_in_threadpool(storage.check), timeout=15.0)
        except Exception as exc:  # noqa: BLE001 - the store is needed for every task's images
            reason = f"the image store is unavailable: {exc or type(exc).__name__}"
            if isinstance(exc, TaskStoreUnavailable):
                reason = str(exc)
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "models": models})

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    add_page_routes(app, image_origins=_presigned_origins(config))
    return app


def _presigned_origins(config: GatewayConfig) -> tuple[str, ...]:
    """Where result images come from besides the gateway: the bucket, when /images/ redirects there."""
    if config.s3 is None or config.s3.presign_seconds <= 0:
        return ()
    if config.s3.endpoint_url:
        parts = urllib.parse.urlsplit(config.s3.endpoint_url)
        return (f"{parts.scheme}://{parts.netloc}",)
    return ("https://*.amazonaws.com",)


def request_schemas() -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON schemas of the ``/v1`` and ``/v2/tasks/create`` bodies, and the definitions they refer to."""
    from pydantic import Field, TypeAdapter

    from .tasks import (
        GetResponseTask,
        ImageBackgroundRemovalTask,
        ImageInferenceTask,
        ImageMaskingTask,
        ImageUploadTask,
    )

    one_task = Annotated[
        ImageInferenceTask
        | ImageMaskingTask
        | ImageUploadTask
        | ImageBackgroundRemovalTask
        | GetResponseTask,
        Field(discriminator="taskType"),
    ]
    template = "#/components/schemas/{model}"
    tasks = TypeAdapter(Annotated[list[one_task], Field(min_length=1, max_length=MAX_TASKS)]).json_schema(
        ref_template=template
    )
    eden = TypeAdapter(EdenTaskRequest).json_schema(ref_template=template)
    definitions = {**tasks.pop("$defs", {}), **eden.pop("$defs", {})}
    definitions["EdenTaskRequest"] = eden
    return {"/v1": tasks, "/v2/tasks/create": {"$ref": template.format(model="EdenTaskRequest")}}, definitions


def _task_view(record: TaskRecord, base_url: str) -> dict[str, Any]:
    result = record.result
    if result is not None:
        result = copy.deepcopy(result)
        for item in [*result.get("output", []), result.get("mask", {})]:
            if "url" in item:
                item["url"] = base_url + item["url"]
    return {
        "_id": record.id,
        "tool": record.tool,
        "status": record.status,
        "progress": record.progress,
        "args": record.args,
        "result": result,
        "error": record.error,
        "createdAt": _iso(record.created),
        "updatedAt": _iso(record.updated),
    }


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()
