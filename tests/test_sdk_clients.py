"""The hosted API's other official SDKs against the gateway, with only their URLs and key changed:
PyPI ``runware-sdk`` (REST and WebSocket) in its own virtual environment, and npm ``@runware/sdk-js``
under node. Both are installed before the tests from the pins in tests/sdk/ by ``python -m
tests.prepare`` (package registries only), and each runs its workflow script there against a real
gateway and Triton."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import prepare
from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes

pytestmark = pytest.mark.server
SDK = Path(__file__).resolve().parent / "sdk"
KEY = "sdk-clients-key-0123456789"
IDLE_SECONDS = 60  # the JS SDK's connection idles this long on heartbeats alone, then works


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("sdk-clients")
    (data / "keys.txt").write_text(f"{KEY}\n")
    process = GatewayProcess(
        triton_server.grpc_url, data / "store", "--keys", str(data / "keys.txt"), "--rate", "100000"
    )
    with process:
        yield process


def _inputs(gateway: GatewayProcess, path: Path) -> Path:
    image, mask = png_bytes(make_image(128, 96)), png_bytes(irregular_mask(128, 96))
    mask_b64 = base64.b64encode(mask).decode()
    image256, mask256 = png_bytes(make_image(256, 256)), png_bytes(irregular_mask(256, 256))
    ws = gateway.url.replace("http://", "ws://") + "/v1"
    values = {
        "url": ws, "ws_url": ws, "http_url": gateway.url + "/v1", "key": KEY, "model": MODEL,
        "prompt": "a red apple on a wooden table", "width": 128, "height": 96,
        "image_b64": base64.b64encode(image).decode(), "mask_b64": mask_b64,
        "mask_data_uri": f"data:image/png;base64,{mask_b64}", "idle_seconds": IDLE_SECONDS,
        "image256_b64": base64.b64encode(image256).decode(),
        "mask256_b64": base64.b64encode(mask256).decode(),
    }  # fmt: skip
    path.write_text(json.dumps(values))
    return path


@pytest.fixture(scope="module")
def runware_sdk_python() -> Path:
    """The interpreter of runware-sdk's own environment (it installs a ``runware`` module, as the
    WebSocket SDK in the test environment does)."""
    if not prepare.RUNWARE_SDK.ready():
        pytest.fail(prepare.RUNWARE_SDK.missing())
    return prepare.runware_sdk_python()


@pytest.fixture(scope="module")
def js_sdk() -> Path:
    """The folder where @runware/sdk-js is installed from tests/sdk/js's lock file."""
    if not prepare.JS_SDK_MODULES.ready():
        pytest.fail(prepare.JS_SDK_MODULES.missing())
    return prepare.JS_SDK


def _report(command: list[str], cwd: Path, timeout: float) -> dict:
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def _images(result: list | dict) -> list[dict]:
    return result if isinstance(result, list) else [result]


def test_runware_sdk_over_rest_and_websocket(gateway, runware_sdk_python, tmp_path):
    script = SDK / "runware_sdk_workflow.py"
    report = _report(
        [str(runware_sdk_python), str(script), str(_inputs(gateway, tmp_path / "in.json"))], tmp_path, 600
    )
    for transport in ("rest", "websocket"):
        step = {
            name.removeprefix(f"{transport}_"): value
            for name, value in report.items()
            if name.startswith(transport)
        }
        assert step["upload"]["ok"][0]["imageURL"].startswith(gateway.url), (transport, step["upload"])
        two = step["inpaint_two"]["ok"]  # the SDK's default: deliveryMethod async, then getResponse
        assert [item["seed"] for item in two] == [7, 8] and all(item["imageURL"] for item in two)
        assert step["next_edit"]["ok"][0]["seed"] == 9  # the previous result's UUID as the next seedImage
        assert step["data_uri"]["ok"][0]["imageUUID"]
        assert step["masking"]["ok"][0]["maskImageURL"]
        assert step["background"]["ok"][0]["imageURL"].endswith(".png")
        assert step["out_of_range"]["error"]["parameter"] == "steps", step["out_of_range"]
        assert step["out_of_range"]["error"]["code"] == "validation"  # the SDK's category for a refused value
        assert step["wrong_key"]["error"]["code"] == "auth", step["wrong_key"]
        # includeProgress: the SDK's on_progress gets the gateway's progress items, its result the image.
        progress = step["progress"]
        assert progress["ok"][0]["seed"] == 3 and progress["ok"][0]["imageURL"], progress
        assert progress["seen"], f"{transport}: on_progress was never called"
        for item in progress["seen"]:
            assert item["status"] == "processing" and 0 <= item["progress"] < 100, item
            assert 1 <= item["step"] < item["steps"]
        if transport == "websocket":  # every step's frame, with its preview
            assert [item["step"] for item in progress["seen"]] == list(range(1, progress["seen"][0]["steps"]))
            assert {item["previews"] for item in progress["seen"]} == {1}


