"""``inpaint_preprocess``: encoded image and mask -> decoded image and the soft mask (invert/expand/blur).

Instead of a mask, a request may name a masking model or a mask prompt: the mask is then made by the
``image_masking`` model over BLS, inside the same request (see ``triton_inpaint.masks.preparation``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.api.schema import INPAINT, PREPROCESS
from triton_inpaint.masks.preparation import preprocess
from triton_inpaint.triton.io import bls_run, complete_config, model_ready, read_controls, respond_each


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config: Any) -> Any:
        return complete_config(config, PREPROCESS)

    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger

    def _handle(self, request: Any) -> list[Any]:
        values = INPAINT.check(read_controls(request, INPAINT.at(PREPROCESS)), PREPROCESS)
        result = preprocess(values, bls_run, model_ready)
        return [
            pb_utils.Tensor("original_image", result.image),
            pb_utils.Tensor("soft_mask", result.soft_mask),
            pb_utils.Tensor("output_mask", np.array([result.mask_png], dtype=np.object_)),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
