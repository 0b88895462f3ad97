"""The pipeline logic itself against diffusers, without a server: torch modules and ONNX graphs."""

import numpy as np
import pytest

from tests.helpers import diffusers_inpaint, diffusers_soft_inpaint, irregular_mask, make_image
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.networks.runners import SD_TENSORS, RunnerComponents, TorchComponents, onnx_runner
from triton_inpaint.pipelines.planning import processing_size
from triton_inpaint.pipelines.sd_inpaint import SDInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

PROMPT = "a red apple on a wooden table"


def reference(pipe, config, image, mask, scheduler, strength, steps=8, guidance=7.0, seed=7):
    return diffusers_inpaint(
        pipe,
        config,
        image,
        mask,
        PROMPT,
        scheduler,
        steps=steps,
        strength=strength,
        guidance=guidance,
        seed=seed,
    )


def ours(pipeline, image, mask, scheduler, strength, steps=8, guidance=7.0, seed=7, **controls):
    params = DenoiseParams.from_inputs(
        PROMPT,
        steps=steps,
        strength=strength,
        guidance_scale=guidance,
        seed=seed,
        scheduler=scheduler,
        width=image.shape[1],
        height=image.shape[0],
        **controls,
    )
    images, box = pipeline(image, mask.astype(np.float32) / 255.0, params)
    assert box == (0, 0, image.shape[1], image.shape[0])
    return images[0]


@pytest.fixture(scope="module")
def torch_pipeline(reference_pipeline, scheduler_config):
    pipe = reference_pipeline
    return SDInpaintPipeline(
        TorchComponents(pipe), pipe.tokenizer, scheduler_config, PipelineSpec.from_diffusers(pipe)
    )


@pytest.fixture(scope="module")
def onnx_pipeline(exported_repository, torch_pipeline):
    repository, _ = exported_repository
    run = onnx_runner({role: repository / f"tiny_{role}" / "1" / "model.onnx" for role in SD_TENSORS})
    return SDInpaintPipeline.from_directory(repository / "tiny_denoise" / "1", RunnerComponents(run))


@pytest.mark.parametrize(
    "scheduler", ["DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "PNDM", "UniPC"]
)
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_torch_components_match_diffusers(
    reference_pipeline, scheduler_config, torch_pipeline, scheduler, strength
):
    image, mask = make_image(), irregular_mask()
    got = ours(torch_pipeline, image, mask, scheduler, strength)
    want = reference(reference_pipeline, scheduler_config, image, mask, scheduler, strength)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"torch {scheduler} strength={strength}: max {diff.max()}/255 mean {diff.mean():.4f}/255")
    # Same modules, same random stream: only float rounding in timestep dtype may differ.
    assert diff.max() <= 1


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_onnx_components_match_diffusers(reference_pipeline, scheduler_config, onnx_pipeline, strength):
    image, mask = make_image(), irregular_mask()
    got = ours(onnx_pipeline, image, mask, "DDIM", strength)
    want = reference(reference_pipeline, scheduler_config, image, mask, "DDIM", strength)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"onnx DDIM strength={strength}: max {diff.max()}/255 mean {diff.mean():.4f}/255")
    assert diff.max() <= 3


def test_guidance_at_most_one_skips_the_unconditional_half(
    torch_pipeline, reference_pipeline, scheduler_config
):
    calls = []
    run = torch_pipeline.components.run_network

    def counting(role, inputs, outputs, check=True):
        calls.append(inputs["sample"].shape[0])
        return run(role, inputs, outputs, check)

    torch_pipeline.components.run_network = counting
    try:
        image, mask = make_image(), irregular_mask()
        got = ours(torch_pipeline, image, mask, "DDIM", 1.0, steps=3, guidance=1.0)
    finally:
        del torch_pipeline.components.run_network
    assert calls == [1, 1, 1]
    want = reference(reference_pipeline, scheduler_config, image, mask, "DDIM", 1.0, steps=3, guidance=1.0)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("size", "params", "expected"),
    [
        ((160, 96), {"width": 160, "height": 96}, (160, 96)),
        ((512, 512), {}, (128, 128)),
        ((1024, 512), {}, (184, 88)),
        ((300, 200), {"width": 240}, (240, 160)),
        ((300, 200), {"height": 80}, (120, 80)),
    ],
)
def test_processing_size(size, params, expected):
    got = processing_size(*size, native=128, params=DenoiseParams.from_inputs("x", **params))
    assert got == expected
    assert got[0] % 8 == 0 and got[1] % 8 == 0


