"""The task API's request schemas (Runware-style ``POST /v1`` and Eden-style async tasks), in pydantic.

The fields that carry controls are generated from the declarations in ``triton_inpaint.api.schema`` (their
Runware- and Eden-style names, types, ranges, choices and defaults); what is written here is only what
the task styles add: task envelopes, output options, prompt length rules, Eden's resolution and
creativity. Validation errors become one message per field that names the field and its allowed range.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from triton_inpaint.api.schema import INPAINT, MASK, Control, RequestSchema

BLANK_PROMPT = "__BLANK__"
PROMPT_LENGTH = (2, 3000)
MASK_PROMPT_LENGTH = 200
NAME_LENGTH = 200  # model and scheduler names
IGNORED_FIELDS = ("includeCost",)  # accepted for compatibility; it changes nothing here
# Tasks whose results can be delivered later (deliveryMethod "async"), and their image inputs, which are
# stored when the task is accepted so that it runs after a gateway restart and fetches no URL later.
ASYNC_IMAGE_FIELDS = {
    "imageInference": ("seedImage", "maskImage"),
    "imageMasking": ("inputImage",),
    "imageBackgroundRemoval": ("inputImage",),
    "removeBackground": ("inputImage",),
}


# JSON lets "\ud800" through as a lone surrogate, which no UTF-8 encoder (Triton's, ours) accepts.
_CONTROL = {chr(c) for c in (*range(0x00, 0x20), 0x7F)}
_TEXT_CONTROL = _CONTROL - {"\t", "\n", "\r"}


def _valid_unicode(value: str) -> str:
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode text (it holds a lone surrogate); send UTF-8") from None
    return value


def _text(value: str) -> str:
    """Free text (prompts, image strings): valid Unicode, no control characters but tab and newline."""
    _valid_unicode(value)
    if any(char in _TEXT_CONTROL for char in value):
        raise ValueError("must not contain control characters (NUL and the like); tabs and newlines are fine")
    return value


def _name(value: str) -> str:
    """Identifiers (model, scheduler): valid Unicode and no control characters at all."""
    _valid_unicode(value)
    if any(char in _CONTROL for char in value):
        raise ValueError("must not contain control characters (NUL, newlines and the like)")
    return value


Text = Annotated[str, AfterValidator(_text)]
Name = Annotated[str, Field(min_length=1, max_length=NAME_LENGTH), AfterValidator(_name)]


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


# The task styles' own rules for some control fields, beyond the declared type and range.
_MASK_PROMPT = Annotated[Text, Field(min_length=1, max_length=MASK_PROMPT_LENGTH)]
RUNWARE_TYPES: dict[str, Any] = {
    "negativePrompt": Annotated[Text, Field(max_length=PROMPT_LENGTH[1])],
    "maskPrompt": _MASK_PROMPT,
    "scheduler": Name,
}
EDEN_TYPES: dict[str, Any] = {
    "inpainting_prompt": Annotated[Text, Field(min_length=1, max_length=PROMPT_LENGTH[1])],
    "masking_prompt": _MASK_PROMPT,
}


def _between(bounds: tuple[float, float]) -> list[Any]:
    return [annotated_types.Ge(bounds[0]), annotated_types.Le(bounds[1])]


def _field_type(control: Control) -> Any:
    """A control's value as a task field: images are strings (UUID, URL, base64, data URI); closed
    choices are literals; numbers carry their range."""
    if control.kind in (bytes, str):
        if control.choices is not None and not control.open_choices:
            return Literal[control.choices]  # type: ignore[valid-type]
        return Text
    if control.bounds is not None:
        return Annotated[control.kind, *_between(control.bounds)]
    return control.kind


def control_fields(
    schema: RequestSchema, style: str, types: dict[str, Any], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """pydantic field definitions for the controls offered in ``style`` ("runware" or "eden")."""
    fields: dict[str, Any] = {}
    for control in schema:
        name = getattr(control, style)
        if name is None or name in skip:
            continue
        annotation = types.get(name, _field_type(control))
        default = control.default
        if style == "eden" and control.eden_default is not None:
            default = control.eden_default
        fields[name] = (annotation, ...) if control.required else (annotation | None, default)
    return fields


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
    outputQuality: Annotated[int, *_between(INPAINT["output_quality"].bounds)] = INPAINT[
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


# Eden-style async inpainting (``POST /v2/tasks/create`` with ``tool`` and ``args``).
EDEN_TOOL = "flux_inpainting"
RESOLUTION_RANGE = (512, 1536)
CREATIVITY_RANGE = (0.0, 1.1)


class _EdenArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Name | None = None  # which served model; the gateway's default when absent
    resolution: Annotated[int, *_between(RESOLUTION_RANGE)] = 1024  # the processing size's longer side
    creativity: Annotated[float, *_between(CREATIVITY_RANGE)] = 0.85  # strength, capped at 1


InpaintingArgs = create_model(
    "InpaintingArgs", __base__=_EdenArgs, **control_fields(INPAINT, "eden", EDEN_TYPES)
)


class EdenTaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: Literal["flux_inpainting"]
    args: InpaintingArgs


def field_bounds(model: type[BaseModel], name: str) -> tuple[Any, Any] | None:
    info = model.model_fields.get(name)
    if info is None:
        return None
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    if low is None and high is None:
        # Optional fields keep their constraints inside the Annotated member of the union.
        for member in getattr(info.annotation, "__args__", ()):
            for m in getattr(member, "__metadata__", ()):
                low = m.ge if isinstance(m, annotated_types.Ge) else low
                high = m.le if isinstance(m, annotated_types.Le) else high
    return None if low is None or high is None else (low, high)


def _owner(model: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The (nested) model that holds the field at ``path`` + leaf, e.g. InpaintingArgs for args.x."""
    for part in path:
        info = model.model_fields.get(part)
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


# pydantic's error types for a value that is not the field's kind of number, and what it must be.
_NOT_A_NUMBER = {
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
}


def field_errors(model: type[BaseModel], error: ValidationError) -> list[tuple[str, str]]:
    """(field, message) for each problem, the message naming the allowed values."""
    problems = []
    for item in error.errors(include_url=False):
        location = [str(part) for part in item["loc"] if not isinstance(part, int)]
        name = ".".join(location) or "body"
        leaf = location[-1] if location else ""
        owner = _owner(model, location[:-1])
        got = item.get("input")
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = ", ".join(n for n in owner.model_fields if n not in IGNORED_FIELDS)
            message = f"is not a field of this task; its fields are: {allowed}"
        elif kind == "missing":
            message = "is required"
        elif kind in ("greater_than_equal", "less_than_equal") and field_bounds(owner, leaf):
            low, high = field_bounds(owner, leaf)
            message = f"must be in [{low}, {high}], got {quoted(got)}"
        elif kind in _NOT_A_NUMBER:
            bounds = field_bounds(owner, leaf)
            within = f" in [{bounds[0]}, {bounds[1]}]" if bounds else ""
            message = f"must be {_NOT_A_NUMBER[kind]}{within}, got {quoted(got)}"
        elif kind == "literal_error":
            message = f"must be one of {item['ctx']['expected']}, got {quoted(got)}"
        elif kind == "value_error":
            message = str(item["ctx"]["error"])
        else:
            message = f"{item['msg'][:1].lower()}{item['msg'][1:]}, got {quoted(got)}"
        problems.append((name, message))
    return problems


def quoted(value: Any, limit: int = 80) -> str:
    """A caller's value as an error message may quote it: repr (escapes surrogates and controls), cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