def test_js_sdk_over_websocket_including_a_minute_idle_on_heartbeats(gateway, js_sdk, tmp_path):
    command = ["node", "workflow.mjs", str(_inputs(gateway, tmp_path / "in.json"))]
    report = _report(command, js_sdk, 600)
    assert report["upload"]["ok"]["imageURL"].startswith(gateway.url), report["upload"]
    assert [item["seed"] for item in report["inpaint_uploaded_two"]["ok"]] == [7, 8]
    assert report["inpaint_data_uri"]["ok"][0]["seed"] == 8
    assert report["next_edit"]["ok"][0]["seed"] == 9
    assert _images(report["masking"]["ok"])[0]["maskImageURL"]
    assert _images(report["background"]["ok"])[0]["imageURL"].endswith(".png")
    error = report["out_of_range"]["error"]
    assert (
        error["parameter"] == "steps"
        and error["code"] == "invalidParameter"
        and error["taskType"] == "imageInference"
    )
    assert report["wrong_key"]["error"]["code"] == "invalidApiKey"
    # A minute of heartbeats (one ping every 10 s, each answered), then a task on the same session.
    assert report["idle"]["same_session"] and report["idle"]["pongs"] >= IDLE_SECONDS // 10 - 1
    assert report["after_idle"]["ok"]["imageUUID"]


def test_runware_sdk_waits_out_a_gateway_restart_during_an_async_task(
    triton_server, runware_sdk_python, tmp_path
):
    """The gateway stops while the SDK's async task runs and comes back on the same port and store:
    the task is picked up again and the SDK, polling getResponse, gets its image."""
    import sqlite3
    import time

    (tmp_path / "keys.txt").write_text(f"{KEY}\n")
    store = tmp_path / "store"
    options = ("--keys", str(tmp_path / "keys.txt"), "--rate", "100000")
    first = GatewayProcess(triton_server.grpc_url, store, *options).start()
    script = [
        str(runware_sdk_python),
        str(SDK / "runware_sdk_workflow.py"),
        str(_inputs(first, tmp_path / "in.json")),
    ]
    sdk = subprocess.Popen([*script, "restart"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        statuses: list[str] = []
        while not statuses and time.monotonic() < deadline and sdk.poll() is None:
            time.sleep(0.1)
            if (store / "gateway.sqlite3").is_file():
                with sqlite3.connect(store / "gateway.sqlite3") as db:
                    statuses = [row[0] for row in db.execute("SELECT status FROM tasks")]
        first.stop()
        assert statuses in (["pending"], ["running"]), f"the restart must land mid-task, found {statuses}"
        second = GatewayProcess(triton_server.grpc_url, store, *options, port=first.port).start()
        try:
            out, err = sdk.communicate(timeout=300)
        finally:
            second.stop()
    finally:
        if sdk.poll() is None:
            sdk.kill()
    assert sdk.returncode == 0, err[-3000:]
    (item,) = json.loads(out)["restart"]["ok"]
    assert item["seed"] == 5 and item["imageURL"].startswith(first.url)
