"""SD 1.5 base checkpoints (4-channel UNet): inpainting by latent blending, as diffusers does it."""

import numpy as np
import pytest

from tests.conftest import BASE_MODEL
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.client import InpaintClient
from triton_inpaint.networks.runners import TorchComponents
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

PROMPT = "a stone wall"


def reference(pipe, config, image, mask, scheduler, strength, seed=3):
    return diffusers_inpaint(
        pipe, config, image, mask, PROMPT, scheduler, steps=10, strength=strength, guidance=7.0, seed=seed
    )


@pytest.fixture(scope="module")
def base_config(tiny_base_checkpoint):
    import json

    return json.loads((tiny_base_checkpoint / "scheduler" / "scheduler_config.json").read_text())


def test_tiny_base_checkpoint_has_a_4_channel_unet(reference_base_pipeline):
    assert reference_base_pipeline.unet.config.in_channels == 4


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M", "Euler a", "DPM++ 2M SDE"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_pipeline_logic_matches_diffusers(reference_base_pipeline, base_config, scheduler, strength):
    pipe = reference_base_pipeline
    ours = SDInpaintPipeline(
        TorchComponents(pipe), pipe.tokenizer, base_config, PipelineSpec.from_diffusers(pipe)
    )
    image, mask = make_image(96, 64), irregular_mask(96, 64)
    params = DenoiseParams.from_inputs(
        PROMPT,
        steps=10,
        strength=strength,
        guidance_scale=7.0,
        seed=3,
        scheduler=scheduler,
        width=96,
        height=64,
    )
    got = ours(image, mask / 255.0, params)[0][0]
    want = reference(pipe, base_config, image, mask, scheduler, strength)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"base, torch modules, {scheduler} strength={strength}: max {diff.max()}/255")
    assert diff.max() <= 1


@pytest.mark.server
@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_served_base_checkpoint_matches_diffusers(
    triton_server, reference_base_pipeline, base_config, scheduler, strength
):
    image, mask = make_image(96, 64, seed=1), irregular_mask(96, 64)
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        result = client.inpaint(
            BASE_MODEL,
            png_bytes(image),
            png_bytes(mask),
            PROMPT,
            steps=10,
            strength=strength,
            guidance_scale=7.0,
            seed=3,
            scheduler=scheduler,
            width=96,
            height=64,
        )
    served = decode_rgb(result.image)
    want = reference(reference_base_pipeline, base_config, image, mask, scheduler, strength)
    assert_served_parity(f"served base {scheduler} strength={strength}", served, want, mask, image)
