"""``<NAME>_denoise``: the BLS loop that runs one checkpoint's networks as Triton models.

The version directory holds ``pipeline.json``, ``tokenizer/`` (and ``tokenizer_2/``) and ``scheduler/``
written by the export step; the config's ``submodel_prefix`` parameter names the network models
(``<prefix>_unet`` or ``<prefix>_transformer``, ...). ``pipeline.json`` says which loop runs them:
Stable Diffusion (1.5/2, SDXL) or FLUX Fill.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_inpaint.components import RunnerComponents, network_tensors
from triton_inpaint.flux_fill import FluxFillInpaintPipeline
from triton_inpaint.memory import gib, request_budget
from triton_inpaint.params import DenoiseParams
from triton_inpaint.pipeline_spec import PipelineSpec
from triton_inpaint.schema import DENOISE, INPAINT
from triton_inpaint.sd_inpaint import SDInpaintPipeline
from triton_inpaint.triton.io import bls_run, read_controls, respond_each, tensor


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.logger = pb_utils.Logger
        config = json.loads(args["model_config"])
        prefix = config["parameters"]["submodel_prefix"]["string_value"]
        directory = Path(args["model_repository"]) / args["model_version"]
        spec = PipelineSpec.load(directory)
        roles = network_tensors(spec.architecture)
        components = RunnerComponents(
            bls_run, {role: f"{prefix}_{role}" for role in roles}, architecture=spec.architecture
        )
        pipeline_class = FluxFillInpaintPipeline if spec.flux else SDInpaintPipeline
        self.pipeline = pipeline_class.from_directory(directory, components)
        # Requests run in parallel on this model's instances: each gets its share of the budget.
        instances = sum(group.get("count", 1) for group in config.get("instance_group", [])) or 1
        self.pipeline.memory_budget = request_budget(instances)
        self.logger.log_info(
            f"{args['model_name']}: {gib(self.pipeline.memory_budget)} of memory per request "
            f"({instances} at once)"
        )

    def _handle(self, request: Any) -> list[Any]:
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
        if params.dry_run:  # every check passed: answer with no images
            plan = self.pipeline.plan(mask, params)
            generated = np.zeros((0, plan.height, plan.width, 3), np.uint8)
            box = plan.crop or (0, 0, mask.shape[1], mask.shape[0])
        else:
            generated, box = self.pipeline(image, mask, params)
        return [
            pb_utils.Tensor("generated_image", generated),
            pb_utils.Tensor("crop_box", np.array(box, dtype=np.int32)),
            pb_utils.Tensor("output_seed", np.array(params.seeds, dtype=np.int64)),
        ]

    def execute(self, requests: list[Any]) -> list[Any]:
        return respond_each(requests, self._handle, self.logger)
