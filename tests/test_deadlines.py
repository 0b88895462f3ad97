"""Deadlines that say what happened: a request that outlives its caller's wait is told so (the gateway's
504 naming its --timeout and what to do, the clients' DeadlineExceededError), distinct from a Triton
that does not answer (503). A real Triton, a real gateway process started with a short --timeout."""

from __future__ import annotations

import base64
import time
import uuid

import pytest

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes
from triton_inpaint.client import DeadlineExceededError, GatewayClient, InpaintClient, ServerUnreachableError

pytestmark = pytest.mark.server
TIMEOUT = 1.5  # seconds: the gateway's --timeout; a long request below takes several times that
LONG = {"steps": 100, "width": 512, "height": 512, "seed": 4}


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    process = GatewayProcess(
        triton_server.grpc_url, tmp_path_factory.mktemp("deadline-gateway"), "--timeout", str(TIMEOUT),
        "--rate", "100000",
    )  # fmt: skip
    with process:
        yield process


def _images() -> tuple[bytes, bytes]:
    return png_bytes(make_image(512, 512, seed=2)), png_bytes(irregular_mask(512, 512))


def _task(**fields) -> dict:
    image, mask = _images()
    return {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL,
        "positivePrompt": "a red apple", "seedImage": base64.b64encode(image).decode(),
        "maskImage": base64.b64encode(mask).decode(), "outputType": "base64Data", **LONG, **fields,
    }  # fmt: skip


SYNC_MESSAGE = f"took longer than {TIMEOUT:g} s (the gateway's --timeout); send it with deliveryMethod async"


def test_a_task_past_the_gateways_timeout_is_a_504_that_says_so(gateway):
    status, body = gateway.post("/v1", [_task()])
    assert status == 504, body
    (error,) = body["errors"]
    assert error["code"] == "timeout" and error["message"].startswith(SYNC_MESSAGE), error
    assert "not reachable" not in error["message"]
    # Counted apart from failures and refusals, so an operator sees work that outlived its callers.
    _, _, metrics = gateway.request("GET", "/metrics")
    assert b'gateway_tasks_total{outcome="timeout",task_type="imageInference"} 1.0' in metrics
    # The gateway client raises the same as InpaintClient does.
    image, mask = _images()
    with GatewayClient(gateway.url) as client, pytest.raises(DeadlineExceededError, match="--timeout"):
        client.inpaint(MODEL, image, mask, "a red apple", **LONG)


def test_an_async_task_past_the_timeout_fails_saying_to_raise_it(gateway):
    task = _task(deliveryMethod="async")
    status, body = gateway.post("/v1", [task])
    assert status == 200 and body["data"][0]["status"] == "processing", body
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, body = gateway.post("/v1", [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}])
        if body.get("errors"):
            break
        time.sleep(0.2)
    (error,) = body["errors"]
    assert error["message"] == f"took longer than {TIMEOUT:g} s (the gateway's --timeout); raise --timeout"


def test_the_triton_client_tells_a_deadline_from_an_unreachable_server(triton_server):
    image, mask = _images()
    expected = "took longer than 1 s \\(the client's timeout\\)"
    with InpaintClient(triton_server.grpc_url, "grpc", timeout=1) as client, pytest.raises(
        DeadlineExceededError, match=expected
    ):
        client.inpaint(MODEL, image, mask, "a red apple", **LONG)
    with InpaintClient("127.0.0.1:1", "grpc", timeout=5) as client, pytest.raises(ServerUnreachableError):
        client.inpaint(MODEL, image, mask, "a red apple", steps=2)
