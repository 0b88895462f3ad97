"""What both task styles (Runware, Eden) share in pydantic: text and name rules, task fields generated
from the control declarations in ``triton_inpaint.api.schema`` (their names, types, ranges, choices
and defaults), and validation errors as one message per field that names the field and its allowed
range.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from triton_inpaint.api.schema import Control, RequestSchema

PROMPT_LENGTH = (2, 3000)
MASK_PROMPT_LENGTH = 200
NAME_LENGTH = 200  # model and scheduler names
IGNORED_FIELDS = ("includeCost",)  # accepted for compatibility; it changes nothing here


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


MaskPrompt = Annotated[Text, Field(min_length=1, max_length=MASK_PROMPT_LENGTH)]


def between(bounds: tuple[float, float]) -> list[Any]:
    return [annotated_types.Ge(bounds[0]), annotated_types.Le(bounds[1])]


def _field_type(control: Control) -> Any:
    """A control's value as a task field: images are strings (UUID, URL, base64, data URI); closed
    choices are literals; numbers carry their range."""
    if control.kind in (bytes, str):
        if control.choices is not None and not control.open_choices:
            return Literal[control.choices]  # type: ignore[valid-type]
        return Text
    if control.bounds is not None:
        return Annotated[control.kind, *between(control.bounds)]
    return control.kind


def control_fields(
    schema: RequestSchema, style: str, types: dict[str, Any], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """pydantic field definitions for the controls offered in ``style`` ("runware" or "eden").

    A dotted name (``outpaint.top``) is a field of an optional object (``outpaint``), whose model is
    made here from the controls that share its name.
    """
    fields: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for control in schema:
        name = getattr(control, style)
        if name is None or name in skip:
            continue
        annotation = types.get(name, _field_type(control))
        default = control.default
        if style == "eden" and control.eden_default is not None:
            default = control.eden_default
        field = (annotation, ...) if control.required else (annotation | None, default)
        owner, _, leaf = name.rpartition(".")
        (nested.setdefault(owner, {}) if owner else fields)[leaf or name] = field
    for owner, members in nested.items():
        title = owner[0].upper() + owner[1:]  # acceleratorOptions -> AcceleratorOptions
        model = create_model(title, __config__=ConfigDict(extra="forbid"), **members)
        fields[owner] = (model | None, None)
    return fields


def field_bounds(model: type[BaseModel], name: str) -> tuple[Any, Any] | None:
    """A number field's (min, max); ``a.b`` names field ``b`` of the object field ``a``."""
    *path, name = name.split(".")
    model = _owner(model, path)
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
        inner = _inner_model(getattr(info, "annotation", None))
        if inner is None:
            break
        model = inner
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The object model inside a field's type: ``X``, ``X | None``, ``list[X]``, ``Annotated[...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for member in typing.get_args(annotation):
        found = _inner_model(member)
        if found is not None:
            return found
    return None


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
        # named as the server names them: lora[0].weight
        name = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in item["loc"]).lstrip(".") or "body"
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
