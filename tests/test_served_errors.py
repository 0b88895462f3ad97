"""Bad input gets an error naming the input, and the server keeps serving after each."""

import numpy as np
import pytest

from tests.conftest import MODEL, MODEL_IDS
from tests.helpers import decode_rgb, irregular_mask, make_image, png_bytes
from triton_inpaint.client import InpaintClient, InpaintError

pytestmark = pytest.mark.server
IMAGE = png_bytes(make_image(64, 48))
MASK = png_bytes(irregular_mask(64, 48))


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"image": b"definitely not an image"}, "image: cannot be decoded"),
        ({"mask": b"\x89PNG\r\n\x1a\n broken"}, "mask: cannot be decoded"),
        ({"mask": png_bytes(irregular_mask(32, 48))}, "mask: size 32x48 does not match the image's 64x48"),
        ({"steps": 0}, "steps: must be an integer in [1, 100], got 0"),
        ({"steps": 101}, "steps: must be an integer in [1, 100], got 101"),
        ({"strength": 1.5}, "strength: must be a number in [0.0, 1.0], got 1.5"),
        ({"strength": -0.25}, "strength: must be a number in [0.0, 1.0], got -0.25"),
        ({"guidance_scale": 51.0}, "guidance_scale: must be a number in [0.0, 50.0]"),
        ({"scheduler": "Warp Drive"}, "scheduler: unknown scheduler 'Warp Drive'; choose one of: DDIM"),
        ({"width": 100}, "width: must be a multiple of 8, got 100"),
        ({"steps": 1, "strength": 0.3}, "strength: 0.3 with steps=1 leaves no denoising step"),
    ],
)
def test_bad_input_is_named_and_server_keeps_serving(client, overrides, expected):
    request = {"image": IMAGE, "mask": MASK, "prompt": "a hat", "steps": 2, "seed": 5, **overrides}
    with pytest.raises(InpaintError) as info:
        client.inpaint(MODEL, **request)
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)
    # The very next good request succeeds.
    ok = client.inpaint(MODEL, IMAGE, MASK, "a hat", steps=2, seed=5)
    assert decode_rgb(ok.image).shape == (48, 64, 3)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unknown_model_lists_the_served_ones(triton_server, protocol):
    url = triton_server.grpc_url if protocol == "grpc" else triton_server.http_url
    with InpaintClient(url, protocol) as c:
        served = sorted(MODEL_IDS)
        assert c.served_models() == served
        listed = ", ".join(f"{MODEL_IDS[name]} ({name})" for name in served)
        with pytest.raises(InpaintError) as info:
            c.inpaint("nonexistent", IMAGE, MASK, "a hat", steps=2)
    assert str(info.value) == f"model: 'nonexistent' is not served; served models: {listed}"


def test_bad_request_among_concurrent_good_ones(triton_server):
    """One failing request does not fail the others that Triton processes alongside it."""
    from concurrent.futures import ThreadPoolExecutor

    def call(steps: int):
        with InpaintClient(triton_server.grpc_url, "grpc") as c:
            try:
                return c.inpaint(MODEL, IMAGE, MASK, "a hat", steps=steps, seed=1).seed
            except InpaintError as exc:
                return str(exc)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(call, [2, 0, 2, 2]))
    assert results[0] == results[2] == results[3] == 1
    assert "steps" in results[1]
    assert np.array_equal(
        decode_rgb(
            InpaintClient(triton_server.http_url, "http").inpaint(MODEL, IMAGE, MASK, "x", steps=2).image
        ).shape,
        (48, 64, 3),
    )
