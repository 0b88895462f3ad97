"""image_masking served by Triton: detectors over BLS, the mask as PNG and the detections as JSON."""

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.helpers import png_bytes
from tests.test_detector_masks import ASTRONAUT_FACE, iou
from triton_inpaint.client import InpaintClient, InpaintError
from triton_inpaint.masks.detectors import MASKING_MODELS

pytestmark = pytest.mark.server
ASTRONAUT = png_bytes(skimage.data.astronaut())
BLANK = png_bytes(np.full((120, 160, 3), 200, dtype=np.uint8))


def decode_mask(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_face_mask_and_detection(triton_server, protocol):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with InpaintClient(url, protocol) as client:
        result = client.mask(ASTRONAUT, "face", padding=0, blur=0)
    (face,) = result.detections
    found = (face["x_min"], face["y_min"], face["x_max"], face["y_max"])
    print(f"served face {found} score {face['score']} IoU {iou(found, ASTRONAUT_FACE):.3f}")
    assert face["label"] == "face" and iou(found, ASTRONAUT_FACE) >= 0.7
    mask = decode_mask(result.mask)
    assert mask.shape == (512, 512) and (mask == 255).sum() == (found[2] - found[0]) * (found[3] - found[1])


def test_person_and_eyes(triton_server):
    with InpaintClient(triton_server.grpc_url) as client:
        person = decode_mask(client.mask(ASTRONAUT, "person").mask)
        eyes = client.mask(ASTRONAUT, "eyes", max_detections=1)
    assert 0.40 <= (person > 127).mean() <= 0.70
    assert [d["label"] for d in eyes.detections] == ["right_eye", "left_eye"]


@pytest.mark.parametrize("model", MASKING_MODELS)
def test_blank_image_is_empty_not_an_error(triton_server, model):
    with InpaintClient(triton_server.grpc_url) as client:
        result = client.mask(BLANK, model, invert=False)
    assert result.detections == [] and decode_mask(result.mask).max() == 0


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model": "elbows"}, "model: unknown masking model 'elbows'"),
        ({"confidence": 2.0}, "confidence: must be a number in [0.0, 1.0], got 2.0"),
        ({"image": b"not an image"}, "image: cannot be decoded"),
    ],
)
def test_bad_masking_requests_name_the_field(triton_server, overrides, expected):
    request = {"image": ASTRONAUT, "model": "face", **overrides}
    with InpaintClient(triton_server.grpc_url) as client:
        with pytest.raises(InpaintError) as info:
            client.mask(**request)
        assert expected in str(info.value)
        assert client.mask(BLANK, "face").detections == []


def run_cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_mask_cli_with_a_detector_and_with_a_prompt(triton_server, tmp_path):
    import json

    image = tmp_path / "astronaut.png"
    image.write_bytes(ASTRONAUT)
    out = tmp_path / "masks" / "face.png"
    done = run_cli(
        "mask",
        "--url",
        triton_server.grpc_url,
        "--detector",
        "face",
        "--image",
        str(image),
        "--out",
        str(out),
        "--padding",
        "0",
        "--blur",
        "0",
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    (face,) = printed["detections"]
    assert iou((face["x_min"], face["y_min"], face["x_max"], face["y_max"]), ASTRONAUT_FACE) >= 0.7
    assert decode_mask(out.read_bytes()).max() == 255
    background = tmp_path / "background.png"
    done = run_cli(
        "mask",
        "--url",
        triton_server.grpc_url,
        "--prompt",
        "the background",
        "--image",
        str(image),
        "--out",
        str(background),
        "--blur",
        "0",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prompt"] == "the background"
    person = decode_mask(client_mask_person(triton_server))
    assert np.array_equal(decode_mask(background.read_bytes()), 255 - person)


def client_mask_person(triton_server) -> bytes:
    with InpaintClient(triton_server.grpc_url) as client:
        return client.mask(ASTRONAUT, "person", blur=0).mask
