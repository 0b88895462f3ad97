"""FLUX Fill: CLIP + T5, a transformer over packed latents with the mask packed in, embedded guidance,
flow matching; against diffusers' FluxFillPipeline loaded from the same tiny checkpoint."""


import numpy as np
import pytest

from tests.conftest import FLUX_MODEL, MODEL, MODEL_IDS
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    differential_diffusion_hook,
    diffusers_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.params import DenoiseParams
from triton_inpaint.client import InpaintClient, InpaintError
from triton_inpaint.networks.runners import TorchComponents
from triton_inpaint.pipelines.flux_fill import FluxFillInpaintPipeline
from triton_inpaint.pipelines.spec import PipelineSpec

PROMPT = "a red umbrella"
GUIDANCE = 30.0


@pytest.fixture(scope="module")
def reference(flux_reference):
    return flux_reference


@pytest.fixture(scope="module")
def ours(reference):
    pipe, config = reference
    spec = PipelineSpec.from_diffusers(pipe)
    return FluxFillInpaintPipeline(TorchComponents(pipe), pipe.tokenizer, pipe.tokenizer_2, config, spec)


def diffusers_fill(reference, image, mask, *, steps, strength, seed):
    pipe, config = reference
    return diffusers_inpaint(
        pipe,
        config,
        image,
        mask,
        PROMPT,
        None,
        steps=steps,
        strength=strength,
        guidance=GUIDANCE,
        seed=seed,
        max_sequence_length=PipelineSpec.from_diffusers(pipe).max_sequence_length,
    )


def test_spec_of_a_flux_fill_checkpoint(reference):
    spec = PipelineSpec.from_diffusers(reference[0])
    assert spec.family == "flux-fill" and spec.architecture == "flux"
    # FluxFillPipeline's defaults; packing makes sizes multiples of 16.
    assert (spec.default_steps, spec.default_guidance, spec.default_strength) == (50, 30.0, 1.0)
    assert spec.size_multiple == 16 and spec.max_sequence_length == 32
    assert spec.denoiser_in_channels == 2 * 4 * spec.latent_channels + 4 * 8 * 8


@pytest.mark.parametrize("strength", [1.0, 0.6, 0.35])
def test_pipeline_logic_matches_diffusers(reference, ours, strength):
    image, mask = make_image(96, 64), irregular_mask(96, 64)
    params = DenoiseParams.from_inputs(
        PROMPT, steps=8, strength=strength, guidance_scale=GUIDANCE, seed=3, width=96, height=64
    )
    got = ours(image, mask / 255.0, params)[0][0]
    want = diffusers_fill(reference, image, mask, steps=8, strength=strength, seed=3)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"flux-fill torch modules strength={strength}: max {diff.max()}/255")
    assert diff.max() <= 1
    # The mask changed something: the prediction is not the input passed through the VAE.
    assert np.abs(got.astype(int) - image.astype(int))[mask == 255].mean() > 5


