"""The same calls as :class:`InpaintClient`, over the gateway's HTTP task API instead of Triton's."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import urllib3

from triton_inpaint.api.lora import lora_items, lora_text
from triton_inpaint.api.schema import INPAINT, MASK, Control, RequestSchema, with_controls
from triton_inpaint.client.inpaint_client import (
    NOT_SERVED,
    DeadlineExceededError,
    InpaintError,
    InpaintResult,
    MaskResult,
    ModelNotServedError,
    ServerUnreachableError,
)
from triton_inpaint.client.streaming import Progress


def _offered(control: Control) -> bool:
    return control.runware is not None


class GatewayClient:
    """Send tasks to a ``triton-inpaint gateway`` at ``url`` (``http://HOST:PORT``)."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
        self.api_key = api_key
        self.timeout = timeout
        # urllib3 rather than urllib: the gateway answers 401/429/413 from the headers without reading
        # the body, and a large upload then meets a closed socket (EPIPE). urllib3 still reads the
        # answer the gateway sent; urllib reports "Broken pipe" and loses it.
        self._pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=30.0, read=timeout))

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(
        self, tasks: list[dict[str, Any]], on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> list[dict[str, Any]]:
        """POST /v1; with ``on_progress``, as server-sent events, each progress item handed to it."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if on_progress is not None:
            headers["Accept"] = "text/event-stream"
        try:
            payload = json.dumps(tasks).encode()
            response = self._pool.request(
                "POST", f"{self.url}/v1", body=payload, headers=headers, preload_content=False
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerUnreachableError(str(exc)) from None
        try:  # events: read as they come (a refusal before any event is a JSON body, as without)
            if on_progress is not None and response.status == 200:
                body = _events(response, on_progress)
            else:
                body = _json(response.read(), response.status)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ServerUnreachableError(str(exc)) from None
        finally:
            response.release_conn()
        unavailable = [item for item in body.get("errors", []) if item.get("code") == "serviceUnavailable"]
        if unavailable and not body.get("data"):  # as a 503: Triton did not answer the gateway
            raise ServerUnreachableError("; ".join(item.get("message", "") for item in unavailable))
        if response.status >= 400:
            errors = body.get("errors", [])
            messages = "; ".join(item.get("message", "") for item in errors) or f"HTTP {response.status}"
            if response.status == 503:
                raise ServerUnreachableError(messages)
            if response.status == 504:
                raise DeadlineExceededError(messages)
            raise _refused(messages)
        if body.get("errors"):
            raise _refused("; ".join(item["message"] for item in body["errors"]))
        return body["data"]

    @staticmethod
    def _task(task_type: str, **fields: Any) -> dict[str, Any]:
        present = {name: value for name, value in fields.items() if value is not None}
        return {"taskType": task_type, "taskUUID": str(uuid.uuid4()), **present}

    def upload(self, image: bytes) -> str:
        """Store an image on the gateway; its UUID stands for it in later tasks."""
        (item,) = self._post([self._task("imageUpload", image=_b64(image))])
        return item["imageUUID"]

    @with_controls(INPAINT, skip=("image", "mask", "prompt"), include=_offered)
    def inpaint(
        self,
        model: str,
        image: bytes,
        mask: bytes | None,
        prompt: str,
        on_progress: Callable[[Progress], None] | None = None,
        previews: bool = False,
        **controls: Any,
    ) -> InpaintResult:
        """As :meth:`InpaintClient.inpaint`: one ``imageInference`` task, images returned as base64;
        ``on_progress`` gets each step (with ``previews``, JPEGs of the images so far), sent by the
        gateway as server-sent events."""
        values = {"image": image, "mask": mask, "prompt": prompt, **INPAINT.keywords(controls, "inpaint")}
        task = self._task("imageInference", model=model, outputType="base64Data", **_fields(INPAINT, values))
        if on_progress is None:
            items = self._post([task])
        else:
            task["includePreviews" if previews else "includeProgress"] = True
            items = self._post([task], lambda item: on_progress(_progress(item)))
        mask_used = (
            base64.b64decode(items[0]["maskImageBase64Data"]) if "maskImageBase64Data" in items[0] else b""
        )
        return InpaintResult(
            images=[base64.b64decode(item["imageBase64Data"]) for item in items],
            seeds=[int(item["seed"]) for item in items],
            mask=mask_used,
        )

    @with_controls(MASK, skip=("image", "model", "prompt"), include=_offered)
    def mask(
        self, image: bytes, model: str | None = None, prompt: str | None = None, **controls: Any
    ) -> MaskResult:
        """As :meth:`InpaintClient.mask`: one ``imageMasking`` task."""
        values = {"image": image, "model": model, "prompt": prompt, **MASK.keywords(controls, "mask")}
        task = self._task("imageMasking", outputType="base64Data", **_fields(MASK, values))
        (item,) = self._post([task])
        return MaskResult(mask=base64.b64decode(item["maskImageBase64Data"]), detections=item["detections"])


def _fields(schema: RequestSchema, values: dict[str, Any]) -> dict[str, Any]:
    """The task's fields: each control under its Runware-style name (``a.b``: in the object ``a``),
    images as base64."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        control = schema[name]
        if value is None:
            continue
        if control.runware is None:
            raise InpaintError(f"{name}: is not offered by the gateway's task API")
        owner, _, leaf = control.runware.rpartition(".")
        target = fields.setdefault(owner, {}) if owner else fields
        if name == "lora":  # the hosted API's list of {model, weight}
            value = lora_items(lora_text(value))
        target[leaf] = _b64(value) if control.kind is bytes else value
    return fields


def _json(data: bytes, status: int) -> dict[str, Any]:
    try:
        return json.loads(data)
    except ValueError:
        return {"errors": [{"message": f"HTTP {status}"}]}


def _events(response: Any, on_progress: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The frames of a server-sent-events answer gathered as one body; progress items go to
    ``on_progress`` as they come."""
    body: dict[str, Any] = {"data": [], "errors": []}
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue  # blank separators, keep-alive comments, the end
        frame = json.loads(line.removeprefix("data: "))
        body["errors"].extend(frame.get("errors", []))
        for item in frame.get("data", []):
            if item.get("status") == "processing":
                on_progress(item)
            else:
                body["data"].append(item)
    return body


def _progress(item: dict[str, Any]) -> Progress:
    previews = [base64.b64decode(uri.split(",", 1)[1]) for uri in item.get("previewImages", [])]
    return Progress(step=int(item["step"]), total=int(item["steps"]), previews=previews)


def _refused(message: str) -> InpaintError:
    """The gateway passes Triton's refusals on, so a model it does not serve reads as over Triton."""
    return ModelNotServedError(message) if NOT_SERVED in message else InpaintError(message)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
