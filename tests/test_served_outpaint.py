"""Outpainting served end to end: Triton's result equals diffusers' inpainting pipeline run on the same
extended canvas and mask; the gateway's ``outpaint`` object, its width/height rule, and the CLI flag."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid

import numpy as np
import pytest

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import assert_served_parity, decode_rgb, diffusers_inpaint, make_image, png_bytes
from triton_inpaint.client import GatewayClient, InpaintClient
from triton_inpaint.masks.compositing import composite

pytestmark = pytest.mark.server
PROMPT = "a wide mountain valley"
TOLERANCE = 3  # out of 255, on the regenerated border
REQUEST = {"steps": 8, "guidance_scale": 7.0, "seed": 31}


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    process = GatewayProcess(
        triton_server.grpc_url, tmp_path_factory.mktemp("outpaint-gateway"), "--rate", "100000"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def _by_hand(
    image: np.ndarray, top: int, right: int, bottom: int, left: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's canvas, made without the library: numpy's edge padding, the border masked."""
    canvas = np.pad(image, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.pad(np.zeros(image.shape[:2], np.uint8), ((top, bottom), (left, right)), constant_values=255)
    return canvas, mask


def test_outpainting_equals_diffusers_on_the_extended_canvas(client, reference_pipeline, scheduler_config):
    image = make_image(96, 64, seed=21)
    result = client.inpaint(
        MODEL, png_bytes(image), None, PROMPT, outpaint_left=64, outpaint_right=64, width=224, height=64,
        strength=1.0, scheduler="DDIM", **REQUEST,
    )  # fmt: skip
    served = decode_rgb(result.image)
    canvas, mask = _by_hand(image, 0, 64, 0, 64)
    assert served.shape == canvas.shape == (64, 224, 3)
    assert np.array_equal(decode_rgb(result.mask)[..., 0], mask)  # the mask used: the border
    want = diffusers_inpaint(
        reference_pipeline, scheduler_config, canvas, mask, PROMPT, "DDIM", steps=8, strength=1.0,
        guidance=7.0, seed=31,
    )  # fmt: skip
    assert_served_parity("outpaint left+right", served, want, mask, canvas, TOLERANCE)
    assert np.array_equal(served[:, 64:160], image)  # the image itself, exactly


def test_a_feathered_seam_and_a_mask_inside_compose_as_diffusers_does(
    client, reference_pipeline, scheduler_config
):
    """blur feathers the seam into the image; an uploaded mask adds a region inside; strength < 1 starts
    from the edge-repeated fill. The result is diffusers' output composited through the mask used."""
    image = make_image(64, 64, seed=22)
    inner = np.zeros((64, 64), np.uint8)
    inner[40:56, 8:24] = 255
    result = client.inpaint(
        MODEL, png_bytes(image), png_bytes(inner), PROMPT, outpaint_top=64, outpaint_blur=12, width=64,
        height=128, strength=0.7, scheduler="Euler", **REQUEST,
    )  # fmt: skip
    served = decode_rgb(result.image)
    canvas, _ = _by_hand(image, 64, 0, 0, 0)
    used = decode_rgb(result.mask)[..., 0]
    assert served.shape == (128, 64, 3)
    assert (used[:64] == 255).all() and (used[64 + 40 : 64 + 56, 8:24] == 255).all()
    assert 0 < used[64 + 5, 32] < 255 and used[64 + 12, 32] == 0  # the ramp reaches 12 px into the image
    want = diffusers_inpaint(
        reference_pipeline, scheduler_config, canvas, used, PROMPT, "Euler", steps=8, strength=0.7,
        guidance=7.0, seed=31,
    )  # fmt: skip
    expected = composite(canvas, want, used.astype(np.float32) / 255)
    diff = np.abs(served.astype(int) - expected.astype(int))
    print(f"outpaint with blur 12 and a mask: max {diff.max()}/255 from diffusers composited")
    assert diff.max() <= TOLERANCE
    untouched = used == 0
    assert np.array_equal(served[untouched], canvas[untouched])


def test_the_gateway_takes_the_hosted_apis_outpaint_object(gateway):
    image = make_image(64, 64, seed=23)
    result = GatewayClient(gateway.url).inpaint(
        MODEL, png_bytes(image), None, PROMPT, outpaint_right=64, outpaint_bottom=64, steps=3, seed=2
    )
    served = decode_rgb(result.images[0])
    assert served.shape == (128, 128, 3)
    assert np.array_equal(served[:64, :64], image)


@pytest.mark.parametrize(
    ("fields", "parameter", "words"),
    [
        (
            {"width": 128, "height": 64},
            "width",
            "seedImage's width plus outpaint's left + right: 192, got 128",
        ),
        ({"outpaint": {"left": 64, "right": 64, "blur": 40}}, "outpaint.blur", "must be in [0, 32], got 40"),
        ({"outpaint": {"left": 100}}, "outpaint.left", "must be a multiple of 64, got 100"),
        ({"outpaint": {"left": 64, "up": 64}}, "outpaint.up", "is not a field of this task"),
        ({"outpaint": {"blur": 4}}, "maskImage", "send exactly one of maskImage, maskModel, maskPrompt"),
        (
            {"outpaint": {"top": 2048, "right": 2048, "bottom": 2048, "left": 2048}},
            "outpaint.top",
            "the canvas would be 4160x4160, more than 16777216 pixels; extend less",
        ),
    ],
)
def test_outpaint_refusals_name_the_field(gateway, fields, parameter, words):
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "positivePrompt": PROMPT,
        "seedImage": base64.b64encode(png_bytes(make_image(64, 64))).decode(), "steps": 2,
        "outpaint": {"left": 64, "right": 64}, **fields,
    }  # fmt: skip
    status, body = gateway.post("/v1", [task])
    assert status == 400, body
    (error,) = body["errors"]
    assert error["parameter"] == parameter and words in error["message"], error


def test_the_cli_outpaints_without_a_mask(triton_server, tmp_path):
    image = make_image(64, 64, seed=24)
    (tmp_path / "in.png").write_bytes(png_bytes(image))
    out = tmp_path / "out.png"
    command = [
        "inpaint", "--url", triton_server.grpc_url, "--model", MODEL, "--image", str(tmp_path / "in.png"),
        "--prompt", PROMPT, "--outpaint", "0,64,0,64", "--outpaint-blur", "4", "--steps", "2",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", *command], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    served = decode_rgb(out.read_bytes())
    assert served.shape == (64, 192, 3)
    assert np.array_equal(served[:, 64 + 4 : 128 - 4], image[:, 4:-4])  # beyond the 4 px feather: exact


def test_the_openapi_document_lists_the_outpaint_object(gateway):
    status, document = gateway.get_json("/openapi.json")
    assert status == 200
    outpaint = document["components"]["schemas"]["Outpaint"]
    assert list(outpaint["properties"]) == ["top", "right", "bottom", "left", "blur"]
    assert outpaint["properties"]["blur"]["anyOf"][0]["maximum"] == 32
