"""Tensors between Python-backend models as torch tensors over DLPack, wherever they live: on a GPU
runtime a network's output stays in device memory from one BLS call to the next, with no host copy.

A module of its own because it imports torch, which the light pre/postprocess stubs never load.
"""

from __future__ import annotations

from typing import Any

import torch
import triton_python_backend_utils as pb_utils

from triton_inpaint.api.errors import ModelCallError


def to_torch(tensor: Any) -> torch.Tensor:
    """A Triton tensor (an input, or a BLS output) as a torch tensor sharing its memory, CPU or GPU."""
    return torch.from_dlpack(tensor.to_dlpack())


def from_torch(name: str, tensor: torch.Tensor) -> Any:
    """A torch tensor as a Triton output or BLS input named ``name``, sharing its memory."""
    return pb_utils.Tensor.from_dlpack(name, tensor.contiguous())


def input_tensor(request: Any, name: str) -> torch.Tensor:
    return to_torch(pb_utils.get_input_tensor_by_name(request, name))


def instance_device(args: dict[str, Any]) -> torch.device:
    """The device Triton placed this model instance on (``KIND_GPU`` instances get their GPU)."""
    if args.get("model_instance_kind") == "GPU":
        return torch.device("cuda", int(args.get("model_instance_device_id", 0)))
    return torch.device("cpu")


def finish_on(device: torch.device) -> None:
    """Wait for the work queued on ``device``'s current stream: Triton reads a GPU output's memory once
    ``execute`` returns, on streams of its own."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def tensor_bls_runner(device: torch.device) -> Any:
    """A tensor runner (see :class:`~triton_inpaint.networks.runners.RunnerComponents`) over BLS: torch
    tensors in, torch tensors out, asking Triton for outputs in ``device``'s memory."""
    memory_type = (
        pb_utils.TRITONSERVER_MEMORY_GPU if device.type == "cuda" else pb_utils.TRITONSERVER_MEMORY_CPU
    )
    preferred = pb_utils.PreferredMemory(memory_type, device.index or 0)

    def run(model: str, inputs: dict[str, torch.Tensor], outputs: list[str]) -> list[torch.Tensor]:
        finish_on(device)
        request = pb_utils.InferenceRequest(
            model_name=model,
            requested_output_names=outputs,
            inputs=[from_torch(name, value) for name, value in inputs.items()],
            preferred_memory=preferred,
        )
        response = request.exec()
        if response.has_error():
            raise ModelCallError(model, response.error().message())
        return [to_torch(pb_utils.get_output_tensor_by_name(response, output)) for output in outputs]

    return run
