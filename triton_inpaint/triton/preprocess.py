"""``inpaint_preprocess``: encoded image and mask -> decoded image and the soft mask (invert/expand/blur)."""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from triton_inpaint.errors import InvalidInputError
from triton_inpaint.imaging import decode_image, decode_mask
from triton_inpaint.masks import MaskParams, prepare_mask
from triton_inpaint.triton.io import number, raw_bytes, respond_each


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
        image = decode_image(raw_bytes(request, "image", required=True), "image")
        mask = decode_mask(raw_bytes(request, "mask", required=True), "mask")
        if mask.shape != image.shape[:2]:
            raise InvalidInputError(
                "mask",
                f"size {mask.shape[1]}x{mask.shape[0]} does not match the image's "
                f"{image.shape[1]}x{image.shape[0]}; send a mask of the same width and height",
            )
        soft_mask = prepare_mask(mask, params)
        return [pb_utils.Tensor("original_image", image), pb_utils.Tensor("soft_mask", soft_mask)]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
