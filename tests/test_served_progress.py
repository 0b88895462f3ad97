"""Progress and previews while a request runs, served: ``inpaint_<NAME>_stream`` answers a streamed
request with its progress every N steps (and small JPEG previews) before the result, and the result is
the image the plain ensemble gives; streamed and plain requests in flight together each equal their
result alone; refusals come back over the stream naming the field."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FLUX_MODEL, MODEL, SDXL_MODELS
from tests.helpers import decode_rgb, irregular_mask, make_image, png_bytes
from triton_inpaint.client import InpaintClient, InpaintError, Progress
from triton_inpaint.pipelines.previews import PREVIEW_SIDE

pytestmark = pytest.mark.server
PROMPT = "a lighthouse on a cliff"


@pytest.fixture(scope="module")
def client(triton_server):
    with InpaintClient(triton_server.grpc_url, "grpc") as c:
        yield c


def _request(seed: int = 3) -> tuple[bytes, bytes]:
    return png_bytes(make_image(64, 64, seed=seed)), png_bytes(irregular_mask(64, 64))


@pytest.mark.parametrize(
    ("model", "controls"),
    [
        (MODEL, {"steps": 6, "scheduler": "Euler a", "strength": 1.0, "num_images": 2}),
        (SDXL_MODELS["sdxl-inpaint"], {"steps": 5, "scheduler": "DPM++ 2M"}),
        (FLUX_MODEL, {"steps": 4, "width": 64, "height": 64}),
    ],
)
def test_progress_every_step_with_previews_then_the_plain_result(client, model, controls):
    image, mask = _request()
    plain = client.inpaint(model, image, mask, PROMPT, seed=11, **controls)
    seen: list[Progress] = []
    streamed = client.inpaint(
        model, image, mask, PROMPT, seed=11, on_progress=seen.append, previews=True, **controls
    )
    assert streamed.seeds == plain.seeds
    for ours, theirs in zip(streamed.images, plain.images, strict=True):
        assert np.array_equal(decode_rgb(ours), decode_rgb(theirs)), "streaming changed the result"
    total = seen[0].total
    assert [p.step for p in seen] == list(range(1, total)) and {p.total for p in seen} == {total}
    for progress in seen:
        assert len(progress.previews) == len(plain.images)
        preview = Image.open(io.BytesIO(progress.previews[0]))
        assert preview.format == "JPEG" and max(preview.size) <= PREVIEW_SIDE
    first, last = (np.asarray(Image.open(io.BytesIO(p.previews[0])), dtype=int) for p in (seen[0], seen[-1]))
    assert np.abs(first - last).max() > 0  # the previews follow the denoising


def test_progress_every_n_steps_without_previews(client):
    image, mask = _request()
    seen: list[Progress] = []
    settings = {"steps": 9, "strength": 1.0, "scheduler": "DDIM"}
    client.inpaint(MODEL, image, mask, PROMPT, on_progress=seen.append, progress_every=3, **settings)
    assert [(p.step, p.total) for p in seen] == [(3, 9), (6, 9)]
    assert all(p.previews == [] for p in seen)


def test_streamed_and_plain_requests_in_flight_together_equal_each_alone(client, triton_server):
    """The plain model and its streaming twin share the UNet and one memory budget; in flight together
    every request's images equal its images alone."""
    settings = [
        {"seed": 1, "steps": 8, "scheduler": "Euler a"},
        {"seed": 2, "steps": 6, "scheduler": "DDIM", "strength": 0.6},
        {"seed": 3, "steps": 7, "scheduler": "DPM++ 2M"},
        {"seed": 4, "steps": 5, "scheduler": "Euler", "num_images": 2},
    ]
    image, mask = _request(seed=5)

    def run(index: int, streamed: bool, sink: dict) -> None:
        with InpaintClient(triton_server.grpc_url) as own:  # one stream per client
            progress = (lambda _: None) if streamed else None
            result = own.inpaint(MODEL, image, mask, PROMPT, on_progress=progress, **settings[index])
            sink[index] = [decode_rgb(one) for one in result.images]

    alone: dict = {}
    for index in range(len(settings)):
        run(index, False, alone)
    together: dict = {}
    threads = [threading.Thread(target=run, args=(i, i % 2 == 0, together)) for i in range(len(settings))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(len(settings)):
        for one, batched in zip(alone[index], together[index], strict=True):
            assert np.array_equal(one, batched), f"request {index} differs in flight with the others"


def test_refusals_come_back_over_the_stream(client):
    image, mask = _request()
    with pytest.raises(InpaintError, match=r"steps: must be an integer in \[1, 100\], got 500"):
        client.inpaint(MODEL, image, mask, PROMPT, steps=500, on_progress=lambda _: None)
    with pytest.raises(InpaintError, match=r"progress_every: must be an integer in \[0, 100\], got 500"):
        client.inpaint(MODEL, image, mask, PROMPT, steps=2, on_progress=lambda _: None, progress_every=500)
    with pytest.raises(InpaintError, match=r"output_format: must be one of PNG, JPG, WEBP"):
        client.inpaint(MODEL, image, mask, PROMPT, steps=2, on_progress=lambda _: None, output_format="GIF")


def test_progress_needs_grpc(triton_server):
    image, mask = _request()
    with InpaintClient(triton_server.http_url, "http") as http, pytest.raises(ValueError, match="gRPC"):
        http.inpaint(MODEL, image, mask, PROMPT, steps=2, on_progress=lambda _: None)
    with InpaintClient(triton_server.grpc_url) as grpc:
        assert all(not name.endswith("_stream") for name in grpc.served_models())
