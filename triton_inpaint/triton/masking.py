"""``image_masking``: an image and a masking model name -> the mask (PNG) and the detections (JSON).

BLS over the ``detector_*`` models (and ``text_segmentation`` for prompts no detector answers) rather
than an ensemble: which models run (one, or a detector then a landmark model per detection) depends on
the request, and ensembles cannot branch. The version
directory holds ``face_mesh.json``, the landmark index sets written by ``export detectors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.api.imaging import decode_image, encode_mask
from triton_inpaint.api.schema import MASK
from triton_inpaint.masks.detectors import FACE_MESH_FILE, Masker, MaskingParams
from triton_inpaint.triton.io import bls_run, model_ready, read_controls, respond_each


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger
        directory = Path(args["model_repository"]) / args["model_version"]
        self.masker = Masker(bls_run, json.loads((directory / FACE_MESH_FILE).read_text()), model_ready)

    def _handle(self, request: Any) -> list[Any]:
        values = read_controls(request, MASK)
        image = values.pop("image")
        params = MaskingParams.from_inputs(**values)  # scalar controls first: refused before decoding
        image = decode_image(MASK["image"].check(image), "image")
        mask, regions = self.masker(image, params)
        detections = json.dumps([region.as_dict() for region in regions])
        return [
            pb_utils.Tensor("mask_image", np.array([encode_mask(mask)], dtype=np.object_)),
            pb_utils.Tensor("detections", np.array([detections.encode()], dtype=np.object_)),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
