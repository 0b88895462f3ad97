"""In-flight batching as served: concurrent requests with different settings share UNet calls (seen in
Triton's own statistics) and each gets exactly the image it gets alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import MODEL
from tests.helpers import decode_rgb, irregular_mask, make_image, png_bytes
from triton_inpaint.client import InpaintClient

pytestmark = pytest.mark.server
IMAGE = png_bytes(make_image(64, 48, seed=9))
MASK = png_bytes(irregular_mask(64, 48))
# Guidance 1 (one UNet row a request) so that a call with more rows than one request's carries several.
REQUESTS = [
    {"steps": 12, "seed": 1, "guidance_scale": 1.0, "strength": 1.0, "scheduler": "DDIM"},
    {"steps": 9, "seed": 2, "guidance_scale": 1.0, "strength": 1.0, "scheduler": "Euler a"},
    {"steps": 10, "seed": 3, "guidance_scale": 1.0, "strength": 0.7, "scheduler": "DPM++ 2M"},
    {"steps": 11, "seed": 4, "guidance_scale": 1.0, "strength": 1.0, "scheduler": "UniPC"},
]


def _unet_counts(url: str) -> tuple[int, int]:
    client = grpcclient.InferenceServerClient(url)
    (stats,) = client.get_inference_statistics(f"{MODEL}_unet", as_json=True)["model_stats"]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_concurrent_requests_share_unet_calls_and_get_their_own_images(triton_server):
    def call(controls: dict) -> bytes:
        with InpaintClient(triton_server.grpc_url, "grpc") as client:
            return client.inpaint(MODEL, IMAGE, MASK, "a green vase", **controls).image

    alone = [call(controls) for controls in REQUESTS]
    rows_before, calls_before = _unet_counts(triton_server.grpc_url)
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(call, REQUESTS))
    rows_after, calls_after = _unet_counts(triton_server.grpc_url)

    for want, got in zip(alone, together, strict=True):
        assert np.abs(decode_rgb(got).astype(int) - decode_rgb(want).astype(int)).max() <= 1
    rows, calls = rows_after - rows_before, calls_after - calls_before
    steps = sum(int(r["steps"] * r["strength"]) for r in REQUESTS)
    print(f"{rows} UNet rows in {calls} calls: {rows / calls:.2f} rows a call")
    assert rows == steps  # one row per request and step, nothing repeated
    assert calls < rows  # calls carried several requests' rows
