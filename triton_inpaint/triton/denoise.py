"""``<NAME>_denoise``: the BLS loop that runs one checkpoint's networks as Triton models.

The version directory holds ``pipeline.json``, ``tokenizer/`` (and ``tokenizer_2/``) and ``scheduler/``
written by the export step; the config's ``submodel_prefix`` parameter names the network models
(``<prefix>_unet`` or ``<prefix>_transformer``, ...). ``pipeline.json`` says which loop runs them:
Stable Diffusion (1.5/2, SDXL) or FLUX Fill.

Requests are batched in flight (:mod:`triton_inpaint.pipelines.batching`): ``execute`` starts each request's
job (prompt, image and latents prepared) and returns; a worker thread advances every job in flight
with one denoiser call per tick, and each request is answered through its response sender when its
images are decoded. ``execute`` waits for a free slot (the ``max_inflight`` parameter) before it
starts a request, so requests beyond that wait in Triton's queue, where queue-time metrics see them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.api.contract import DEFAULT_MAX_INFLIGHT, NETWORK_MAX_BATCH
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.api.schema import DENOISE, INPAINT
from triton_inpaint.api.sizes import BUDGET_ENV, gib
from triton_inpaint.networks.runners import RunnerComponents
from triton_inpaint.pipelines.batching import InflightBatcher, ledger_path, open_ledger
from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline
from triton_inpaint.pipelines.memory import device_budget, host_budget
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec
from triton_inpaint.triton.io import (
    bls_run,
    config_parameter,
    error_response,
    read_controls,
    send_final,
    tensor,
)
from triton_inpaint.triton.progress import denoise_outputs, passed_on, progress_reporter, read_stream


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        prefix = config["parameters"]["submodel_prefix"]["string_value"]
        directory = Path(args["model_repository"]) / args["model_version"]
        spec = PipelineSpec.load(directory)
        names = {role: f"{prefix}_{role}" for role in spec.network_tensors()}
        device = None
        if config_parameter(config, "device_tensors", 0):
            # GPU runtimes: latents and embeddings stay on this instance's device between BLS calls.
            from triton_inpaint.triton.dlpack import instance_device, tensor_bls_runner

            device = instance_device(args)
            components = RunnerComponents.for_spec(tensor_bls_runner(device), spec, names, device)
        else:
            components = RunnerComponents.for_spec(bls_run, spec, names)
        pipeline_class = FluxFillInpaintPipeline if spec.flux else SDInpaintPipeline
        self.pipeline = pipeline_class.from_directory(directory, components)
        max_inflight = config_parameter(config, "max_inflight", DEFAULT_MAX_INFLIGHT)
        max_rows = config_parameter(config, "denoiser_max_batch", NETWORK_MAX_BATCH)
        self.pipeline.max_side = config_parameter(config, "max_side", 0) or None
        # The decoupled twin in inpaint_<NAME>_stream: progress responses, and what postprocess reads.
        self.stream = bool(config_parameter(config, "stream", 0))
        # The plain model and its streaming twin (each its own process) keep one memory budget.
        ledger = open_ledger(ledger_path(prefix, device), self.logger.log_warn)
        self.batcher = InflightBatcher(max_rows, max_inflight, log=self.logger.log_error, ledger=ledger)
        self.name = args["model_name"]
        # The memory budget is what is left once every model is loaded: read at the first request, when
        # Triton has loaded them all (on this instance's GPU for the GPU runtimes).
        self.budget_device = device
        self.logger.log_info(
            f"{self.name}: up to {max_inflight} requests in flight on {components.device}, batched up to "
            f"{max_rows} denoiser rows a call"
        )

    def _read_budget(self) -> None:
        on_gpu = self.budget_device is not None and self.budget_device.type == "cuda"
        budget = device_budget(self.budget_device) if on_gpu else host_budget()
        self.pipeline.memory_budget = self.batcher.admission.budget = budget
        self.budget_device = None
        self.logger.log_info(
            f"{self.name}: {gib(budget)} of {'GPU' if on_gpu else 'host'} memory for the networks' work "
            f"(${BUDGET_ENV} sets it)"
        )

    def _plan(self, request: Any) -> tuple[DenoiseParams, np.ndarray, np.ndarray, Any]:
        """The request's params, image, mask and plan: every refusal that needs no network."""
        spec = self.pipeline.spec
        params = DenoiseParams.from_inputs(
            **read_controls(request, INPAINT.at(DENOISE)),
            default_steps=spec.default_steps,
            default_guidance=spec.default_guidance,
            default_strength=spec.default_strength,
            default_scheduler=spec.default_scheduler,
        )
        image = tensor(request, "original_image", required=True)
        mask = tensor(request, "soft_mask", required=True)
        return params, image, mask, self.pipeline.plan(mask, params)

    def execute(self, requests: list[Any]) -> None:
        if self.pipeline.memory_budget is None:
            self._read_budget()
        for request in requests:
            try:
                params, image, mask, plan = self._plan(request)
                kept = passed_on(request) if self.stream else None
                stream = read_stream(request, self.pipeline.spec) if self.stream else None
            except Exception as exc:  # noqa: BLE001 - this request's refusal; the others go on
                send_final(request, error_response(exc, request, self.logger))
                continue
            if params.dry_run:  # every check passed: answer with no images
                generated = np.zeros((0, plan.height, plan.width, 3), np.uint8)
                box = plan.crop or (0, 0, mask.shape[1], mask.shape[0])
                outputs = denoise_outputs(generated, box, params, kept, done(plan))
                send_final(request, pb_utils.InferenceResponse(output_tensors=outputs))
                continue
            self.batcher.acquire(plan.need.bytes)  # waits for a slot and for the memory it needs
            try:
                started = self.pipeline.start(image, mask, params, plan)
            except Exception as exc:  # noqa: BLE001
                self.batcher.release(plan.need.bytes)
                send_final(request, error_response(exc, request, self.logger))
                continue
            progress = None if stream is None else progress_reporter(request, params, kept, stream)
            self.batcher.submit(started, self._answer(request, params, kept, plan), plan.need.bytes, progress)
        return None

    def _answer(
        self, request: Any, params: DenoiseParams, kept: dict[str, np.ndarray] | None, plan: Any
    ) -> Any:
        def answer(result: tuple[np.ndarray, Any] | None, error: BaseException | None) -> None:
            if error is not None:
                send_final(request, error_response(error, request, self.logger))
                return
            generated, box = result
            outputs = denoise_outputs(generated, box, params, kept, done(plan))
            send_final(request, pb_utils.InferenceResponse(output_tensors=outputs))

        return answer

    def finalize(self) -> None:
        self.batcher.close()


def done(plan: Any) -> tuple[int, int]:
    """A result's progress: every step taken."""
    return len(plan.timesteps), len(plan.timesteps)
