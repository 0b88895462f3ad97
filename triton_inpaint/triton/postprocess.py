"""``inpaint_postprocess``: generated pixels composited into the original, encoded."""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.compositing import composite
from triton_inpaint.imaging import encode_image
from triton_inpaint.triton.io import respond_each, tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger

    def _handle(self, request: Any) -> list[Any]:
        generated = tensor(request, "generated_image", required=True)
        original = tensor(request, "original_image", required=True)
        mask = tensor(request, "soft_mask", required=True)
        encoded = encode_image(composite(original, generated, mask))
        return [pb_utils.Tensor("output_image", np.array([encoded], dtype=np.object_))]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
