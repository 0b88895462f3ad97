"""Mask then inpaint in one request: the ensemble's preprocess asks image_masking for the mask (BLS)."""

import io
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.conftest import MODEL
from tests.helpers import decode_rgb, png_bytes
from triton_inpaint.client import InpaintClient, InpaintError
from triton_inpaint.masks.shaping import MaskParams, prepare_mask

pytestmark = pytest.mark.server
ASTRONAUT = skimage.data.astronaut()
REQUEST = {"steps": 3, "seed": 7, "strength": 1.0, "scheduler": "DDIM", "width": 128, "height": 128}


def grey(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


@pytest.mark.parametrize("source", [{"mask_prompt": "her face"}, {"mask_model": "face"}])
def test_face_prompt_then_inpaint_keeps_every_pixel_outside_the_mask(client, source):
    result = client.inpaint(
        MODEL, png_bytes(ASTRONAUT), None, "a bronze statue", mask_expand=10, mask_blur=8, **REQUEST, **source
    )
    # The mask it used is the face detector's exact mask, expanded then blurred by this request's controls.
    face = client.mask(png_bytes(ASTRONAUT), "face", padding=0, blur=0)
    assert len(face.detections) == 1
    expected = prepare_mask(grey(face.mask) / 255.0, MaskParams(expand=10, blur=8))
    used = grey(result.mask)
    assert np.abs(used.astype(int) - np.rint(expected * 255)).max() <= 1
    output = decode_rgb(result.image)
    outside = used == 0
    changed = np.abs(output.astype(int) - ASTRONAUT.astype(int)).max(axis=-1) > 0
    print(f"mask covers {(~outside).mean():.1%}; changed outside: {changed[outside].sum()} px")
    assert outside.mean() > 0.9 and not changed[outside].any()
    assert changed[used == 255].mean() > 0.9  # the face itself was regenerated


def test_background_prompt_with_invert_is_the_person(client):
    person = client.inpaint(MODEL, png_bytes(ASTRONAUT), None, "x", mask_prompt="person", **REQUEST)
    background = client.inpaint(
        MODEL, png_bytes(ASTRONAUT), None, "x", mask_prompt="background", mask_invert=True, **REQUEST
    )
    assert np.array_equal(grey(person.mask), grey(background.mask))
    assert 0.4 <= (grey(person.mask) > 127).mean() <= 0.7


def test_an_uploaded_mask_comes_back_as_used(client):
    mask = np.zeros(ASTRONAUT.shape[:2], np.uint8)
    mask[100:200, 300:400] = 255
    result = client.inpaint(MODEL, png_bytes(ASTRONAUT), png_bytes(mask), "x", mask_invert=True, **REQUEST)
    assert np.array_equal(grey(result.mask), 255 - mask)


@pytest.mark.parametrize(
    ("image", "mask", "source", "expected"),
    [
        (
            ASTRONAUT,
            True,
            {"mask_prompt": "face"},
            "mask: send exactly one of mask (an image), mask_model or mask_prompt; got mask, mask_prompt",
        ),
        (ASTRONAUT, False, {}, "mask: send exactly one of mask (an image), mask_model or mask_prompt"),
        (ASTRONAUT, False, {"mask_model": "elbows"}, "mask_model: unknown masking model 'elbows'"),
        (
            np.full((64, 64, 3), 90, np.uint8),
            False,
            {"mask_model": "face"},
            "mask_model: 'face' found nothing in the image, so there is nothing to inpaint",
        ),
    ],
)
def test_mask_sources_are_checked(client, image, mask, source, expected):
    mask_bytes = png_bytes(np.full(image.shape[:2], 255, np.uint8)) if mask else None
    with pytest.raises(InpaintError) as info:
        client.inpaint(MODEL, png_bytes(image), mask_bytes, "x", **REQUEST, **source)
    assert expected in str(info.value)


def test_inpaint_cli_with_a_mask_prompt(triton_server, tmp_path):
    image = tmp_path / "astronaut.png"
    image.write_bytes(png_bytes(ASTRONAUT))
    out, mask_out = tmp_path / "out.png", tmp_path / "mask-used.png"
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "inpaint", "--url", triton_server.grpc_url,
         "--model", MODEL, "--image", str(image), "--mask-prompt", "eyes", "--prompt", "sunglasses",
         "--steps", "2", "--seed", "3", "--mask-expand", "4", "--out", str(out), "--mask-out", str(mask_out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"mask -> {mask_out}" in done.stdout
    used = grey(mask_out.read_bytes())
    assert 0 < (used == 255).mean() < 0.05  # two eyes, expanded
    assert decode_rgb(out.read_bytes()).shape == ASTRONAUT.shape
