"""``inpaint_preprocess``: encoded image and mask -> decoded image and the soft mask (invert/expand/blur).

Instead of a mask, a request may name a masking model or a mask prompt: the mask is then made by the
``image_masking`` model over BLS, inside the same request, and used like an uploaded one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.contract import MASKING_MODEL
from triton_inpaint.errors import InvalidInputError, split_field
from triton_inpaint.imaging import decode_image, decode_mask, encode_mask
from triton_inpaint.masking import MaskingParams
from triton_inpaint.masks import MaskParams, prepare_mask
from triton_inpaint.triton.io import BlsError, bls_run, model_ready, number, raw_bytes, respond_each, text

MASK_FIELDS = ("mask_model", "mask_prompt")
# image_masking's field names -> this request's, for errors only image_masking can find.
_MASKING_FIELDS = {"model": "mask_model", "prompt": "mask_prompt", "image": "image"}


def _generated_mask(image_bytes: bytes, model: str | None, prompt: str | None) -> bytes:
    """The mask ``image_masking`` makes for the model or prompt: exact (no padding, no blur), since
    this request's own mask_expand and mask_blur shape it afterwards."""
    params = MaskingParams.from_inputs(model, prompt, padding=0, blur=0, fields=MASK_FIELDS)  # fail early
    if not model_ready(MASKING_MODEL):
        raise InvalidInputError(
            MASK_FIELDS[0] if model is not None else MASK_FIELDS[1],
            f"{MASKING_MODEL} is not served, so masks cannot be made from a model or prompt; export it "
            "with 'triton-inpaint export detectors --repository REPO' or send a mask image",
        )
    inputs = {
        "image": np.array([image_bytes], dtype=np.object_),
        "padding": np.array([0], dtype=np.int32),
        "blur": np.array([0], dtype=np.int32),
    }
    if params.prompt is not None:
        inputs["prompt"] = np.array([params.prompt.encode()], dtype=np.object_)
    else:
        inputs["model"] = np.array([params.model.encode()], dtype=np.object_)
    try:
        (mask,) = bls_run(MASKING_MODEL, inputs, ["mask_image"])
    except BlsError as exc:
        parts = split_field(exc.message)
        if parts is not None and parts[0] in _MASKING_FIELDS:
            raise InvalidInputError(_MASKING_FIELDS[parts[0]], parts[1]) from None
        raise
    return bytes(mask.reshape(-1)[0])


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger

    def _handle(self, request: Any) -> list[Any]:
        # Scalar controls first: a bad value is refused before any decoding work.
        params = MaskParams.from_inputs(
            invert=number(request, "mask_invert"),
            expand=number(request, "mask_expand"),
            blur=number(request, "mask_blur"),
        )
        image_bytes = raw_bytes(request, "image", required=True)
        mask_bytes = raw_bytes(request, "mask")
        model, prompt = text(request, "mask_model"), text(request, "mask_prompt")
        given = {"mask": mask_bytes, MASK_FIELDS[0]: model, MASK_FIELDS[1]: prompt}
        sources = [name for name, value in given.items() if value]
        if len(sources) != 1:
            raise InvalidInputError(
                "mask",
                "send exactly one of mask (an image), mask_model or mask_prompt"
                + (f"; got {', '.join(sources)}" if sources else ""),
            )
        image = decode_image(image_bytes, "image")
        if mask_bytes is None:
            mask_bytes = _generated_mask(image_bytes, model, prompt)
            mask = decode_mask(mask_bytes, "mask")
            if not mask.any():
                raise InvalidInputError(
                    sources[0],
                    f"{model or prompt!r} found nothing in the image, so there is nothing to inpaint",
                )
        else:
            mask = decode_mask(mask_bytes, "mask")
        if mask.shape != image.shape[:2]:
            raise InvalidInputError(
                "mask",
                f"size {mask.shape[1]}x{mask.shape[0]} does not match the image's "
                f"{image.shape[1]}x{image.shape[0]}; send a mask of the same width and height",
            )
        soft_mask = prepare_mask(mask, params)
        return [
            pb_utils.Tensor("original_image", image),
            pb_utils.Tensor("soft_mask", soft_mask),
            pb_utils.Tensor("output_mask", np.array([encode_mask(soft_mask)], dtype=np.object_)),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
