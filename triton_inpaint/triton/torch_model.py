"""A Python-backend model running one network with torch (the ``gpu-torch`` runtime): the modules
saved in its version directory (:func:`triton_inpaint.networks.torch_networks.save_network`), on the
GPU Triton placed the instance on, in the precision export chose. Inputs and outputs travel over DLPack, so a
BLS caller on the same GPU passes device memory in and gets device memory back.

Parameters: ``cuda_graphs`` ("true") compiles the module with ``torch.compile(mode="reduce-overhead")``,
which records CUDA graphs per input shape (on GPU instances only); ``empty_cache`` ("true": the VAE and
text encoders) gives PyTorch's cached GPU memory back after each call, so that a network called once a
request does not keep its peak reserved in its own process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from triton_inpaint.networks.torch_networks import call_network, load_network
from triton_inpaint.triton.dlpack import finish_on, from_torch, input_tensor, instance_device
from triton_inpaint.triton.io import execute_batched, network_signature


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.input_names, self.output_names, self.batches = network_signature(config)
        self.device = instance_device(args)
        directory = Path(args["model_repository"]) / args["model_version"]
        role, self.module = load_network(directory, self.device)
        parameters = config.get("parameters", {})
        if parameters.get("cuda_graphs", {}).get("string_value") == "true" and self.device.type == "cuda":
            self.module = torch.compile(self.module, mode="reduce-overhead")
        empty = parameters.get("empty_cache", {}).get("string_value") == "true"
        self.empty_cache = empty and self.device.type == "cuda"
        pb_utils.Logger.log_info(f"{args['model_name']}: {role} with torch on {self.device}")

    def _run(self, batch: dict[str, torch.Tensor], names: list[str]) -> list[torch.Tensor]:
        outputs = call_network(self.module, batch, names, self.device)
        finish_on(self.device)
        if self.empty_cache:
            torch.cuda.empty_cache()  # the outputs stay allocated; only the call's freed blocks go back
        return outputs

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_batched(
            requests,
            self.input_names,
            self.output_names,
            self.batches,
            read=input_tensor,
            run=self._run,
            concat=torch.cat,
            output=from_torch,
        )