def test_a_request_whose_untiled_vae_does_not_fit_is_tiled_as_diffusers_tiles(
    torch_pipeline, reference_pipeline, scheduler_config
):
    """Over the memory budget untiled but within it tiled: the VAE runs in the checkpoint's own tiles
    (the tiny VAE's 128 px, a quarter overlap) and the image equals diffusers with enable_tiling()."""
    from triton_inpaint.pipelines.memory import request_bytes

    image, mask = make_image(320, 192), irregular_mask(320, 192)
    networks, tile = torch_pipeline.spec.networks, torch_pipeline.spec.vae_tile_size
    tiled = request_bytes(networks, 320, 192, 1, True, tile)
    assert tiled < request_bytes(networks, 320, 192, 1, True)
    torch_pipeline.memory_budget = tiled
    try:
        params = DenoiseParams.from_inputs(
            PROMPT, steps=4, strength=1.0, seed=7, scheduler="DDIM", width=320, height=192
        )
        assert torch_pipeline.plan(mask / 255.0, params).need.vae_tile == tile == 128
        got = ours(torch_pipeline, image, mask, "DDIM", 1.0, steps=4)
    finally:
        torch_pipeline.memory_budget = None
    untiled = reference(reference_pipeline, scheduler_config, image, mask, "DDIM", 1.0, steps=4)
    reference_pipeline.vae.enable_tiling()
    try:
        want = reference(reference_pipeline, scheduler_config, image, mask, "DDIM", 1.0, steps=4)
    finally:
        reference_pipeline.vae.disable_tiling()
    diff = np.abs(got.astype(int) - want.astype(int))
    print(
        f"tiled VAE: max {diff.max()}/255 mean {diff.mean():.4f}/255 against diffusers' tiled VAE; "
        f"diffusers' untiled differs by up to {np.abs(untiled.astype(int) - want.astype(int)).max()}/255"
    )
    assert diff.max() <= 1
    assert np.abs(untiled.astype(int) - want.astype(int)).max() > 1  # the tiles really change the image


def soft_mask(width: int = 160, height: int = 96) -> np.ndarray:
    """A mask with every grey level: the irregular mask feathered over 24 pixels, as mask_blur does."""
    from PIL import Image, ImageFilter

    blurred = Image.fromarray(irregular_mask(width, height)).filter(ImageFilter.GaussianBlur(8))
    return np.asarray(blurred)


@pytest.fixture(scope="module")
def torch_base_pipeline(reference_base_pipeline, scheduler_config):
    pipe = reference_base_pipeline
    return SDInpaintPipeline(
        TorchComponents(pipe), pipe.tokenizer, scheduler_config, PipelineSpec.from_diffusers(pipe)
    )


@pytest.mark.parametrize("scheduler", ["DDIM", "Euler a", "DPM++ 2M"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("unet", ["inpainting", "base"])
def test_soft_inpainting_matches_differential_diffusion_on_diffusers(
    request, scheduler_config, scheduler, strength, unet
):
    """Per-step grey levels on either UNet equal diffusers' pipeline with differential diffusion's
    rule applied at each step (tests/helpers.py, diffusers_soft_inpaint); and it is not plain
    inpainting: the grey seam comes out otherwise."""
    suffix = "" if unet == "inpainting" else "_base"
    pipeline = request.getfixturevalue(f"torch{suffix}_pipeline")
    pipe = request.getfixturevalue(f"reference{suffix}_pipeline")
    image, mask = make_image(), soft_mask()
    assert len(np.unique(mask)) > 100  # every grey level, not a binary mask
    got = ours(pipeline, image, mask, scheduler, strength, soft_inpainting=True)
    want = diffusers_soft_inpaint(
        pipe, scheduler_config, image, mask, PROMPT, scheduler,
        steps=8, strength=strength, guidance=7.0, seed=7,
    )  # fmt: skip
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"soft {unet} {scheduler} strength={strength}: max {diff.max()}/255 mean {diff.mean():.4f}/255")
    assert diff.max() <= 1
    plain = ours(pipeline, image, mask, scheduler, strength)
    assert np.abs(plain.astype(int) - got.astype(int)).max() > 8, "soft inpainting changed nothing"