def diffusers_soft_fill(reference, image, mask, *, steps, strength, seed):
    """FluxFillPipeline, its loop untouched, with differential diffusion's per-step rule applied through
    its ``callback_on_step_end`` (as tests/helpers.py's diffusers_soft_inpaint for SD): after step i,
    the positions still held before step i+1 are the image latents moved along the flow to step i+1's
    timestep. The image latents and noise are drawn again, in the pipeline's order, from a second
    generator with the same seed."""
    import torch
    from diffusers.image_processor import VaeImageProcessor
    from diffusers.utils.torch_utils import randn_tensor
    from PIL import Image

    from triton_inpaint.pipelines.steps.soft_inpainting import change_map

    pipe, config = reference
    height, width = mask.shape
    factor = pipe.vae_scale_factor
    replay = torch.Generator().manual_seed(seed)
    init = pipe.image_processor.preprocess(Image.fromarray(image), height=height, width=width).float()
    sampled = pipe.vae.encode(init).latent_dist.sample(replay)
    image_latents = (sampled - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    noise = randn_tensor(image_latents.shape, generator=replay, dtype=torch.float32)
    batch, channels, rows, columns = image_latents.shape
    grey = VaeImageProcessor(vae_scale_factor=factor * 2, do_normalize=False, do_convert_grayscale=True)
    change = change_map(grey.preprocess(Image.fromarray(mask), height=height, width=width), rows, columns)
    packed_change = pipe._pack_latents(change.expand(batch, channels, -1, -1), batch, channels, rows, columns)

    def moved(pipeline, t):  # along the flow to t, packed
        flowed = pipeline.scheduler.scale_noise(image_latents, t, noise)
        return pipeline._pack_latents(flowed, batch, channels, rows, columns)

    # FluxFillPipeline.get_timesteps cuts the schedule at steps * strength (a float product).
    hold = differential_diffusion_hook(int(max(steps - steps * strength, 0)), packed_change, moved)

    return diffusers_inpaint(
        pipe, config, image, mask, PROMPT, None, steps=steps, strength=strength, guidance=GUIDANCE, seed=seed,
        max_sequence_length=PipelineSpec.from_diffusers(pipe).max_sequence_length,
        callback_on_step_end=hold, callback_on_step_end_tensor_inputs=["latents"],
    )  # fmt: skip


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_soft_inpainting_matches_differential_diffusion_on_diffusers(reference, ours, strength):
    from PIL import Image, ImageFilter

    image = make_image(96, 64)
    mask = np.asarray(Image.fromarray(irregular_mask(96, 64)).filter(ImageFilter.GaussianBlur(5)))
    params = DenoiseParams.from_inputs(
        PROMPT, steps=8, strength=strength, guidance_scale=GUIDANCE, seed=3, width=96, height=64,
        soft_inpainting=True,
    )  # fmt: skip
    got = ours(image, mask / 255.0, params)[0][0]
    want = diffusers_soft_fill(reference, image, mask, steps=8, strength=strength, seed=3)
    diff = np.abs(got.astype(int) - want.astype(int))
    print(f"flux-fill soft strength={strength}: max {diff.max()}/255")
    assert diff.max() <= 1
    plain = ours(image, mask / 255.0, DenoiseParams.from_inputs(
        PROMPT, steps=8, strength=strength, guidance_scale=GUIDANCE, seed=3, width=96, height=64,
    ))[0][0]  # fmt: skip
    assert np.abs(plain.astype(int) - got.astype(int)).max() > 8, "soft inpainting changed nothing"


def test_each_image_replays_alone_with_its_seed(reference, ours):
    image, mask = make_image(96, 64, seed=2), irregular_mask(96, 64)
    params = DenoiseParams.from_inputs(
        PROMPT, steps=6, strength=1.0, guidance_scale=GUIDANCE, seed=11, width=96, height=64, num_images=2
    )
    got = ours(image, mask / 255.0, params)[0]
    for i, seed in enumerate(params.seeds):
        want = diffusers_fill(reference, image, mask, steps=6, strength=1.0, seed=seed)
        diff = np.abs(got[i].astype(int) - want.astype(int))
        print(f"flux-fill num_images=2, image {i} vs a single call with seed {seed}: max {diff.max()}/255")
        assert diff.max() <= 1
    assert not np.array_equal(got[0], got[1])


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"mask_margin": 32}, "mask_margin", "not supported by FLUX Fill"),
        ({"negative_prompt": "blurry"}, "negative_prompt", "not supported by FLUX Fill"),
        ({"width": 72, "height": 64}, "width", "must be a multiple of 16 for FLUX Fill, got 72"),
        ({"scheduler": "DDIM"}, "scheduler", "choose one of: FlowMatch Euler"),
    ],
)
def test_controls_flux_fill_lacks_are_refused(ours, overrides, field, message):
    params = DenoiseParams.from_inputs(PROMPT, steps=2, seed=1, **overrides)
    with pytest.raises(InvalidInputError) as info:
        ours(make_image(96, 64), irregular_mask(96, 64) / 255.0, params)
    assert info.value.field == field and message in str(info.value)


# -- served through Triton -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


@pytest.mark.server
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_served_flux_fill_matches_diffusers(client, reference, strength):
    image, mask = make_image(160, 96, seed=4), irregular_mask(160, 96)
    result = client.inpaint(
        MODEL_IDS[FLUX_MODEL],
        png_bytes(image),
        png_bytes(mask),
        PROMPT,
        steps=8,
        strength=strength,
        guidance_scale=GUIDANCE,
        seed=21,
        width=160,
        height=96,
    )
    want = diffusers_fill(reference, image, mask, steps=8, strength=strength, seed=21)
    assert_served_parity(f"served flux-fill strength={strength}", decode_rgb(result.image), want, mask, image)


