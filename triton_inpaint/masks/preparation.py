"""The preprocess step: the request's image and its mask (uploaded, or made by ``image_masking`` from a
masking model or a mask prompt) -> the decoded image and the soft mask denoise and postprocess use.

The Triton model ``inpaint_preprocess`` (``triton/preprocess.py``) only reads tensors, calls
:func:`preprocess` and writes tensors; every decision is here, testable without a server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from triton_inpaint.api.contract import MASKING_MODEL, Runner
from triton_inpaint.api.errors import InvalidInputError, ModelCallError, split_field
from triton_inpaint.api.imaging import Outpaint, decode_image, decode_mask, encode_mask
from triton_inpaint.api.schema import MASK_SOURCES
from triton_inpaint.masks.detectors import MaskingParams
from triton_inpaint.masks.outpainting import canvas_mask, extend_image
from triton_inpaint.masks.shaping import MaskParams, prepare_mask

# image_masking's field names -> this request's, for errors only image_masking can find.
_MASKING_FIELDS = {"model": "mask_model", "prompt": "mask_prompt", "image": "image"}


@dataclass(frozen=True)
class Preprocessed:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    soft_mask: np.ndarray  # float32 (H, W) in [0, 1], after invert, expand and blur
    mask_png: bytes  # the soft mask as PNG, returned to the caller


def mask_source(values: Mapping[str, Any], optional: bool = False) -> str | None:
    """Which of ``mask``, ``mask_model`` and ``mask_prompt`` the request uses: exactly one (empty
    counts as absent), or none where ``optional`` (outpainting masks the new border by itself)."""
    sources = [name for name in MASK_SOURCES if values.get(name)]
    if len(sources) == 1 or (optional and not sources):
        return sources[0] if sources else None
    choices = "mask (an image), mask_model or mask_prompt"
    if not sources:
        raise InvalidInputError("mask", f"send exactly one of {choices} (or outpaint the image)")
    raise InvalidInputError(
        "mask", f"send {'at most' if optional else 'exactly'} one of {choices}; got {', '.join(sources)}"
    )


def generated_mask(
    image: bytes, model: str | None, prompt: str | None, run: Runner, ready: Callable[[str], bool]
) -> bytes:
    """The mask ``image_masking`` makes for the model or prompt: exact (no padding, no blur), since
    the request's own mask_expand and mask_blur shape it afterwards. Errors name this request's fields."""
    fields = ("mask_model", "mask_prompt")
    params = MaskingParams.from_inputs(model, prompt, padding=0, blur=0, fields=fields)  # fail early
    if not ready(MASKING_MODEL):
        raise InvalidInputError(
            fields[0] if model is not None else fields[1],
            f"{MASKING_MODEL} is not served, so masks cannot be made from a model or prompt; export it "
            "with 'triton-inpaint export detectors --repository REPO' or send a mask image",
        )
    inputs = {
        "image": np.array([image], dtype=np.object_),
        "padding": np.array([0], dtype=np.int32),
        "blur": np.array([0], dtype=np.int32),
    }
    if params.prompt is not None:
        inputs["prompt"] = np.array([params.prompt.encode()], dtype=np.object_)
    else:
        inputs["model"] = np.array([params.model.encode()], dtype=np.object_)
    try:
        (mask,) = run(MASKING_MODEL, inputs, ["mask_image"])
    except ModelCallError as exc:
        parts = split_field(exc.message)
        if parts is not None and parts[0] in _MASKING_FIELDS:
            raise InvalidInputError(_MASKING_FIELDS[parts[0]], parts[1]) from None
        raise
    return bytes(mask.reshape(-1)[0])


def preprocess(values: Mapping[str, Any], run: Runner, ready: Callable[[str], bool]) -> Preprocessed:
    """``values``: the request's preprocess controls, checked (``INPAINT.check(..., PREPROCESS)``)."""
    params = MaskParams.from_inputs(values["mask_invert"], values["mask_expand"], values["mask_blur"])
    outpaint = Outpaint.from_values(values)
    source = mask_source(values, optional=outpaint.extends)
    image = decode_image(values["image"], "image")
    if outpaint.extends:
        outpaint.canvas_size(image.shape[1], image.shape[0])
    soft_mask = None if source is None else prepare_mask(_mask(values, source, image, run, ready), params)
    if outpaint.extends:
        soft_mask = canvas_mask(soft_mask, image.shape, outpaint)
        image = extend_image(image, outpaint)
    assert soft_mask is not None  # a source, or the outpainted border
    return Preprocessed(image, soft_mask, encode_mask(soft_mask))


def _mask(
    values: Mapping[str, Any], source: str, image: np.ndarray, run: Runner, ready: Callable[[str], bool]
) -> np.ndarray:
    """The request's mask, uploaded or made from a model or prompt, at the image's size."""
    if source == "mask":
        mask = decode_mask(values["mask"], "mask")
    else:
        model, prompt = values["mask_model"], values["mask_prompt"]
        mask = decode_mask(generated_mask(values["image"], model, prompt, run, ready), "mask")
        if not mask.any():
            raise InvalidInputError(
                source, f"{model or prompt!r} found nothing in the image, so there is nothing to inpaint"
            )
    if mask.shape != image.shape[:2]:
        raise InvalidInputError(
            "mask",
            f"size {mask.shape[1]}x{mask.shape[0]} does not match the image's "
            f"{image.shape[1]}x{image.shape[0]}; send a mask of the same width and height",
        )
    return mask
