"""The gateway's FastAPI app: its services built once and kept on ``app.state``, the request guard in
front, and the routers (Runware, Eden, the rest, the page) mounted.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import Field, TypeAdapter

from triton_inpaint.gateway import routes
from triton_inpaint.gateway.access.guard import RequestGuard
from triton_inpaint.gateway.config import GatewayConfig
from triton_inpaint.gateway.eden import router as eden_router
from triton_inpaint.gateway.eden.protocol import EdenTaskRequest
from triton_inpaint.gateway.errors import AsciiJSONResponse, error_item, error_response
from triton_inpaint.gateway.page.routes import add_page_routes
from triton_inpaint.gateway.runware import router as runware_router
from triton_inpaint.gateway.runware.protocol import (
    MAX_TASKS,
    GetResponseTask,
    ImageBackgroundRemovalTask,
    ImageInferenceTask,
    ImageMaskingTask,
    ImageUploadTask,
)
from triton_inpaint.gateway.services import build_services
from triton_inpaint.gateway.store.storage import GatewayStorage


def create_app(config: GatewayConfig, storage: GatewayStorage | None = None) -> FastAPI:
    services = build_services(config, storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.worker.start()
        try:
            yield
        finally:
            services.worker.stop()
            services.close()

    app = FastAPI(
        title="triton-inpaint gateway",
        version="0.1.0",
        description="Inpainting over HTTP in the style of the Runware and Eden APIs, served by Triton.",
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,  # every answer ASCII-safe
    )
    app.state.services = services
    app.add_middleware(
        RequestGuard,
        keys=config.keys,
        limits=services.limits,
        max_body_bytes=config.max_body_bytes,
        body_timeout=config.body_timeout,
        uploads_per_key=config.uploads_per_key,
    )
    app.add_exception_handler(RequestValidationError, _unreadable_body)
    for router in (runware_router.router, eden_router.router, routes.router):
        app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    add_page_routes(app, image_origins=_presigned_origins(config))
    return app


async def _unreadable_body(request: Request, exc: Exception) -> Response:
    # FastAPI's 422 would describe (and echo) the body; the reference answers 400 naming it.
    return error_response(400, error_item("body: is not valid JSON; send a JSON array of tasks", "body"))


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, with the task bodies described by their pydantic models (the handlers read the
    body themselves, to answer each task's errors in the reference's format)."""
    if app.openapi_schema is None:
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
