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
def triton_server(exported_repository):
    """A Triton of this file's own, serving the tiny model: the processes these tests kill and the
    models they unload belong to no other test (the session's server stays untouched whatever
    happens here)."""
    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.pipelines.spec import PipelineSpec
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    roles = PipelineSpec.load(repository / f"{MODEL}_denoise" / "1").network_tensors()
    models = [f"inpaint_{MODEL}", *(f"{MODEL}_{role}" for role in roles)]
    ports = free_port(), free_port(), free_port()
    server = TritonServer([BUILTIN_REPOSITORY, repository], *ports, models=models)
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    with GatewayProcess(triton_server.grpc_url, tmp_path_factory.mktemp("healing")) as process:
        yield process


@pytest.mark.parametrize("role", ["unet", "vae_decoder"])
def test_a_killed_model_process_is_back_in_service_by_itself(triton_server, gateway, role):
    from triton_inpaint.server.supervisor import stubs_of

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


def test_model_control_is_refused_without_the_admin_header(triton_server):
    """The attack of issue 27: anyone reaching Triton's ports unloaded a model. Now refused on both
    protocols, and the model still serves."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    model = f"inpaint_{MODEL}"
    for action in ("unload", "load"):
        url = f"http://{triton_server.http_url}/v2/repository/models/{model}/{action}"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=10)
        assert info.value.code == 403 and b"restricted" in info.value.read()
    wrong = {"triton-inpaint-admin": "guess"}
    request = urllib.request.Request(
        f"http://{triton_server.http_url}/v2/repository/models/{model}/unload", data=b"{}", headers=wrong
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 403
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    try:
        for call in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException, match="restricted"):
                call(model)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="restricted"):
            client.unload_model(model, headers={"triton-grpc-protocol-triton-inpaint-admin": "guess"})
        assert client.is_model_ready(model)
    finally:
        client.close()
    with InpaintClient(triton_server.grpc_url) as inpaint:  # what clients need stays open
        assert MODEL in inpaint.served_models()
        assert inpaint.inpaint(MODEL, IMAGE, MASK, "a red apple", steps=2, seed=1).images


@pytest.mark.parametrize("victim", [f"{MODEL}_unet", f"inpaint_{MODEL}"])
def test_a_model_unloaded_for_any_reason_is_loaded_again(triton_server, gateway, victim):
    """Loaded-but-not-ready is repaired too, not only a dead process: the supervisor's own (admin) path
    unloads a model, as an operator or a failed reload would leave it; the supervisor loads it again and
    Triton's readiness and the gateway's /readyz return to 200."""
    supervisor = triton_server.supervisor
    readiness = [f"http://{triton_server.http_url}/v2/health/ready", f"{gateway.url}/readyz"]
    reloads = len(supervisor.reloads)
    unloaded_at = time.monotonic()
    supervisor._control(victim, "unload")  # returns once Triton has unloaded it
    deadline = unloaded_at + 60
    while time.monotonic() < deadline and not (
        all(_ready(url) for url in readiness) and len(supervisor.reloads) > reloads
    ):
        time.sleep(0.1)
    restored = [name for name, _ in supervisor.reloads[reloads:]]
    assert restored == [victim], f"the supervisor restored {restored}"
    assert all(_ready(url) for url in readiness), "readiness did not return to 200 within 60 s"
    print(f"{victim} unloaded: loaded again and ready {time.monotonic() - unloaded_at:.1f} s later")
    with InpaintClient(triton_server.grpc_url) as client:
        assert MODEL in client.served_models()
        assert client.inpaint(MODEL, IMAGE, MASK, "a red apple", steps=2, seed=1).images
