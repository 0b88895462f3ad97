"""``inpaint_postprocess``: each generated image composited into the original and encoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.api.imaging import encode_image
from triton_inpaint.api.schema import INPAINT, POSTPROCESS
from triton_inpaint.masks.compositing import composite
from triton_inpaint.triton.io import complete_config, read_controls, respond_each, tensor


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config: Any) -> Any:
        return complete_config(config, POSTPROCESS)

    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger

    def _handle(self, request: Any) -> list[Any]:
        # The output controls as declared, checked before any work (a dry run encodes nothing).
        encoding = INPAINT.check(read_controls(request, INPAINT.at(POSTPROCESS)), POSTPROCESS)
        generated = tensor(request, "generated_image", required=True)
        box = tuple(int(v) for v in tensor(request, "crop_box", required=True).reshape(-1))
        original = tensor(request, "original_image", required=True)
        mask = tensor(request, "soft_mask", required=True)
        encoded = [encode_image(composite(original, image, mask, box), **encoding) for image in generated]
        return [pb_utils.Tensor("output_image", np.array(encoded, dtype=np.object_))]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
