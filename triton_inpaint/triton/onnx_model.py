"""A Python-backend model holding one onnxruntime session (``model.onnx`` in its version directory, or
the graph export optimised beside it; threads from the ``ort_threads`` parameter, see
``triton_inpaint.networks.ort_sessions``).

This is how ONNX networks run on the CPU bundle of tritonserver, which has no onnxruntime backend.
Requests that the dynamic batcher groups are concatenated along the batch axis and run as one call
when their other dimensions agree, which is the point of batching the UNet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.networks.ort_sessions import open_session
from triton_inpaint.triton.io import config_parameter, execute_batched, network_signature


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.input_names, self.output_names, self.batches = network_signature(config)
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = open_session(path, config_parameter(config, "ort_threads", 0))

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_batched(
            requests,
            self.input_names,
            self.output_names,
            self.batches,
            read=lambda request, name: pb_utils.get_input_tensor_by_name(request, name).as_numpy(),
            run=lambda batch, names: self.session.run(names, batch),
            concat=np.concatenate,
            output=lambda name, array: pb_utils.Tensor(name, np.ascontiguousarray(array)),
        )
