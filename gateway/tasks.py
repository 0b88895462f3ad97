"""The task API's request schemas (Runware-style ``POST /v1`` and Eden-style async tasks), in pydantic.

Field names, ranges and defaults are the reference's; the ranges themselves come from the library's
parameter modules, the single place they are defined. Validation errors become one message per field
that names the field and its allowed range.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from triton_inpaint.imaging import QUALITY_RANGE
from triton_inpaint.masking import (
    CONFIDENCE_RANGE,
    DEFAULT_BLUR,
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_DETECTIONS,
    DEFAULT_PADDING,
    MASKING_MODELS,
    MAX_DETECTIONS_RANGE,
    PADDING_RANGE,
)
from triton_inpaint.masks import MASK_BLUR_RANGE, MASK_EXPAND_RANGE, MASK_MARGIN_RANGE
from triton_inpaint.params import (
    GUIDANCE_RANGE,
    NUM_IMAGES_RANGE,
    SEED_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    STRENGTH_RANGE,
)

BLANK_PROMPT = "__BLANK__"
PROMPT_LENGTH = (2, 3000)
MASK_PROMPT_LENGTH = 200
NAME_LENGTH = 200  # model and scheduler names
IGNORED_FIELDS = ("includeCost", "deliveryMethod")  # accepted for compatibility; they change nothing here


def _between(bounds: tuple[float, float]) -> list[Any]:
    return [annotated_types.Ge(bounds[0]), annotated_types.Le(bounds[1])]


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
    deliveryMethod: Literal["sync"] | None = None


class _Output(BaseModel):
    outputType: Literal["URL", "base64Data", "dataURI"] = "URL"
    outputFormat: Literal["PNG", "JPG", "WEBP"] = "PNG"

    @field_validator("outputType", mode="before")
    @classmethod
    def _first_type(cls, value: Any) -> Any:
        # The reference allows a list of output types; one is returned: the first.
        return value[0] if isinstance(value, list) and value else value

    @field_validator("outputFormat", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class ImageInferenceTask(_Task, _Output):
    taskType: Literal["imageInference"]
    positivePrompt: Text
    negativePrompt: Annotated[Text, Field(max_length=PROMPT_LENGTH[1])] | None = None
    seedImage: Text
    maskImage: Text | None = None
    # Extensions beyond the reference: the mask made on the server instead of maskImage, and the mask
    # controls of the Triton API (the reference has them only for Eden-style tasks).
    maskModel: Literal[MASKING_MODELS] | None = None  # type: ignore[valid-type]
    maskPrompt: Annotated[Text, Field(min_length=1, max_length=MASK_PROMPT_LENGTH)] | None = None
    maskInvert: bool | None = None
    maskExpand: Annotated[int, *_between(MASK_EXPAND_RANGE)] | None = None
    maskBlur: Annotated[int, *_between(MASK_BLUR_RANGE)] | None = None
    model: Name
    maskMargin: Annotated[int, *_between(MASK_MARGIN_RANGE)] | None = None
    strength: Annotated[float, *_between(STRENGTH_RANGE)] | None = None
    steps: Annotated[int, *_between(STEPS_RANGE)] | None = None
    CFGScale: Annotated[float, *_between(GUIDANCE_RANGE)] | None = None
    scheduler: Name | None = None
    width: Annotated[int, *_between(SIZE_RANGE)] | None = None
    height: Annotated[int, *_between(SIZE_RANGE)] | None = None
    seed: Annotated[int, *_between(SEED_RANGE)] | None = None
    numberResults: Annotated[int, *_between(NUM_IMAGES_RANGE)] = 1
    outputQuality: Annotated[int, *_between(QUALITY_RANGE)] | None = None

    @field_validator("positivePrompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        if value == BLANK_PROMPT:
            return ""
        if not PROMPT_LENGTH[0] <= len(value) <= PROMPT_LENGTH[1]:
            low, high = PROMPT_LENGTH
            raise ValueError(f"must be {low}-{high} characters (or {BLANK_PROMPT}), got {len(value)}")
        return value


class ImageMaskingTask(_Task, _Output):
    taskType: Literal["imageMasking"]
    inputImage: Text
    model: Literal[MASKING_MODELS] | None = None  # type: ignore[valid-type]
    maskPrompt: Annotated[Text, Field(min_length=1, max_length=MASK_PROMPT_LENGTH)] | None = None  # or this
    confidence: Annotated[float, *_between(CONFIDENCE_RANGE)] = DEFAULT_CONFIDENCE
    maxDetections: Annotated[int, *_between(MAX_DETECTIONS_RANGE)] = DEFAULT_MAX_DETECTIONS
    maskPadding: Annotated[int, *_between(PADDING_RANGE)] = DEFAULT_PADDING
    maskBlur: Annotated[int, *_between(MASK_BLUR_RANGE)] = DEFAULT_BLUR
    invert: bool = False


class ImageUploadTask(_Task):
    taskType: Literal["imageUpload"]
    image: Text


TASK_TYPES: dict[str, type[_Task]] = {
    "imageInference": ImageInferenceTask,
    "imageMasking": ImageMaskingTask,
    "imageUpload": ImageUploadTask,
}


# Eden-style async inpainting (``POST /v2/tasks/create`` with ``tool`` and ``args``).
EDEN_TOOL = "flux_inpainting"
RESOLUTION_RANGE = (512, 1536)
CREATIVITY_RANGE = (0.0, 1.1)


class InpaintingArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: Text
    inpainting_prompt: Annotated[Text, Field(min_length=1, max_length=PROMPT_LENGTH[1])]
    masking_prompt: Annotated[Text, Field(min_length=1, max_length=MASK_PROMPT_LENGTH)] | None = None
    mask: Text | None = None
    model: Name | None = None  # which served model; the gateway's default when absent
    resolution: Annotated[int, *_between(RESOLUTION_RANGE)] = 1024
    creativity: Annotated[float, *_between(CREATIVITY_RANGE)] = 0.85
    mask_blur: Annotated[int, *_between(MASK_BLUR_RANGE)] = 24
    mask_expand: Annotated[int, *_between(MASK_EXPAND_RANGE)] = 12
    n_samples: Annotated[int, *_between(NUM_IMAGES_RANGE)] = 1
    seed: Annotated[int, *_between(SEED_RANGE)] | None = None


class EdenTaskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: Literal["flux_inpainting"]
    args: InpaintingArgs


def _bounds(model: type[BaseModel], name: str) -> tuple[Any, Any] | None:
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
        elif kind in ("greater_than_equal", "less_than_equal") and _bounds(owner, leaf):
            low, high = _bounds(owner, leaf)
            message = f"must be in [{low}, {high}], got {quoted(got)}"
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
