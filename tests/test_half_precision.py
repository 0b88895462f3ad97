"""Half precision proven on the CPU: the gpu-torch runtime's own code path (its export, its saved
networks loaded as its Triton model loads them, the tensor runner on ``cpu``) in fp16 and bf16, for
every family, against diffusers' pipeline in that dtype on the same weights.

Our pipeline keeps the latents, the scheduler's arithmetic and the timesteps in fp32 and runs each
network in the precision the table gives it (docs/runtimes.md#precision); diffusers runs everything
in the dtype. The tolerances below are measured (docs/parity.md#half-precision), inside the mask (the
pixels outside are the input's once the postprocess step pastes them back, as in every runtime).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import diffusers_inpaint, irregular_mask, make_image
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.export.repository import ExportOptions, export_checkpoint
from triton_inpaint.networks.precision import bf16_native
from triton_inpaint.networks.runners import RunnerComponents
from triton_inpaint.networks.torch_networks import PRECISIONS, load_network, module_dtype, torch_runner
from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

pytestmark = pytest.mark.parity
NAME = "half"
PROMPT = "a red apple"
IMAGE, MASK = make_image(96, 64, seed=5), irregular_mask(96, 64)
STEPS, SEED = 10, 3
# Out of 255 inside the mask: (max, mean). Measured on these tiny models (96x64, 10 steps): fp16 max
# 1-2, mean <= 0.22; bf16 (8 bits of mantissa) max 5-14, mean <= 1.95. diffusers in the dtype is as far
# from its own fp32 image (fp16: 1-2, bf16: 5-12), and ours is no further from fp32 than diffusers is.
TOLERANCE = {"fp16": (3, 0.5), "bf16": (16, 2.5)}
CASES = [
    ("sd15-inpaint", "fp16"), ("sd15-inpaint", "bf16"), ("sd15-base", "fp16"), ("sd15-base", "bf16"),
    ("sdxl-inpaint", "fp16"), ("sdxl-inpaint", "bf16"), ("flux-fill", "bf16"),
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, tiny_base_checkpoint, sdxl_checkpoints, flux_checkpoint) -> dict[str, Path]:
    return {
        "sd15-inpaint": tiny_checkpoint, "sd15-base": tiny_base_checkpoint,
        "sdxl-inpaint": sdxl_checkpoints["sdxl-inpaint"], "flux-fill": flux_checkpoint,
    }  # fmt: skip


def _served_pipeline(repository: Path):
    """Our pipeline over the gpu-torch networks as the torch model loads them (torch_model.py)."""
    directory = repository / f"{NAME}_denoise" / "1"
    spec = PipelineSpec.load(directory)
    names = {role: f"{NAME}_{role}" for role in spec.network_tensors()}
    modules = {name: load_network(repository / name / "1", "cpu")[1] for name in names.values()}
    components = RunnerComponents.for_spec(torch_runner(modules, "cpu"), spec, names, "cpu")
    pipeline_class = FluxFillInpaintPipeline if spec.flux else SDInpaintPipeline
    return pipeline_class.from_directory(directory, components), spec, modules


def _reference(checkpoint: Path, spec: PipelineSpec, dtype: torch.dtype) -> np.ndarray:
    from diffusers import FluxFillPipeline, StableDiffusionInpaintPipeline, StableDiffusionXLInpaintPipeline

    if spec.flux:
        pipe, extra = FluxFillPipeline.from_pretrained(checkpoint, torch_dtype=dtype), {}
    elif spec.sdxl:
        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
            checkpoint, torch_dtype=dtype, add_watermarker=False
        )
        extra = {}
    else:
        pipe = StableDiffusionInpaintPipeline.from_pretrained(
            checkpoint, torch_dtype=dtype, safety_checker=None
        )
        extra = {}
    pipe.set_progress_bar_config(disable=True)
    config = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
    if spec.flux:
        extra["max_sequence_length"] = spec.max_sequence_length
    return diffusers_inpaint(
        pipe, config, IMAGE, MASK, PROMPT, None if spec.flux else "Euler a", steps=STEPS,
        strength=spec.default_strength, guidance=spec.default_guidance, seed=SEED, **extra,
    )  # fmt: skip


@pytest.mark.parametrize(("family", "precision"), CASES)
def test_gpu_torch_in_half_precision_equals_diffusers_in_that_dtype(family, precision, checkpoints, tmp_path):
    options = ExportOptions(
        runtime="gpu-torch", precision=precision, gpu_instances=False, stream=False, deep_cache_branches=()
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_checkpoint(checkpoints[family], NAME, tmp_path, options, log=lambda _: None)
    ours, spec, modules = _served_pipeline(tmp_path)
    # Each network is loaded in the table's precision: the force_upcast VAE (these tiny VAEs', SDXL's)
    # never in fp16, FLUX's transformer and T5 never in fp16.
    for role, served in spec.precisions.items():
        assert module_dtype(modules[f"{NAME}_{role}"]) == PRECISIONS[served], role
        if role.startswith("vae") and precision == "fp16" or bf16_native(spec.architecture, role):
            assert served != "fp16", role
    params = DenoiseParams.from_inputs(
        PROMPT, steps=STEPS, seed=SEED, width=96, height=64, strength=spec.default_strength,
        guidance_scale=spec.default_guidance, **({} if spec.flux else {"scheduler": "Euler a"}),
    )  # fmt: skip
    got = ours(IMAGE, MASK.astype(np.float32) / 255.0, params)[0][0]
    want = _reference(checkpoints[family], spec, PRECISIONS[precision])
    inside = MASK > 127
    diff = np.abs(got.astype(int) - want.astype(int))[inside]
    print(f"{family} {precision}: max {diff.max()}/255, mean {diff.mean():.3f} inside the mask vs diffusers")
    most, mean = TOLERANCE[precision]
    assert diff.max() <= most and diff.mean() <= mean
