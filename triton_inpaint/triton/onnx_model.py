"""A Python-backend model holding one onnxruntime session (``model.onnx`` in its version directory, or
the graph export optimised beside it; threads from the ``ort_threads`` parameter, see
``triton_inpaint.ort_sessions``).

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

from triton_inpaint.ort_sessions import open_session
from triton_inpaint.triton.io import config_parameter


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.input_names = [entry["name"] for entry in config["input"]]
        # Graphs with a fixed batch of 1 (max_batch_size 0, e.g. the detectors) run one request a time.
        self.batches = config.get("max_batch_size", 0) > 0
        self.output_names = [entry["name"] for entry in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = open_session(path, config_parameter(config, "ort_threads", 0))

    def _inputs(self, request: Any) -> dict[str, np.ndarray]:
        return {
            name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [self._inputs(request) for request in requests]
        groups: dict[tuple, list[int]] = {}
        for index, feed in enumerate(feeds):
            key = tuple(feed[name].shape[1:] for name in self.input_names) if self.batches else (index,)
            groups.setdefault(key, []).append(index)
        responses: list[Any] = [None] * len(requests)
        for indices in groups.values():
            try:
                batch = {name: np.concatenate([feeds[i][name] for i in indices]) for name in self.input_names}
                outputs = self.session.run(self.output_names, batch)
                start = 0
                for i in indices:
                    size = feeds[i][self.input_names[0]].shape[0]
                    tensors = [
                        pb_utils.Tensor(name, np.ascontiguousarray(out[start : start + size]))
                        for name, out in zip(self.output_names, outputs, strict=True)
                    ]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start += size
            except Exception as exc:  # noqa: BLE001 - answer the group, keep serving
                for i in indices:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
        return responses
