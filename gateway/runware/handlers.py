"""The Runware task types, run now: imageUpload, imageInference, imageMasking and background removal.

Each resolves its images, calls Triton through :class:`~triton_inpaint.gateway.inference.TaskRunner`,
stores the results and answers the reference's items. The async worker runs the same handlers later
for tasks sent with deliveryMethod "async" (:mod:`.async_tasks`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import (
    Outpaint,
    cut_out,
    decode_image,
    decode_mask,
    encode_image,
    mask_pixels,
    probe,
)
from triton_inpaint.api.schema import INPAINT, MASK, MASK_SOURCES, RequestSchema
from triton_inpaint.gateway.errors import TaskFailed
from triton_inpaint.gateway.inference import TaskRunner
from triton_inpaint.gateway.inputs.images import image_extension, output_fields
from triton_inpaint.gateway.runware.progress import ProgressSink, progress_item, wants_progress
from triton_inpaint.gateway.runware.protocol import ImageInferenceTask, ImageMaskingTask, ImageUploadTask

# Triton's input names -> the reference's field names, so a refusal names what the caller sent.
INFERENCE_FIELDS = {control.name: control.runware for control in INPAINT if control.runware}
# The client's streaming keywords, as the task names them (a model served without progress is refused
# naming on_progress).
STREAM_FIELDS = {"on_progress": "includeProgress", "previews": "includePreviews"}
MASKING_FIELDS = {control.name: control.runware for control in MASK if control.runware}
EXTENSIONS = {"PNG": "png", "JPG": "jpg", "WEBP": "webp"}


class RunwareTasks:
    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner

    def image_upload(self, task: ImageUploadTask, base_url: str) -> list[dict[str, Any]]:
        data = self.runner.image(task.image, "image")  # decoded once there: a corrupt file is refused now
        ext = image_extension(data)
        (image_uuid,) = self.runner.store([(data, ext)])
        # imageUUID to use in later tasks, and imageURL as the hosted API answers (its SDKs read it).
        item = {"taskType": task.taskType, "taskUUID": task.taskUUID}
        return [item | output_fields("image", image_uuid, data, ext, "URL", base_url)]

    def image_inference(
        self, task: ImageInferenceTask, base_url: str, progress: ProgressSink | None = None
    ) -> list[dict[str, Any]]:
        """Inpaint; with a ``progress`` sink (a WebSocket, server-sent events, the async task store)
        and the task's includeProgress or includePreviews, its progress items go there as it denoises."""
        inputs_once(task)
        controls = runware_controls(INPAINT, task)
        outpaint = Outpaint.from_values(controls)
        if not outpaint.extends:  # outpainting masks the new border; a mask is then optional
            _one_of(task, tuple(INFERENCE_FIELDS[name] for name in MASK_SOURCES))
        image = self.runner.image(task.seedImage, "seedImage")
        mask = None if task.maskImage is None else self.runner.image(task.maskImage, "maskImage")
        if outpaint.extends:
            outpainted_size(image, outpaint, controls)
        prompt = controls.pop("prompt")
        if progress is not None and wants_progress(task):
            sink = progress  # bound here: the lambda below runs with the narrowed type
            controls["on_progress"] = lambda step: sink(progress_item(task, step))
            controls["previews"] = bool(task.includePreviews)
        result = self.runner.call(
            INFERENCE_FIELDS | STREAM_FIELDS,
            lambda client: client.inpaint(task.model, image, mask, prompt, **controls),
        )
        ext = EXTENSIONS[task.outputFormat]
        made_mask = task.maskImage is None  # a mask made on the server: the caller sees which
        uuids = self.runner.store(
            [(data, ext) for data in result.images] + ([(result.mask, "png")] if made_mask else [])
        )
        items = []
        for data, seed, image_uuid in zip(result.images, result.seeds, uuids, strict=False):
            item = {"taskType": task.taskType, "taskUUID": task.taskUUID}
            item.update(output_fields("image", image_uuid, data, ext, task.outputType, base_url))
            item["seed"] = seed
            if made_mask:
                item.update(
                    output_fields("maskImage", uuids[-1], result.mask, "png", task.outputType, base_url)
                )
            items.append(item)
        return items

    def image_masking(self, task: ImageMaskingTask, base_url: str) -> list[dict[str, Any]]:
        _one_of(task, ("model", "maskPrompt"))
        image = self.runner.image(task.inputImage, "inputImage")
        controls = runware_controls(MASK, task)
        result = self.runner.call(MASKING_FIELDS, lambda client: client.mask(image, **controls))
        mask = result.mask
        if task.outputFormat != "PNG":
            mask = _reencode(mask, task.outputFormat)
        ext = EXTENSIONS[task.outputFormat]
        (mask_uuid,) = self.runner.store([(mask, ext)])
        item: dict[str, Any] = {"taskType": task.taskType, "taskUUID": task.taskUUID}
        item.update(output_fields("maskImage", mask_uuid, mask, ext, task.outputType, base_url))
        item["detections"] = result.detections
        return [item]

    def image_background_removal(self, task: Any, base_url: str) -> list[dict[str, Any]]:
        settings = task.settings or task
        if settings.alphaMatting:
            raise TaskFailed(
                "alphaMatting: not supported here (no matting model is served); the cut-out's edges are "
                "the person segmentation's soft mask, or a hard one with postProcessMask",
                "alphaMatting",
            )
        data = self.runner.image(task.inputImage, "inputImage")
        controls = {"model": "person", "padding": 0, "blur": 0}
        result = self.runner.call(MASKING_FIELDS, lambda client: client.mask(data, **controls))
        alpha = decode_mask(result.mask)
        if settings.postProcessMask:
            alpha = (alpha >= 0.5).astype(np.float64)
        if settings.returnOnlyMask:
            mask_rgb = np.repeat(mask_pixels(alpha)[..., None], 3, axis=-1)
            output = encode_image(mask_rgb, task.outputFormat, task.outputQuality)
        else:
            background = tuple(settings.rgba) if settings.rgba else (0, 0, 0, 0)
            output = cut_out(decode_image(data), alpha, background, task.outputFormat, task.outputQuality)
        ext = EXTENSIONS[task.outputFormat]
        (image_uuid,) = self.runner.store([(output, ext)])
        item: dict[str, Any] = {"taskType": task.taskType, "taskUUID": task.taskUUID}
        item.update(output_fields("image", image_uuid, output, ext, task.outputType, base_url))
        return [item]

    def run(self, task: Any, base_url: str, progress: ProgressSink | None = None) -> list[dict[str, Any]]:
        """Run a task now; ``progress`` receives an inference task's progress items if it asked."""
        if task.taskType == "imageInference":
            return self.image_inference(task, base_url, progress)
        handler = {
            "imageUpload": self.image_upload,
            "imageMasking": self.image_masking,
            "imageBackgroundRemoval": self.image_background_removal,
            "removeBackground": self.image_background_removal,
        }[task.taskType]
        return handler(task, base_url)


