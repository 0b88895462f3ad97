"""The routes of neither task style: the model catalog, stored images, health, readiness, metrics."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from triton_inpaint.client import InpaintClient
from triton_inpaint.gateway.errors import AsciiJSONResponse as JSONResponse
from triton_inpaint.gateway.errors import error_item, error_response, logger, unavailable_response
from triton_inpaint.gateway.page.catalog import catalog
from triton_inpaint.gateway.services import Services, services
from triton_inpaint.gateway.store.records import TaskStoreUnavailable
from triton_inpaint.gateway.store.storage import IMAGE_EXTENSIONS
from triton_inpaint.gateway.validation import quoted

router = APIRouter()
App = Annotated[Services, Depends(services)]


@router.get(
    "/v1/models",
    summary="The served models with their defaults, every imageInference control with its range and "
    "hint, and the automatic masks on offer",
    responses={401: {}, 429: {}, 503: {}},
)
async def models(app: App) -> Response:
    def read() -> dict[str, Any]:
        with InpaintClient(app.config.triton_url, "grpc", timeout=10.0) as client:
            return catalog(client)

    try:
        return JSONResponse(await asyncio.wait_for(run_in_threadpool(read), timeout=15.0))
    except Exception as exc:  # noqa: BLE001 - whatever failed, Triton could not be asked
        return unavailable_response(
            f"Triton at {app.config.triton_url} is not reachable: {exc or type(exc).__name__}"
        )


@router.get("/images/{name}", summary="A stored image (uploads, results, masks) by UUID and extension")
async def get_image(name: str, app: App) -> Response:
    image_uuid, _, ext = name.partition(".")
    missing = error_response(404, error_item(f"no image {quoted(name)}", "name", code="notFound"))
    if ext not in IMAGE_EXTENSIONS:
        return missing
    try:
        listed = await run_in_threadpool(app.storage.image_link, image_uuid.lower())
        if listed is None or listed[0] != ext:
            return missing
        if listed[1] is not None:  # the bucket serves it: a presigned URL, made fresh each time
            return Response(status_code=307, headers={"Location": listed[1], "Cache-Control": "no-store"})
        stored = await run_in_threadpool(app.storage.get_image, image_uuid.lower())
    except OSError as exc:
        logger.error("reading image %s failed: %s", name, exc)
        return unavailable_response(f"the image store is unavailable ({exc}); retry later")
    if stored is None:
        return missing
    return Response(
        stored.data,
        media_type=stored.media_type,
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get("/healthz", summary="The gateway process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _not_ready(reason: str) -> Response:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


@router.get("/readyz", summary="Triton is reachable and serves at least one inpainting model")
async def readyz(app: App) -> Response:
    def check() -> list[str] | None:
        with InpaintClient(app.config.triton_url, "grpc", timeout=5.0) as client:
            return client.served_models() if client.server_ready() else None

    try:
        served = await asyncio.wait_for(run_in_threadpool(check), timeout=10.0)
    except Exception as exc:  # noqa: BLE001 - any failure means not ready, with its reason
        return _not_ready(f"Triton at {app.config.triton_url}: {exc or type(exc).__name__}")
    if served is None:
        return _not_ready("Triton is not ready: a model is loading, or being restored after its process died")
    if not served:
        return _not_ready("no inpainting model is ready")
    try:
        await asyncio.wait_for(run_in_threadpool(app.storage.check), timeout=15.0)
    except Exception as exc:  # noqa: BLE001 - the store is needed for every task's images
        if isinstance(exc, TaskStoreUnavailable):
            return _not_ready(str(exc))
        return _not_ready(f"the image store is unavailable: {exc or type(exc).__name__}")
    return JSONResponse({"status": "ready", "models": served})


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(app: App) -> Response:
    return Response(generate_latest(app.metrics.registry), media_type=CONTENT_TYPE_LATEST)
