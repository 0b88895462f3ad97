"""Every control of issue 3, served through Triton and compared with diffusers where diffusers has it."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODEL
from tests.helpers import (
    assert_served_parity,
    decode_rgb,
    diffusers_inpaint,
    irregular_mask,
    make_image,
    png_bytes,
)
from triton_inpaint.client import InpaintClient, InpaintError

pytestmark = pytest.mark.server
PROMPT = "a bowl of fruit"
TOLERANCE = 3  # out of 255, inside the mask


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


def diffusers_result(pipe, config, image, mask, scheduler="DDIM", strength=1.0, steps=10, seed=21, **kwargs):
    return diffusers_inpaint(
        pipe,
        config,
        image,
        mask,
        PROMPT,
        scheduler,
        steps=steps,
        strength=strength,
        guidance=7.0,
        seed=seed,
        **kwargs,
    )


def served(client, image, mask, **kwargs):
    request = {"steps": 10, "seed": 21, "strength": 1.0, "guidance_scale": 7.0, "scheduler": "DDIM", **kwargs}
    return client.inpaint(MODEL, png_bytes(image), png_bytes(mask), PROMPT, **request)


@pytest.mark.parametrize(
    "scheduler", ["DDIM", "Euler", "Heun", "DPM++ 2M", "DPM++ 2M Karras", "UniPC", "PNDM", "LMS"]
)
def test_deterministic_schedulers(client, reference_pipeline, scheduler_config, scheduler):
    image, mask = make_image(96, 64, seed=2), irregular_mask(96, 64)
    got = decode_rgb(served(client, image, mask, scheduler=scheduler, width=96, height=64).image)
    want = diffusers_result(reference_pipeline, scheduler_config, image, mask, scheduler, width=96, height=64)
    assert_served_parity(scheduler, got, want, mask, image)


@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_strength_sweep(client, reference_pipeline, scheduler_config, strength):
    image, mask = make_image(96, 64, seed=4), irregular_mask(96, 64)
    got = decode_rgb(served(client, image, mask, strength=strength, width=96, height=64).image)
    want = diffusers_result(
        reference_pipeline, scheduler_config, image, mask, strength=strength, width=96, height=64
    )
    assert_served_parity(f"strength {strength}", got, want, mask, image)


def test_lower_strength_stays_closer_to_the_input(client):
    image, mask = make_image(96, 64, seed=4), irregular_mask(96, 64)
    inside = mask == 255
    change = {
        s: np.abs(
            decode_rgb(served(client, image, mask, strength=s, width=96, height=64).image).astype(int) - image
        )[inside].mean()
        for s in (0.3, 1.0)
    }
    assert change[0.3] < change[1.0]


def test_mask_margin_near_a_corner(client, reference_pipeline, scheduler_config):
    image = make_image(192, 128, seed=6)
    mask = np.zeros((128, 192), np.uint8)
    mask[100:124, 150:185] = 255  # bottom-right corner
    got = decode_rgb(served(client, image, mask, mask_margin=32, width=64, height=64).image)
    want = diffusers_result(
        reference_pipeline, scheduler_config, image, mask, padding_mask_crop=32, width=64, height=64
    )
    assert got.shape == image.shape
    assert_served_parity("mask_margin 32 (corner)", got, want, mask, image)


def test_mask_margin_works_at_default_size(client):
    image, mask = make_image(200, 120, seed=8), np.zeros((120, 200), np.uint8)
    mask[5:30, 10:40] = 255
    got = decode_rgb(served(client, image, mask, mask_margin=48).image)
    assert got.shape == image.shape
    assert np.array_equal(got[mask == 0], image[mask == 0])
    assert np.abs(got[mask == 255].astype(int) - image[mask == 255]).mean() > 5


def test_num_images_three(client, reference_pipeline, scheduler_config):
    image, mask = make_image(96, 64, seed=9), irregular_mask(96, 64)
    result = served(client, image, mask, num_images=3, seed=500, width=96, height=64, scheduler="Euler a")
    assert result.seeds == [500, 501, 502]
    assert len(result.images) == 3 and len(set(result.images)) == 3
    for image_bytes, seed in zip(result.images, result.seeds, strict=True):
        want = diffusers_result(
            reference_pipeline, scheduler_config, image, mask, "Euler a", seed=seed, width=96, height=64
        )
        assert_served_parity(f"num_images 3, seed {seed}", decode_rgb(image_bytes), want, mask, image)
        alone = served(client, image, mask, seed=seed, width=96, height=64, scheduler="Euler a")
        assert np.abs(decode_rgb(alone.image).astype(int) - decode_rgb(image_bytes)).max() <= 1


def test_grey_mask_composites_by_the_formula(client):
    """Grey regenerates partially: result = m * generated + (1 - m) * original within 1/255."""
    image = make_image(96, 64, seed=10)
    grey = np.zeros((64, 96), np.uint8)
    grey[8:56, 10:50] = 255
    grey[8:56, 50:86] = 160  # grey: conditioned as masked (>= 0.5) but composited at 160/255
    binary = np.where(grey >= 128, 255, 0).astype(np.uint8)
    soft = decode_rgb(served(client, image, grey, width=96, height=64).image).astype(float)
    generated = decode_rgb(served(client, image, binary, width=96, height=64).image).astype(float)
    m = grey.astype(float)[..., None] / 255
    expected = m * generated + (1 - m) * image
    diff = np.abs(soft - expected)
    print(f"grey mask composite: max {diff.max():.2f}/255 from the formula")
    assert diff.max() <= 1.0
    assert np.abs(soft[8:56, 50:86] - image[8:56, 50:86]).mean() > 1  # grey area did change


def test_mask_invert_equals_the_inverted_mask(client):
    image, mask = make_image(64, 48, seed=11), irregular_mask(64, 48)
    inverted = served(client, image, mask, mask_invert=True, steps=3)
    by_hand = served(client, image, 255 - mask, steps=3)
    assert inverted.image == by_hand.image
    got = decode_rgb(inverted.image)
    assert np.array_equal(got[mask == 255], image[mask == 255])  # the subject is kept


def test_expand_and_blur_touch_nothing_beyond_their_reach(client):
    image = make_image(96, 64, seed=12)
    mask = np.zeros((64, 96), np.uint8)
    mask[24:40, 40:56] = 255
    got = decode_rgb(served(client, image, mask, mask_expand=4, mask_blur=6, steps=4).image)
    reach = np.zeros_like(mask, bool)
    reach[24 - 10 : 40 + 10, 40 - 10 : 56 + 10] = True  # expand 4 + blur 6, square bound
    assert np.array_equal(got[~reach], image[~reach])
    ring = reach.copy()
    ring[24:40, 40:56] = False
    assert np.abs(got[ring].astype(int) - image[ring]).max() > 0, "the feather reaches past the mask"


@pytest.mark.parametrize(("fmt", "pil_format"), [("PNG", "PNG"), ("JPG", "JPEG"), ("webp", "WEBP")])
def test_output_formats(client, fmt, pil_format):
    image, mask = make_image(64, 48, seed=13), irregular_mask(64, 48)
    high = served(client, image, mask, output_format=fmt, output_quality=95, steps=2).image
    opened = Image.open(io.BytesIO(high))
    assert opened.format == pil_format and opened.size == (64, 48)
    if pil_format != "PNG":
        low = served(client, image, mask, output_format=fmt, output_quality=10, steps=2).image
        assert len(low) < len(high)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"mask_margin": 20}, "mask_margin: must be an integer in [32, 128], got 20"),
        ({"mask_blur": 161}, "mask_blur: must be an integer in [0, 160], got 161"),
        ({"mask_expand": 65}, "mask_expand: must be an integer in [0, 64], got 65"),
        ({"num_images": 5}, "num_images: must be an integer in [1, 4], got 5"),
        ({"guidance_scale": 51}, "guidance_scale: must be a number in [0.0, 50.0], got 51.0"),
        ({"width": 100}, "width: must be a multiple of 8, got 100"),
        ({"output_format": "gif"}, "output_format: must be one of PNG, JPG, WEBP, got 'gif'"),
        ({"output_quality": 0}, "output_quality: must be an integer in [1, 100], got 0"),
    ],
)
def test_out_of_range_controls(client, overrides, expected):
    image, mask = make_image(64, 48), irregular_mask(64, 48)
    with pytest.raises(InpaintError) as info:
        served(client, image, mask, **{"steps": 2, **overrides})
    assert expected in str(info.value)
    assert decode_rgb(served(client, image, mask, steps=2).image).shape == (48, 64, 3)
