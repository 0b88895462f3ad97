"""Eden-style async inpainting tasks: accepted (checked by Triton with a dry run, their images stored as
uploads), run by the async worker (:mod:`triton_inpaint.gateway.worker`), and shown as Eden shows a task.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from triton_inpaint.api.imaging import probe
from triton_inpaint.api.schema import INPAINT
from triton_inpaint.client import InpaintClient
from triton_inpaint.gateway.eden.protocol import EDEN_TOOL
from triton_inpaint.gateway.errors import StorageUnavailable, TaskFailed, TritonUnavailable, logger
from triton_inpaint.gateway.inference import TaskRunner
from triton_inpaint.gateway.inputs.images import image_extension
from triton_inpaint.gateway.store.records import TaskRecord
from triton_inpaint.gateway.worker import Report


class EdenTasks:
    def __init__(self, runner: TaskRunner, wake: Callable[[], None]) -> None:
        self.runner = runner
        self.storage = runner.storage
        self.tasks = self.storage.tasks
        self.wake = wake  # tells the worker a task was stored

    def create(self, args: Any) -> Any:
        """Store the task, its input images first (as uploads), so it can run after a restart."""
        if (args.mask is None) == (args.masking_prompt is None):
            raise TaskFailed("args.mask: send a mask image or a masking_prompt, one of the two", "args.mask")
        stored = args.model_dump()
        # Every input is resolved and checked before anything is stored: a refused task keeps nothing.
        inputs = {
            name: self.runner.image(getattr(args, name), f"args.{name}")
            for name in ("image", "mask")
            if getattr(args, name) is not None
        }
        if "mask" in inputs:
            image_size, mask_size = (probe(inputs[name])[1:] for name in ("image", "mask"))
            if image_size != mask_size:
                raise TaskFailed(
                    f"args.mask: size {mask_size[0]}x{mask_size[1]} does not match the image's "
                    f"{image_size[0]}x{image_size[1]}; send a mask of the same width and height",
                    "args.mask",
                )
        # Whatever Triton would refuse (a mask prompt that finds nothing, a size over the memory budget)
        # is refused now, with a 400, not later in the task. A Triton that does not answer does not
        # stop the task from being accepted: it waits and retries like any other.
        try:
            self._request(stored, inputs["image"], inputs.get("mask"), dry_run=True)
        except TritonUnavailable as exc:
            logger.warning("async task accepted without its checks: %s", exc)
        uuids = self.runner.store([(data, image_extension(data)) for data in inputs.values()])
        stored.update(zip(inputs, uuids, strict=True))
        record = self.tasks.create_task(EDEN_TOOL, stored, str(uuid.uuid4()))
        self.wake()
        return record

    def inpaint(self, args: dict[str, Any], report: Report) -> dict[str, Any]:
        """The worker's handler: run an accepted task from its stored images. (Its status shows the
        worker's coarse progress: ``report`` is not called, the task runs without streaming.)"""
        try:
            image = self.storage.get_image(args["image"])
            mask = self.storage.get_image(args["mask"]) if args.get("mask") else None
        except OSError as exc:  # the image store is down: the task waits and retries, as for Triton
            raise StorageUnavailable(f"the task's input images cannot be read ({exc})") from None
        if image is None or (args.get("mask") and mask is None):
            raise TaskFailed("the task's stored input images are gone", "args.image")
        result = self._request(args, image.data, None if mask is None else mask.data)
        *uuids, mask_uuid = self.runner.store([(data, "png") for data in [*result.images, result.mask]])
        outputs = [
            {"imageUUID": image_uuid, "url": f"/images/{image_uuid}.png", "seed": seed}
            for image_uuid, seed in zip(uuids, result.seeds, strict=True)
        ]
        return {"output": outputs, "mask": {"imageUUID": mask_uuid, "url": f"/images/{mask_uuid}.png"}}

    def _request(self, args: dict[str, Any], image: bytes, mask: bytes | None, dry_run: bool = False) -> Any:
        """The task's inpainting request to Triton (``dry_run``: only its checks, no images)."""
        _, width, height = probe(image)
        width, height = resolution_size(width, height, args["resolution"])

        def call(client: InpaintClient) -> Any:
            model = args.get("model") or self.runner.config.default_model or _first_model(client)
            controls = {
                control.name: args.get(control.eden)
                for control in INPAINT
                if control.eden is not None and control.kind is not bytes
            }
            prompt = controls.pop("prompt")
            return client.inpaint(
                model,
                image,
                mask,
                prompt,
                **controls,
                strength=min(1.0, args["creativity"]),
                width=width,
                height=height,
                dry_run=dry_run or None,
            )

        return self.runner.call(EDEN_FIELDS, call)


EDEN_FIELDS = {
    **{control.name: f"args.{control.eden}" for control in INPAINT if control.eden},
    # What Eden-style tasks send under other names: the size from resolution, a prompt's detector.
    "mask_model": "args.masking_prompt",
    "width": "args.resolution",
    "height": "args.resolution",
    "strength": "args.creativity",
    "model": "args.model",
}


def _first_model(client: InpaintClient) -> str:
    served = client.served_models()
    if not served:
        raise TaskFailed("no inpainting model is served", "args.model")
    return served[0]


def resolution_size(width: int, height: int, resolution: int, multiple: int = 16) -> tuple[int, int]:
    """Eden's ``resolution``: the longer side of the processing size, the aspect ratio kept, both sides
    multiples of 16 (what every family accepts) and at least 64."""
    scale = resolution / max(width, height)
    return (
        max(64, int(width * scale) // multiple * multiple),
        max(64, int(height * scale) // multiple * multiple),
    )


def task_view(record: TaskRecord, base_url: str) -> dict[str, Any]:
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
