"""``text_segmentation``: an image and phrases -> per-phrase probability maps, over the CLIPSeg network.

The version directory holds CLIPSeg's processor (tokenizer and image settings) written by ``export
clipseg``; the network itself is the ``text_segmentation_network`` model, run over BLS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.errors import InvalidInputError
from triton_inpaint.masking import MAX_PROMPT_PHRASES
from triton_inpaint.text_segmentation import TextSegmenter
from triton_inpaint.triton.io import bls_run, respond_each, tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger
        directory = Path(args["model_repository"]) / args["model_version"]
        self.segmenter = TextSegmenter.from_directory(directory, bls_run)

    def _handle(self, request: Any) -> list[Any]:
        image = tensor(request, "image", required=True)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InvalidInputError(
                "image", f"must be uint8 (height, width, 3), got {image.dtype} {image.shape}"
            )
        phrases = [
            bytes(p).decode("utf-8", "replace").strip() for p in tensor(request, "prompt", required=True)
        ]
        if not phrases or not all(phrases) or len(phrases) > MAX_PROMPT_PHRASES:
            raise InvalidInputError("prompt", f"send 1-{MAX_PROMPT_PHRASES} non-empty phrases")
        return [pb_utils.Tensor("probability", self.segmenter(image, phrases))]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
