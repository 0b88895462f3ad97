"""``text_segmentation``: an image and phrases -> per-phrase probability maps, over the CLIPSeg network.

The version directory holds CLIPSeg's processor (tokenizer and image settings) written by ``export
clipseg``; the network itself is the ``text_segmentation_network`` model, run over BLS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from triton_inpaint.masks.text_segmentation import TextSegmenter, check_image, check_phrases
from triton_inpaint.triton.io import bls_run, respond_each, tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger
        directory = Path(args["model_repository"]) / args["model_version"]
        self.segmenter = TextSegmenter.from_directory(directory, bls_run)

    def _handle(self, request: Any) -> list[Any]:
        image = check_image(tensor(request, "image", required=True))
        phrases = check_phrases(tensor(request, "prompt", required=True))
        return [pb_utils.Tensor("probability", self.segmenter(image, phrases))]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
