"""What Triton returns is what diffusers returns: same tiny checkpoint, seed and settings."""

import numpy as np
import pytest

from tests.conftest import BASE_MODEL, MODEL
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_inpaint,
    diffusers_soft_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.client import InpaintClient

pytestmark = pytest.mark.server
PROMPT = "a red apple on a wooden table"
TOLERANCE = 3  # out of 255, inside the mask


@pytest.fixture(scope="module", params=["grpc", "http"])
def client(request, triton_server):
    url = triton_server.grpc_url if request.param == "grpc" else triton_server.http_url
    with InpaintClient(url, request.param) as c:
        yield c


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_served_result_matches_diffusers(client, reference_pipeline, scheduler_config, scheduler, strength):
    image = make_image(160, 96)  # non-square
    mask = irregular_mask(160, 96)
    result = client.inpaint(
        MODEL,
        png_bytes(image),
        png_bytes(mask),
        PROMPT,
        steps=12,
        strength=strength,
        guidance_scale=7.5,
        seed=1234,
        scheduler=scheduler,
        width=160,
        height=96,
    )
    assert result.seed == 1234
    served = decode_rgb(result.image)
    assert served.shape == image.shape

    want = diffusers_inpaint(
        reference_pipeline,
        scheduler_config,
        image,
        mask,
        PROMPT,
        scheduler,
        steps=12,
        strength=strength,
        guidance=7.5,
        seed=1234,
    )
    assert_served_parity(
        f"{client.protocol} {scheduler} strength={strength}", served, want, mask, image, TOLERANCE
    )
    # The fill is really generated, not the input passed through.
    inside = mask == 255
    assert np.abs(served[inside].astype(int) - image[inside]).mean() > 10


def test_same_seed_same_image_and_absent_seed_is_returned(client):
    image, mask = png_bytes(make_image(64, 64, seed=3)), png_bytes(irregular_mask(64, 64))
    first = client.inpaint(MODEL, image, mask, "a cat", steps=3, seed=99)
    second = client.inpaint(MODEL, image, mask, "a cat", steps=3, seed=99)
    assert first.image == second.image
    random_a = client.inpaint(MODEL, image, mask, "a cat", steps=3)
    replay = client.inpaint(MODEL, image, mask, "a cat", steps=3, seed=random_a.seed)
    assert replay.image == random_a.image


def test_default_processing_size_returns_input_size(client):
    """Without width/height the model runs at its native pixel count and the result is resized back."""
    image = make_image(200, 120, seed=5)
    mask = irregular_mask(200, 120)
    served = decode_rgb(
        client.inpaint(MODEL, png_bytes(image), png_bytes(mask), "a dog", steps=3, seed=1).image
    )
    assert served.shape == image.shape
    assert np.array_equal(served[mask == 0], image[mask == 0])


@pytest.mark.parametrize(
    ("model", "reference"), [(MODEL, "reference_pipeline"), (BASE_MODEL, "reference_base_pipeline")]
)
def test_served_soft_inpainting_matches_differential_diffusion(
    request, client, scheduler_config, model, reference
):
    """soft_inpainting with a feathered mask, served, against diffusers' pipeline with differential
    diffusion's per-step rule (tests/helpers.py): equal where the mask is white, the input where it
    is black; in between the served result is the soft composite of the two."""
    from PIL import Image, ImageFilter

    image = make_image(160, 96)
    mask = np.asarray(Image.fromarray(irregular_mask(160, 96)).filter(ImageFilter.GaussianBlur(6)))
    settings = {"steps": 10, "strength": 1.0, "guidance_scale": 7.5, "seed": 77, "scheduler": "Euler a"}
    result = client.inpaint(
        model,
        png_bytes(image),
        png_bytes(mask),
        PROMPT,
        soft_inpainting=True,
        width=160,
        height=96,
        **settings,
    )
    served = decode_rgb(result.image)
    want = diffusers_soft_inpaint(
        request.getfixturevalue(reference), scheduler_config, image, mask, PROMPT, "Euler a",
        steps=10, strength=1.0, guidance=7.5, seed=77,
    )  # fmt: skip
    white, black = mask == 255, mask == 0
    diff = np.abs(served.astype(int) - want.astype(int))[white]
    print(f"{client.protocol} soft {model}: where the mask is white max {diff.max()}/255")
    assert diff.max() <= TOLERANCE
    assert np.array_equal(served[black], image[black]), "pixels the mask keeps must be the input's"
    # The grey band: the generated image composited into the input by the mask's grey level.
    weight = (mask.astype(np.float32) / 255.0)[..., None]
    blended = weight * want.astype(np.float32) + (1.0 - weight) * image.astype(np.float32)
    band = ~white & ~black
    assert band.sum() > 1000 and np.abs(served.astype(np.float32) - blended)[band].max() <= TOLERANCE + 1