@pytest.mark.server
def test_served_flux_fill_soft_inpainting_matches_differential_diffusion(client, reference):
    from PIL import Image, ImageFilter

    image = make_image(96, 64, seed=4)
    mask = np.asarray(Image.fromarray(irregular_mask(96, 64)).filter(ImageFilter.GaussianBlur(2)))
    result = client.inpaint(
        FLUX_MODEL, png_bytes(image), png_bytes(mask), PROMPT, steps=6, strength=1.0, guidance_scale=GUIDANCE,
        seed=9, width=96, height=64, soft_inpainting=True,
    )  # fmt: skip
    served = decode_rgb(result.image)
    want = diffusers_soft_fill(reference, image, mask, steps=6, strength=1.0, seed=9)
    white, black = mask == 255, mask == 0
    diff = np.abs(served.astype(int) - want.astype(int))[white]
    print(f"served flux-fill soft: where the mask is white max {diff.max()}/255")
    assert diff.max() <= 3 and np.array_equal(served[black], image[black])


@pytest.mark.server
def test_served_flux_fill_several_images_and_default_strength(client, reference):
    image, mask = make_image(96, 64, seed=5), irregular_mask(96, 64)
    result = client.inpaint(
        FLUX_MODEL,
        png_bytes(image),
        png_bytes(mask),
        PROMPT,
        steps=6,
        seed=40,
        num_images=2,
        guidance_scale=GUIDANCE,
        width=96,
        height=64,
    )
    assert result.seeds == [40, 41]
    for served, seed in zip(result.images, result.seeds, strict=True):
        # No strength sent: FLUX Fill's default is 1.0 (the whole masked region regenerated).
        want = diffusers_fill(reference, image, mask, steps=6, strength=1.0, seed=seed)
        assert_served_parity(f"served flux-fill seed {seed}", decode_rgb(served), want, mask, image)


@pytest.mark.server
def test_served_flux_fill_default_size_is_native(client):
    image, mask = make_image(200, 100, seed=6), irregular_mask(200, 100)
    result = client.inpaint(FLUX_MODEL, png_bytes(image), png_bytes(mask), PROMPT, steps=2, seed=1)
    served = decode_rgb(result.image)
    assert served.shape == image.shape
    assert np.array_equal(served[mask == 0], image[mask == 0])


@pytest.mark.server
@pytest.mark.parametrize(
    ("model", "overrides", "expected"),
    [
        (FLUX_MODEL, {"mask_margin": 32}, "mask_margin: is not supported by FLUX Fill models"),
        (FLUX_MODEL, {"negative_prompt": "blurry"}, "negative_prompt: is not supported by FLUX Fill"),
        (FLUX_MODEL, {"width": 88}, "width: must be a multiple of 16 for FLUX Fill, got 88"),
        (FLUX_MODEL, {"scheduler": "Euler a"}, "scheduler: 'Euler a' does not work with this flow-matching"),
        (MODEL, {"scheduler": "FlowMatch Euler"}, "scheduler: 'FlowMatch Euler' does not work with this"),
    ],
)
def test_served_refusals_name_the_field(client, model, overrides, expected):
    image, mask = png_bytes(make_image(96, 64)), png_bytes(irregular_mask(96, 64))
    with pytest.raises(InpaintError) as info:
        client.inpaint(model, image, mask, PROMPT, steps=2, seed=1, **overrides)
    assert expected in str(info.value)
    assert client.inpaint(model, image, mask, PROMPT, steps=2, seed=1).images


@pytest.mark.server
def test_flux_fill_is_listed_with_its_defaults(client):
    info = {model.name: model for model in client.list_models()}[FLUX_MODEL]
    assert (info.id, info.family) == (MODEL_IDS[FLUX_MODEL], "flux-fill")
    assert (info.default_steps, info.default_guidance, info.default_strength) == (50, 30.0, 1.0)
    assert info.native_resolution == 128
