"""A model process killed under load (as the OOM killer would) is back in service by itself: readiness
says so at once, and requests succeed again within seconds, with no operator and no server restart."""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes
from triton_inpaint.client import InpaintClient

pytestmark = pytest.mark.server
IMAGE = png_bytes(make_image(64, 64, seed=8))
MASK = png_bytes(irregular_mask(64, 64))


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    with GatewayProcess(triton_server.grpc_url, tmp_path_factory.mktemp("healing")) as process:
        yield process


@pytest.mark.parametrize("role", ["unet", "vae_decoder"])
def test_a_killed_model_process_is_back_in_service_by_itself(triton_server, gateway, role):
    from triton_inpaint.supervisor import stubs_of

    model = f"{MODEL}_{role}"
    outcomes: list[tuple[float, float, bool]] = []  # (started, finished, succeeded)
    not_ready: dict[str, list[float]] = {"triton": [], "gateway": []}
    readiness = {
        "triton": f"http://{triton_server.http_url}/v2/health/ready",
        "gateway": f"{gateway.url}/readyz",
    }
    stop = threading.Event()

    def load() -> None:
        with InpaintClient(triton_server.grpc_url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    client.inpaint(MODEL, IMAGE, MASK, "a red apple", steps=2, seed=1)
                    ok = True
                except Exception:  # noqa: BLE001 - the failures are what is being counted
                    ok = False
                outcomes.append((started, time.monotonic(), ok))

    gateway_statuses: list[int] = []
    images = {"seedImage": base64.b64encode(IMAGE).decode(), "maskImage": base64.b64encode(MASK).decode()}
    task = {
        "taskType": "imageInference",
        "positivePrompt": "a red apple",
        "model": MODEL,
        "steps": 2,
        **images,
    }

    def gateway_load() -> None:
        while not stop.is_set():
            status, _ = gateway.post("/v1", [{**task, "taskUUID": str(uuid.uuid4())}])
            gateway_statuses.append(status)

    def watch_readiness() -> None:
        while not stop.is_set():
            for name, url in readiness.items():
                if not _ready(url):
                    not_ready[name].append(time.monotonic())
            time.sleep(0.05)

    threads = [threading.Thread(target=load) for _ in range(3)]
    threads += [threading.Thread(target=gateway_load), threading.Thread(target=watch_readiness)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while sum(ok for *_, ok in outcomes) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        (victim,) = [pid for pid, stub in stubs_of(triton_server.pid).items() if stub.model == model]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        back = None
        while time.monotonic() < killed_at + 30:
            later = [finished for started, finished, ok in outcomes if ok and started > killed_at + 0.5]
            if later and model in {name for name, _ in triton_server.supervisor.reloads}:
                back = min(later)
                break
            time.sleep(0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert back is not None, "requests did not succeed again within 30 s of the kill"
    # Through the gateway a model being restored is a 503 with Retry-After, never a 500.
    assert set(gateway_statuses) <= {200, 503} and gateway_statuses[-1] == 200, gateway_statuses
    failed = sum(not ok for *_, ok in outcomes)
    seconds = dict(triton_server.supervisor.reloads)[model]
    print(
        f"{model} killed under load: reloaded in {seconds:.1f} s, requests succeed again "
        f"{back - killed_at:.1f} s after the kill; {failed} of {len(outcomes)} requests failed meanwhile"
    )
    for name, moments in not_ready.items():
        assert any(moment > killed_at for moment in moments), (
            f"{name} readiness never reported the lost model"
        )
        assert _ready(readiness[name])
    with InpaintClient(triton_server.grpc_url) as client:  # and it stays in service
        for seed in range(3):
            assert client.inpaint(MODEL, IMAGE, MASK, "a red apple", steps=2, seed=seed).images
