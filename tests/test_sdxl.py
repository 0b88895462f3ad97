"""SDXL checkpoints (two text encoders, pooled embeddings, size/crop time ids), inpainting and base."""

import json

import numpy as np
import pytest

from tests.conftest import SDXL_MODELS
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_inpaint,
    diffusers_soft_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.client import InpaintClient
from triton_inpaint.networks.runners import TorchComponents
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

PROMPT = "a red umbrella"
FAMILIES = list(SDXL_MODELS)


@pytest.fixture(scope="module")
def references(sdxl_checkpoints):
    from diffusers import StableDiffusionXLInpaintPipeline

    loaded = {}
    for family, checkpoint in sdxl_checkpoints.items():
        pipe = StableDiffusionXLInpaintPipeline.from_pretrained(checkpoint, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        config = json.loads((checkpoint / "scheduler" / "scheduler_config.json").read_text())
        loaded[family] = (pipe, config)
    return loaded


def reference(pipe, config, image, mask, scheduler, strength, negative_prompt):
    return diffusers_inpaint(
        pipe,
        config,
        image,
        mask,
        PROMPT,
        scheduler,
        steps=10,
        strength=strength,
        guidance=5.0,
        seed=8,
        negative_prompt=negative_prompt,
    )


CASES = [("Euler", 1.0, None), ("DDIM", 0.6, None), ("DPM++ 2M", 1.0, "blurry"), ("Euler a", 0.7, None)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("scheduler", "strength", "negative_prompt"), CASES)
def test_pipeline_logic_matches_diffusers(references, family, scheduler, strength, negative_prompt):
    pipe, config = references[family]
    spec = PipelineSpec.from_diffusers(pipe)
    assert spec.sdxl and spec.force_zeros_for_empty_prompt
    ours = SDInpaintPipeline(TorchComponents(pipe), pipe.tokenizer, config, spec, pipe.tokenizer_2)
    image, mask = make_image(96, 64), irregular_mask(96, 64)
    params = DenoiseParams.from_inputs(
        PROMPT,
        negative_prompt=negative_prompt,
        steps=10,
        strength=strength,
        guidance_scale=5.0,
        seed=8,
        scheduler=scheduler,
        width=96,
        height=64,
    )
    got = ours(image, mask / 255.0, params)[0][0]
    want = reference(pipe, config, image, mask, scheduler, strength, negative_prompt)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"{family} torch modules {scheduler} strength={strength}: max {diff.max()}/255")
    assert diff.max() <= 1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("scheduler", "strength"), [("Euler a", 1.0), ("DPM++ 2M", 0.7)])
def test_soft_inpainting_matches_differential_diffusion_on_diffusers(references, family, scheduler, strength):
    """SDXL inpainting and base UNets, soft inpainting on a feathered mask, against diffusers' SDXL
    pipeline with differential diffusion's per-step rule (tests/helpers.py)."""
    from PIL import Image, ImageFilter

    pipe, config = references[family]
    ours = SDInpaintPipeline(TorchComponents(pipe), pipe.tokenizer, config, PipelineSpec.from_diffusers(pipe),
                             pipe.tokenizer_2)  # fmt: skip
    image = make_image(96, 64)
    mask = np.asarray(Image.fromarray(irregular_mask(96, 64)).filter(ImageFilter.GaussianBlur(5)))
    params = DenoiseParams.from_inputs(
        PROMPT, steps=10, strength=strength, guidance_scale=5.0, seed=8, scheduler=scheduler, width=96,
        height=64, soft_inpainting=True,
    )  # fmt: skip
    got = ours(image, mask / 255.0, params)[0][0]
    want = diffusers_soft_inpaint(
        pipe, config, image, mask, PROMPT, scheduler, steps=10, strength=strength, guidance=5.0, seed=8
    )
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"{family} soft {scheduler} strength={strength}: max {diff.max()}/255")
    assert diff.max() <= 1


@pytest.mark.server
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("scheduler", "strength", "negative_prompt"), CASES[:3])
def test_served_sdxl_matches_diffusers(
    triton_server, references, family, scheduler, strength, negative_prompt
):
    pipe, config = references[family]
    image, mask = make_image(96, 64, seed=3), irregular_mask(96, 64)
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        result = client.inpaint(
            SDXL_MODELS[family],
            png_bytes(image),
            png_bytes(mask),
            PROMPT,
            negative_prompt=negative_prompt,
            steps=10,
            strength=strength,
            guidance_scale=5.0,
            seed=8,
            scheduler=scheduler,
            width=96,
            height=64,
        )
    served = decode_rgb(result.image)
    want = reference(pipe, config, image, mask, scheduler, strength, negative_prompt)
    assert_served_parity(f"served {family} {scheduler} strength={strength}", served, want, mask, image)


@pytest.mark.server
def test_sdxl_default_guidance_is_sdxls(triton_server, exported_repository):
    repository, _ = exported_repository
    spec = json.loads(
        (repository / f"{SDXL_MODELS['sdxl-inpaint']}_denoise" / "1" / "pipeline.json").read_text()
    )
    assert spec["sdxl"] is True and spec["default_guidance"] == 5.0
