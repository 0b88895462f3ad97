"""What a form needs to ask for an inpainting task: the served models with their own defaults, and every
``imageInference`` control with its type, range, choices and hint, as the task schema declares them.

``GET /v1/models`` answers this; the web page builds its controls from it and checks values with the
same rules (and the same messages) as the task schema, so nothing about a control is written twice.
"""

from __future__ import annotations

from typing import Any

import annotated_types

from triton_inpaint.api import lora
from triton_inpaint.api.contract import MASKING_MODEL, TEXT_SEGMENTATION_MODEL
from triton_inpaint.api.schema import INPAINT, MASKING_MODELS
from triton_inpaint.client import InpaintClient, ModelInfo
from triton_inpaint.gateway.runware.protocol import BLANK_PROMPT, ImageInferenceTask
from triton_inpaint.gateway.validation import PROMPT_LENGTH, field_bounds

_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}
# Filled by the page's own panels rather than as form fields: the images and the server-made mask.
_NOT_FORM_FIELDS = ("seedImage", "maskImage", "maskModel", "maskPrompt")


def _lengths(name: str) -> tuple[int | None, int | None]:
    """A string field's (min, max) length from its pydantic metadata (also inside Optional[...])."""
    info = ImageInferenceTask.model_fields[name]
    metadata = list(info.metadata)
    for member in getattr(info.annotation, "__args__", ()):
        for item in getattr(member, "__metadata__", ()):
            # Field(...) inside Annotated keeps its constraints in its own metadata.
            metadata.extend(getattr(item, "metadata", [item]))
    low = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, annotated_types.MaxLen)), None)
    return low, high


def inference_controls() -> list[dict[str, Any]]:
    """Each control an ``imageInference`` task takes (by its task field name), in the schema's order.

    ``range`` is the bounds exactly as refusals print them (``[0.0, 1.0]``), so a client can word its
    own refusal the way the gateway would."""
    controls = []
    for control in INPAINT:
        name = control.runware
        if name is None or name in _NOT_FORM_FIELDS:
            continue
        entry: dict[str, Any] = {
            "name": name,
            "type": _TYPES[control.kind],
            "description": control.description,
            "required": control.required,
            "default": control.default,
            "defaultText": control.shown_default,
        }
        if name == "lora":  # a list of {model, weight}; which models: each model's "lora"
            low, high = lora.WEIGHT_RANGE
            entry.update(
                type="lora",
                maxItems=lora.MAX_PER_REQUEST,
                weight={"min": low, "max": high, "default": lora.DEFAULT_WEIGHT, "range": f"[{low}, {high}]"},
            )
            controls.append(entry)
            continue
        bounds = field_bounds(ImageInferenceTask, name)
        if bounds is not None:
            entry.update(min=bounds[0], max=bounds[1], range=f"[{bounds[0]}, {bounds[1]}]")
        if control.multiple_of:
            entry["multipleOf"] = control.multiple_of
        if control.choices is not None:
            entry.update(choices=list(control.choices), openChoices=control.open_choices)
        if control.kind is str and control.choices is None:
            low, high = _lengths(name)
            if name == "positivePrompt":  # its rule is a validator, not field metadata
                low, high = PROMPT_LENGTH
                entry["blank"] = BLANK_PROMPT
            entry.update({key: value for key, value in (("minLength", low), ("maxLength", high)) if value})
        controls.append(entry)
    return controls


def model_entry(info: ModelInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "aliases": list(info.aliases),
        "lora": list(info.adapters),  # the LoRA adapters its requests may name
        "progress": info.progress,  # its tasks may ask includeProgress / includePreviews
        # The step caches its tasks may ask for in acceleratorOptions (and through acceleration presets).
        "acceleration": {
            "deepCache": bool(info.deep_cache_branches),
            "deepCacheBranchIds": list(info.deep_cache_branches),
            "fbcache": info.first_block_cache,
            "teaCache": False,
        },
        "family": info.family,
        "nativeResolution": info.native_resolution,
        "defaults": {
            "steps": info.default_steps,
            "CFGScale": info.default_guidance,
            "strength": info.default_strength,
            "scheduler": info.default_scheduler,
        },
    }


def catalog(client: InpaintClient) -> dict[str, Any]:
    """The served models, the inference controls and what automatic masks can be made."""
    return {
        "models": [model_entry(info) for info in client.list_models()],
        "controls": inference_controls(),
        "masking": {
            "served": client.model_ready(MASKING_MODEL),
            "detectors": list(MASKING_MODELS),
            # Any phrase needs the text segmentation model; without it only detector words work.
            "anyPhrase": client.model_ready(TEXT_SEGMENTATION_MODEL),
        },
    }
