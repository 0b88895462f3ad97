"""The hosted Runware API's task types (``POST /v1`` and its WebSocket), in pydantic.

The fields that carry controls are generated from the declarations in ``triton_inpaint.api.schema``;
what is written here is only what the task style adds: task envelopes, output options, the prompt's
length rule and ``__BLANK__``, the ``inputs`` form of an inference task's images, background removal's
settings.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from triton_inpaint.api import lora
from triton_inpaint.api.schema import INPAINT, MASK
from triton_inpaint.gateway.validation import PROMPT_LENGTH, MaskPrompt, Name, Text, between, control_fields

MAX_TASKS = 16  # tasks in one POST /v1 body or WebSocket message
BLANK_PROMPT = "__BLANK__"
# Tasks whose results can be delivered later (deliveryMethod "async"), and their image inputs, which are
# stored when the task is accepted so that it runs after a gateway restart and fetches no URL later.
ASYNC_IMAGE_FIELDS = {
    "imageInference": ("seedImage", "maskImage"),
    "imageMasking": ("inputImage",),
    "imageBackgroundRemoval": ("inputImage",),
    "removeBackground": ("inputImage",),
}


class _Task(BaseModel):
    model_config = ConfigDict(extra="forbid")

    taskType: str
    taskUUID: str = Field(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )
    includeCost: bool | None = None
    # sync: the answer carries the results. async: the answer acknowledges the task ("processing") and
    # the results come later: in their own WebSocket frame, or from a getResponse task.
    deliveryMethod: Literal["sync", "async"] | None = None


class _Output(BaseModel):
    outputType: Literal["URL", "base64Data", "dataURI"] = "URL"
    outputFormat: Literal[INPAINT["output_format"].choices] = INPAINT["output_format"].default  # type: ignore

    @field_validator("outputType", mode="before")
    @classmethod
    def _first_type(cls, value: Any) -> Any:
        # The reference allows a list of output types; one is returned: the first.
        return value[0] if isinstance(value, list) and value else value

    @field_validator("outputFormat", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# The Runware style's own rules for some control fields, beyond the declared type and range.
class Lora(BaseModel):
    """One item of the hosted API's ``lora`` list: an adapter the model serves, and its weight."""

    model_config = ConfigDict(extra="forbid")

    model: Name
    weight: Annotated[float, *between(lora.WEIGHT_RANGE)] = lora.DEFAULT_WEIGHT


RUNWARE_TYPES: dict[str, Any] = {
    "negativePrompt": Annotated[Text, Field(max_length=PROMPT_LENGTH[1])],
    "maskPrompt": MaskPrompt,
    "scheduler": Name,
    "lora": Annotated[list[Lora], Field(max_length=lora.MAX_PER_REQUEST)],
}


class InferenceInputs(BaseModel):
    """The hosted API's newer ``inputs`` form of an inference task's images."""

    model_config = ConfigDict(extra="forbid")

    image: Text | None = None  # the image to inpaint, as seedImage
    seedImage: Text | None = None  # the same, under its other name
    mask: Text | None = None  # as maskImage


class _InferenceTask(_Task, _Output):
    taskType: Literal["imageInference"]
    model: Name
    inputs: InferenceInputs | None = None
    # Beyond the reference: progress items (``status: "processing"``, ``progress`` in percent, as the
    # hosted API's getResponse answers) while the task denoises, over the WebSocket, as server-sent
    # events, and from getResponse for async tasks; with previews, each item carries small JPEGs of the
    # images so far. Off by default: older SDKs take any item of their task for a result.
    includeProgress: bool | None = None
    includePreviews: bool | None = None  # implies includeProgress

    @model_validator(mode="before")
    @classmethod
    def _from_inputs(cls, data: Any) -> Any:
        """``inputs: {image, mask}`` stands for seedImage and maskImage where those are not given (both
        given: the service refuses the task, naming the field)."""
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), dict):
            return data
        inputs, data = data["inputs"], dict(data)
        for source, target in (("image", "seedImage"), ("seedImage", "seedImage"), ("mask", "maskImage")):
            if inputs.get(source) is not None and data.get(target) is None:
                data[target] = inputs[source]
        return data

    @field_validator("positivePrompt", check_fields=False)
    @classmethod
    def _prompt(cls, value: str) -> str:
        if value == BLANK_PROMPT:
            return ""
        if not PROMPT_LENGTH[0] <= len(value) <= PROMPT_LENGTH[1]:
            low, high = PROMPT_LENGTH
            raise ValueError(f"must be {low}-{high} characters (or {BLANK_PROMPT}), got {len(value)}")
        return value


class _MaskingTask(_Task, _Output):
    taskType: Literal["imageMasking"]


# Beyond the reference, inference tasks carry every control of the Triton API: the mask made on the
# server instead of maskImage, the mask controls (the reference has them only for Eden-style tasks).
ImageInferenceTask = create_model(
    "ImageInferenceTask",
    __base__=_InferenceTask,
    **control_fields(INPAINT, "runware", RUNWARE_TYPES, skip=tuple(_Output.model_fields)),
)
ImageMaskingTask = create_model(
    "ImageMaskingTask",
    __base__=_MaskingTask,
    **control_fields(MASK, "runware", RUNWARE_TYPES, skip=tuple(_Output.model_fields)),
)


class ImageUploadTask(_Task):
    taskType: Literal["imageUpload"]
    image: Text


_BYTE = Annotated[int, annotated_types.Ge(0), annotated_types.Le(255)]


class BackgroundSettings(BaseModel):
    """The hosted API's background-removal settings (its SDKs send them flat or under ``settings``)."""

    model_config = ConfigDict(extra="forbid")

    returnOnlyMask: bool = False  # the subject's mask instead of the cut-out
    postProcessMask: bool = False  # a hard mask: the soft segmentation thresholded at one half
    alphaMatting: bool = False  # refused when true: no matting model is served
    alphaMattingErodeSize: _BYTE | None = None
    alphaMattingForegroundThreshold: _BYTE | None = None
    alphaMattingBackgroundThreshold: _BYTE | None = None
    rgba: Annotated[list[_BYTE], Field(min_length=4, max_length=4)] | None = None  # background; default clear


class ImageBackgroundRemovalTask(_Task, _Output, BackgroundSettings):
    """Cut the subject (people: the served person segmentation) out of an image."""

    taskType: Literal["imageBackgroundRemoval", "removeBackground"]
    inputImage: Text
    model: Name | None = None  # the hosted API's model id; the served person segmentation runs for any
    outputQuality: Annotated[int, *between(INPAINT["output_quality"].bounds)] = INPAINT[
        "output_quality"
    ].default
    settings: BackgroundSettings | None = None


class GetResponseTask(_Task):
    """The results of an async task so far, by that task's ``taskUUID``."""

    taskType: Literal["getResponse"]


TASK_TYPES: dict[str, type[_Task]] = {
    "imageInference": ImageInferenceTask,
    "imageMasking": ImageMaskingTask,
    "imageUpload": ImageUploadTask,
    "imageBackgroundRemoval": ImageBackgroundRemovalTask,
    "removeBackground": ImageBackgroundRemovalTask,  # the name the JS SDK sends
    "getResponse": GetResponseTask,
}
