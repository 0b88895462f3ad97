"""Progress while a task denoises, through the gateway: an imageInference task sent with
includeProgress (or includePreviews) gets progress items in frames of their own over the WebSocket, as
server-sent events from ``POST /v1`` with ``Accept: text/event-stream``, and from getResponse while an
async task runs; the result is the one the same task gives without progress. A real gateway process in
front of the suite's Triton (which serves the streaming twins), real clients: websockets, httpx's
streaming reader, and the hosted API's older SDK, which must ignore the frames."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import decode_rgb, irregular_mask, make_image, png_bytes
from triton_inpaint.pipelines.previews import PREVIEW_SIDE

pytestmark = pytest.mark.server
KEY = "progress-key-0123456789"
PROMPT = "a lighthouse on a cliff"


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("progress-gateway")
    (data / "keys.txt").write_text(KEY + "\n")
    process = GatewayProcess(triton_server.grpc_url, data / "store", "--keys", str(data / "keys.txt"))
    with process:
        yield process


def _task(**fields) -> dict:
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "positivePrompt": PROMPT,
        "seedImage": base64.b64encode(png_bytes(make_image(96, 64, seed=4))).decode(),
        "maskImage": base64.b64encode(png_bytes(irregular_mask(96, 64))).decode(),
        "width": 96, "height": 64, "steps": 5, "strength": 1.0, "scheduler": "DDIM", "seed": 31,
        "outputType": "base64Data",
    }  # fmt: skip
    return task | fields


def _image(item: dict) -> np.ndarray:
    return decode_rgb(base64.b64decode(item["imageBase64Data"]))


def _check_progress(items: list[dict], task: dict, results: int, previews: bool) -> None:
    """Every step but the last once, in order (the last step's news is the result), in the hosted API's
    getResponse shape; previews decode as JPEGs."""
    total = items[0]["steps"]  # the scheduler's steps for the request (DDIM: the steps asked)
    assert total == task["steps"] and [item["step"] for item in items] == list(range(1, total)), items
    for item in items:
        assert item["taskUUID"] == task["taskUUID"] and item["taskType"] == "imageInference"
        assert item["status"] == "processing" and item["steps"] == total
        assert item["progress"] == 100 * item["step"] // total  # the result item is the 100 %
        # No key a result has: the newest SDK tells results by their URL/Base64Data/DataURI keys.
        result_keys = ("URL", "Base64Data", "DataURI", "imageUUID")
        assert not [key for key in item if key.endswith(result_keys)], item
        if previews:
            assert len(item["previewImages"]) == results
            for uri in item["previewImages"]:
                assert uri.startswith("data:image/jpeg;base64,")
                preview = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
                assert preview.format == "JPEG" and max(preview.size) <= PREVIEW_SIDE
        else:
            assert "previewImages" not in item


def _ws_url(gateway: GatewayProcess) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1"


async def _ws_frames(gateway: GatewayProcess, tasks: list[dict], results: int) -> list[dict]:
    """Every frame after authentication until ``results`` result items have come."""
    import websockets

    frames, got = [], 0
    async with websockets.connect(_ws_url(gateway), max_size=None) as ws:
        await ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY}]))
        assert "data" in json.loads(await ws.recv())
        await ws.send(json.dumps(tasks))
        while got < results:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
            frames.append(frame)
            assert "errors" not in frame, frame
            got += sum("imageBase64Data" in item for item in frame["data"])
    return frames


def test_websocket_progress_frames_come_before_the_result_which_is_unchanged(gateway):
    streamed = _task(includePreviews=True, numberResults=2)
    plain = _task(numberResults=2)
    frames = asyncio.run(_ws_frames(gateway, [streamed], 2))
    (plain_frame,) = asyncio.run(_ws_frames(gateway, [plain], 2))
    # One item per progress frame, every one before the result frame.
    *progress, result = frames
    assert all(len(frame["data"]) == 1 for frame in progress)
    _check_progress([frame["data"][0] for frame in progress], streamed, 2, previews=True)
    assert [item["seed"] for item in result["data"]] == [31, 32] == [i["seed"] for i in plain_frame["data"]]
    for got, want in zip(result["data"], plain_frame["data"], strict=True):
        assert "status" not in got
        assert np.array_equal(_image(got), _image(want))  # the streamed result is the plain one, exactly


def test_progress_without_previews_and_only_for_the_task_that_asked(gateway):
    asked, quiet = _task(includeProgress=True, seed=5), _task(seed=6)
    frames = asyncio.run(_ws_frames(gateway, [asked, quiet], 2))
    items = [item for frame in frames for item in frame["data"]]
    progress = [item for item in items if item.get("status") == "processing"]
    assert {item["taskUUID"] for item in progress} == {asked["taskUUID"]}
    _check_progress(progress, asked, 1, previews=False)


def _events(gateway: GatewayProcess, tasks: list[dict]) -> tuple[httpx.Response, list]:
    """POST /v1 as server-sent events: the response and each event's data (JSON, or "[DONE]")."""
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"}
    events = []
    with httpx.stream("POST", gateway.url + "/v1", json=tasks, headers=headers, timeout=120) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return response, events


def test_server_sent_events_carry_progress_results_and_errors_then_done(gateway):
    task = _task(includePreviews=True)
    bad = _task(steps=500)
    response, events = _events(gateway, [task, bad])
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert events[-1] == "[DONE]"
    (refused,) = [event for event in events[:-1] if "errors" in event]
    assert (
        refused["errors"][0]["parameter"] == "steps" and refused["errors"][0]["taskUUID"] == bad["taskUUID"]
    )
    data = [event["data"] for event in events[:-1] if "data" in event]
    *progress, (result,) = data
    _check_progress([items[0] for items in progress], task, 1, previews=True)
    assert result["taskUUID"] == task["taskUUID"] and result["seed"] == 31
    status, plain = gateway.post("/v1", [_task()], key=KEY)
    assert status == 200 and np.array_equal(_image(result), _image(plain["data"][0]))


def test_the_catalog_says_which_models_serve_progress(gateway, triton_server):
    from triton_inpaint.client import InpaintClient

    status, catalog = gateway.get_json("/v1/models", key=KEY)
    assert status == 200
    with InpaintClient(triton_server.grpc_url) as client:
        loaded = {info.name: info.progress for info in client.list_models()}
    assert {entry["name"]: entry["progress"] for entry in catalog["models"]} == loaded
    assert loaded[MODEL] is True  # the suite exports every model with its streaming twin


def test_a_plain_json_post_ignores_include_progress(gateway):
    """Without a stream to send them on, a task that asks for progress runs and answers as usual."""
    status, body = gateway.post("/v1", [_task(includeProgress=True)], key=KEY)
    assert status == 200 and [item.get("status") for item in body["data"]] == [None]
    status, body = gateway.post("/v1", [_task(includeProgress="often")], key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == "includeProgress"


def test_get_response_shows_an_async_tasks_progress(gateway):
    """An async task's progress is kept in the task store (any replica answers getResponse with it)."""
    task = _task(deliveryMethod="async", includeProgress=True, steps=60, width=256, height=256)
    task["seedImage"] = base64.b64encode(png_bytes(make_image(256, 256, seed=4))).decode()
    task["maskImage"] = base64.b64encode(png_bytes(irregular_mask(256, 256))).decode()
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200 and body["data"][0]["status"] == "processing", body
    seen, deadline = [], time.monotonic() + 180
    while time.monotonic() < deadline:
        status, body = gateway.post(
            "/v1", [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}], key=KEY
        )
        assert status == 200, body
        (item,) = body["data"]
        if item["status"] != "processing":
            break
        seen.append(item)
        time.sleep(0.05)
    assert item["status"] == "success" and item["seed"] == 31
    running = [entry for entry in seen if "step" in entry]
    assert running, f"no progress seen in {len(seen)} polls"
    steps = [entry["step"] for entry in running]
    assert steps == sorted(steps) and steps[0] >= 1 and steps[-1] < 60
    for entry in running:
        assert entry["taskUUID"] == task["taskUUID"] and entry["steps"] == 60
        assert entry["progress"] == 100 * entry["step"] // 60


def test_the_older_sdk_takes_only_its_images_when_progress_frames_come(gateway):
    """PyPI ``runware`` (WebSocket) keeps only items with an imageUUID: with progress asked through its
    extraArgs, it returns the same images as without."""
    from runware import IImageInference, Runware

    image = base64.b64encode(png_bytes(make_image(96, 64, seed=4))).decode()
    mask = base64.b64encode(png_bytes(irregular_mask(96, 64))).decode()

    async def scenario():
        sdk = Runware(api_key=KEY, url=_ws_url(gateway))
        await asyncio.wait_for(sdk.connect(), timeout=30)
        try:
            results = []
            for extra in ({"includePreviews": True}, {}):
                request = IImageInference(
                    model=MODEL, positivePrompt=PROMPT, seedImage=image, maskImage=mask, width=96, height=64,
                    steps=5, seed=41, numberResults=2, outputType="base64Data", extraArgs=extra,
                )  # fmt: skip
                results.append(await sdk.imageInference(requestImage=request))
            return results
        finally:
            await sdk.disconnect()

    streamed, plain = asyncio.run(asyncio.wait_for(scenario(), 240))
    assert [image.seed for image in streamed] == [41, 42] == [image.seed for image in plain]
    for got, want in zip(streamed, plain, strict=True):
        assert got.imageBase64Data == want.imageBase64Data


def test_the_gateway_client_streams_progress_as_the_triton_client_does(gateway, triton_server):
    """GatewayClient.inpaint(on_progress=...) reads the gateway's server-sent events: the same steps and
    result as InpaintClient over Triton's gRPC stream."""
    from triton_inpaint.client import GatewayClient, InpaintClient

    image, mask = png_bytes(make_image(96, 64, seed=4)), png_bytes(irregular_mask(96, 64))
    settings = {"steps": 6, "strength": 1.0, "scheduler": "DDIM", "seed": 8}
    over_gateway, over_triton = [], []
    with GatewayClient(gateway.url, KEY) as client:
        streamed = client.inpaint(
            MODEL, image, mask, PROMPT, on_progress=over_gateway.append, previews=True, **settings
        )
        plain = client.inpaint(MODEL, image, mask, PROMPT, **settings)
    with InpaintClient(triton_server.grpc_url) as client:
        direct = client.inpaint(
            MODEL, image, mask, PROMPT, on_progress=over_triton.append, previews=True, **settings
        )
    assert (
        [(p.step, p.total) for p in over_gateway]
        == [(p.step, p.total) for p in over_triton]
        == [(step, 6) for step in range(1, 6)]
    )
    assert [p.previews for p in over_gateway] == [p.previews for p in over_triton]  # the same JPEGs
    assert np.array_equal(decode_rgb(streamed.images[0]), decode_rgb(plain.images[0]))
    assert np.array_equal(decode_rgb(streamed.images[0]), decode_rgb(direct.images[0]))


@pytest.mark.parametrize("target", ["gateway", "grpc", "http"])
def test_the_cli_shows_the_steps_with_progress(gateway, triton_server, tmp_path, target):
    import subprocess
    import sys

    (tmp_path / "in.png").write_bytes(png_bytes(make_image(96, 64, seed=4)))
    (tmp_path / "mask.png").write_bytes(png_bytes(irregular_mask(96, 64)))
    where = {
        "gateway": ["--gateway", gateway.url, "--api-key", KEY],
        "grpc": ["--url", triton_server.grpc_url],
        "http": ["--url", triton_server.http_url, "--protocol", "http"],
    }[target]
    command = [
        sys.executable, "-m", "triton_inpaint.cli", "inpaint", *where, "--model", MODEL, "--progress",
        "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", PROMPT,
        "--steps", "4", "--strength", "1", "--scheduler", "DDIM", "--out", str(tmp_path / "out.png"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if target == "http":  # Triton streams only over gRPC: said in one line, nothing written
        assert done.returncode == 2 and "progress is streamed over gRPC only" in done.stderr, done.stderr
        assert not (tmp_path / "out.png").exists()
        return
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("step")] == [
        "step 1 of 4", "step 2 of 4", "step 3 of 4"
    ]  # fmt: skip
    assert decode_rgb((tmp_path / "out.png").read_bytes()).shape == (64, 96, 3)