def runware_controls(schema: RequestSchema, task: Any) -> dict[str, Any]:
    """The task's control fields by control name, images left out (they are resolved first). A dotted
    field (``outpaint.top``) is read from its object; an absent object gives its fields' defaults."""
    values = {}
    for control in schema:
        if control.runware is None or control.kind is bytes:
            continue
        value: Any = task
        for part in control.runware.split("."):
            value = getattr(value, part)
            if value is None:
                break
        values[control.name] = value
    return values


def outpainted_size(image: bytes, outpaint: Outpaint, controls: dict[str, Any]) -> None:
    """The hosted API's rule: with ``outpaint``, width and height (when sent) are the seed image's size
    plus the extensions, so the canvas is processed at its own size."""
    _, width, height = probe(image, "seedImage")
    try:
        canvas = outpaint.canvas_size(width, height)
    except InvalidInputError as exc:  # named as the task names it: outpaint.top
        field = INFERENCE_FIELDS[exc.field]
        raise TaskFailed(f"{field}: {exc.reason}", field) from None
    for field, given, want, sides in (
        ("width", controls["width"], canvas[0], "left + right"),
        ("height", controls["height"], canvas[1], "top + bottom"),
    ):
        if given is not None and given != want:
            raise TaskFailed(
                f"{field}: with outpaint it must be the seedImage's {field} plus outpaint's {sides}: "
                f"{want}, got {given}",
                field,
            )


def inputs_once(task: Any) -> None:
    """An image given both at the top (seedImage, maskImage) and in ``inputs`` is refused: which one
    was meant cannot be told. (The schema copies ``inputs`` up where the top is empty.)"""
    inputs = task.inputs
    if inputs is None:
        return
    pairs = (("image", "seedImage"), ("seedImage", "seedImage"), ("mask", "maskImage"))
    for source, target in pairs:
        value = getattr(inputs, source)
        if value is not None and getattr(task, target) != value:
            raise TaskFailed(
                f"inputs.{source}: {target} is given too; send the image once", f"inputs.{source}"
            )
    if inputs.image is not None and inputs.seedImage is not None:
        raise TaskFailed(
            "inputs.seedImage: inputs.image is given too; send the image once", "inputs.seedImage"
        )


def _one_of(task: Any, names: tuple[str, ...]) -> None:
    given = [name for name in names if getattr(task, name) is not None]
    if len(given) != 1:
        raise TaskFailed(
            f"{names[0]}: send exactly one of {', '.join(names)}"
            + (f"; got {', '.join(given)}" if given else ""),
            names[0],
        )


def _reencode(png: bytes, name: str) -> bytes:
    """The mask in the task's output format (image_masking answers PNG)."""
    return encode_image(decode_image(png, "mask"), name)
