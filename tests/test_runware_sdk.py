"""The hosted API's official Python SDK (PyPI ``runware``, WebSocket only) pointed at the gateway with
only its URL and key changed: a real gateway process and Triton, the SDK's own connection, heartbeat,
request builders and response parsers."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from runware import IAcceleratorOptions, IImageInference, ILora, IOutpaint, Runware
from runware.utils import RunwareAPIError

from tests.conftest import BASE_MODEL, LORA_ADAPTERS, MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import decode_rgb, irregular_mask, make_image, png_bytes

pytestmark = pytest.mark.server
KEY = "sdk-key-0123456789"
OTHER_KEY = "other-key-0123456789"
PROMPT = "a red apple on a wooden table"


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("sdk-gateway")
    keys = data / "keys.txt"
    keys.write_text(f"{KEY}\n{OTHER_KEY}\n")
    process = GatewayProcess(
        triton_server.grpc_url, data / "store", "--keys", str(keys), "--rate", "100000", "--max-body-mb", "8"
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def ws_url(gateway: GatewayProcess) -> str:
    return gateway.url.replace("http://", "ws://") + "/v1"


async def _connected(gateway: GatewayProcess, key: str = KEY) -> Runware:
    sdk = Runware(api_key=key, url=ws_url(gateway))
    await asyncio.wait_for(sdk.connect(), timeout=30)
    return sdk


def _run(coroutine, timeout: float = 240):
    return asyncio.run(asyncio.wait_for(coroutine, timeout=timeout))


def test_upload_then_inpaint_with_the_uploaded_image_and_a_mask_file(gateway, tmp_path):
    image, mask = make_image(160, 96), irregular_mask(160, 96)
    (tmp_path / "photo.png").write_bytes(png_bytes(image))
    mask_path = tmp_path / "mask.png"
    mask_path.write_bytes(png_bytes(mask))

    async def scenario():
        sdk = await _connected(gateway)
        try:
            uploaded = await sdk.uploadImage(str(tmp_path / "photo.png"))
            request = IImageInference(
                model=MODEL, positivePrompt=PROMPT, seedImage=uploaded.imageUUID, maskImage=str(mask_path),
                width=160, height=96, steps=4, strength=0.8, seed=11, numberResults=2, outputFormat="PNG",
            )  # fmt: skip
            return uploaded, await sdk.imageInference(requestImage=request)
        finally:
            await sdk.disconnect()

    uploaded, images = _run(scenario())
    assert uploaded.imageURL.endswith(f"/images/{uploaded.imageUUID}.png")
    assert [image.seed for image in images] == [11, 12]
    for result in images:
        status, _, data = gateway.request("GET", result.imageURL.removeprefix(gateway.url))
        served = decode_rgb(data)
        assert status == 200 and served.shape == image.shape
        # Outside the mask the input comes back exactly: the SDK's request reached the real pipeline.
        assert (served[mask == 0] == image[mask == 0]).all()


def test_a_result_feeds_the_next_edit_and_inline_masks_work(gateway):
    image, mask = make_image(128, 128), irregular_mask(128, 128)
    data_uri = "data:image/png;base64," + base64.b64encode(png_bytes(mask)).decode()

    async def scenario():
        sdk = await _connected(gateway)
        try:
            first = await sdk.imageInference(requestImage=IImageInference(
                model=MODEL, positivePrompt=PROMPT, seedImage=base64.b64encode(png_bytes(image)).decode(),
                maskImage=data_uri, steps=3, seed=5, width=128, height=128,
            ))  # fmt: skip
            second = await sdk.imageInference(requestImage=IImageInference(
                model=MODEL, positivePrompt="a green pear", seedImage=first[0].imageUUID,
                maskImage=data_uri, steps=3, seed=6, width=128, height=128,
            ))  # fmt: skip
            return first, second
        finally:
            await sdk.disconnect()

    first, second = _run(scenario())
    assert first[0].imageUUID != second[0].imageUUID and second[0].seed == 6


def test_the_sdks_outpaint_extends_the_canvas(gateway):
    """The SDK's own IOutpaint, sent as the hosted API documents it: width and height are the seed
    image's plus the extensions, and no mask is needed."""
    image = make_image(64, 64, seed=3)

    async def scenario():
        sdk = await _connected(gateway)
        try:
            request = IImageInference(
                model=MODEL, positivePrompt=PROMPT, seedImage=base64.b64encode(png_bytes(image)).decode(),
                outpaint=IOutpaint(top=64, right=0, bottom=0, left=64, blur=0), width=128, height=128,
                steps=3, seed=8, outputType="base64Data", outputFormat="PNG",
            )  # fmt: skip
            return await sdk.imageInference(requestImage=request)
        finally:
            await sdk.disconnect()

    (result,) = _run(scenario())
    served = decode_rgb(base64.b64decode(result.imageBase64Data))
    assert served.shape == (128, 128, 3) and result.seed == 8
    assert np.array_equal(served[64:, 64:], image)  # the seed image, exactly, in its place on the canvas


def test_the_sdks_lora_list_applies_the_adapters_at_their_weights(gateway, triton_server):
    """The SDK's own ILora items, sent as the hosted API documents them, give what the Triton client
    gets with the same adapters and weights; an adapter the model lacks is the SDK's error naming it."""
    from triton_inpaint.client import InpaintClient

    image, mask = make_image(64, 64, seed=4), irregular_mask(64, 64)
    ink, glow = LORA_ADAPTERS[BASE_MODEL]
    settings = {"steps": 3, "seed": 12, "width": 64, "height": 64}

    async def scenario():
        sdk = await _connected(gateway)
        try:
            request = IImageInference(
                model=BASE_MODEL, positivePrompt=PROMPT, outputType="base64Data",
                seedImage=base64.b64encode(png_bytes(image)).decode(),
                maskImage=base64.b64encode(png_bytes(mask)).decode(),
                outputFormat="PNG", lora=[ILora(model=ink, weight=1.5), ILora(model=glow, weight=-0.5)],
                **settings,
            )  # fmt: skip
            result = await sdk.imageInference(requestImage=request)
            request.lora = [ILora(model="local:absent@1", weight=1.0)]
            with pytest.raises(RunwareAPIError) as raised:
                await sdk.imageInference(requestImage=request)
            return result, raised.value
        finally:
            await sdk.disconnect()

    (result,), error = _run(scenario())
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        direct = client.inpaint(
            BASE_MODEL, png_bytes(image), png_bytes(mask), PROMPT, lora=[(ink, 1.5), (glow, -0.5)], **settings
        )
    assert np.array_equal(decode_rgb(base64.b64decode(result.imageBase64Data)), decode_rgb(direct.image))
    assert error.error_data["parameter"] == "lora[0].model"
    assert ink in error.error_data["message"] and "local:absent@1" in error.error_data["message"]


def test_the_sdks_accelerator_options_cache_steps(gateway, triton_server):
    """The SDK's own IAcceleratorOptions, sent unchanged, give what the Triton client gets with the same
    step caching; a cache the model lacks is the SDK's error naming the field."""
    from triton_inpaint.client import InpaintClient

    image, mask = make_image(64, 64, seed=14), irregular_mask(64, 64)
    settings = {"steps": 6, "seed": 21, "width": 64, "height": 64}
    options = IAcceleratorOptions(deepCache=True, deepCacheInterval=2, deepCacheBranchId=1)

    async def scenario():
        sdk = await _connected(gateway)
        try:
            request = IImageInference(
                model=MODEL, positivePrompt=PROMPT, outputType="base64Data", outputFormat="PNG",
                seedImage=base64.b64encode(png_bytes(image)).decode(),
                maskImage=base64.b64encode(png_bytes(mask)).decode(),
                acceleratorOptions=options, **settings,
            )  # fmt: skip
            result = await sdk.imageInference(requestImage=request)
            request.acceleratorOptions = IAcceleratorOptions(fbcache=True, cacheDistance=0.2)
            with pytest.raises(RunwareAPIError) as raised:
                await sdk.imageInference(requestImage=request)
            return result, raised.value
        finally:
            await sdk.disconnect()

    (result,), error = _run(scenario())
    with InpaintClient(triton_server.grpc_url, "grpc") as client:
        direct = client.inpaint(
            MODEL, png_bytes(image), png_bytes(mask), PROMPT, deep_cache=True, deep_cache_interval=2,
            deep_cache_branch_id=1, **settings,
        )  # fmt: skip
    assert np.array_equal(decode_rgb(base64.b64decode(result.imageBase64Data)), decode_rgb(direct.image))
    assert error.error_data["parameter"] == "acceleratorOptions.fbcache"


def test_an_out_of_range_value_is_the_sdks_error_naming_the_parameter(gateway):
    async def scenario():
        sdk = await _connected(gateway)
        try:
            image = base64.b64encode(png_bytes(make_image())).decode()
            mask = base64.b64encode(png_bytes(irregular_mask())).decode()
            request = IImageInference(
                model=MODEL, positivePrompt=PROMPT, seedImage=image, maskImage=mask, steps=500
            )
            with pytest.raises(RunwareAPIError) as raised:
                await sdk.imageInference(requestImage=request)
            # The connection survives the refusal: the next task on it works.
            uploaded = await sdk.uploadImage(base64.b64encode(png_bytes(make_image(64, 64))).decode())
            return raised.value, uploaded
        finally:
            await sdk.disconnect()

    error, uploaded = _run(scenario())
    assert error.code == "invalidParameter" and error.error_data["parameter"] == "steps"
    assert "steps" in error.error_data["message"] and error.error_data["taskType"] == "imageInference"
    assert uploaded.imageUUID


def test_a_wrong_key_is_the_sdks_authentication_error(gateway):
    async def scenario():
        sdk = Runware(api_key="not-a-key", url=ws_url(gateway))
        try:
            await asyncio.wait_for(sdk.connect(), timeout=30)
            return sdk._invalidAPIkey
        finally:
            await sdk.disconnect()

    message = _run(scenario())
    assert message and "invalid API key" in message


def test_raw_protocol_ping_auth_order_and_one_frame_per_task(gateway):
    """What the SDKs rely on, frame by frame: the upgrade needs no key (query strings are fine), tasks
    before authentication are refused without closing, pings are answered at once, and each task's
    result comes in its own frame correlated by taskUUID."""
    import uuid

    import websockets

    async def scenario():
        async with websockets.connect(ws_url(gateway) + "?sdk=js&version=1.0") as ws:
            upload = {"taskType": "imageUpload", "taskUUID": str(uuid.uuid4()),
                      "image": base64.b64encode(png_bytes(make_image(64, 64))).decode()}  # fmt: skip
            await ws.send(json.dumps([upload]))
            refused = json.loads(await ws.recv())
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY}]))
            auth = json.loads(await ws.recv())
            await ws.send(
                json.dumps([upload, {"taskType": "ping", "ping": True}, {"taskType": "imageUpload"}])
            )
            frames = [json.loads(await ws.recv()) for _ in range(3)]
            await ws.send(json.dumps([{"taskType": "ping", "ping": True}] * 17))  # more than POST /v1 takes
            too_many = json.loads(await ws.recv())
            return refused, auth, frames, upload["taskUUID"], too_many

    refused, auth, frames, task_uuid, too_many = _run(scenario())
    assert too_many["errors"][0]["message"].startswith("message: send 1-16 tasks")
    (error,) = refused["errors"]
    assert error["code"] == "invalidApiKey" and error["taskUUID"] == task_uuid
    (session,) = auth["data"]
    assert session["taskType"] == "authentication" and "taskUUID" not in session
    assert len(session["connectionSessionUUID"]) == 36
    assert {"data": [{"taskType": "ping", "pong": True}]} in frames
    (invalid,) = [frame for frame in frames if "errors" in frame]
    assert "taskUUID" in {error["parameter"] for error in invalid["errors"]}
    (uploaded,) = [item for frame in frames for item in frame.get("data", []) if "imageUUID" in item]
    assert uploaded["taskUUID"] == task_uuid and uploaded["imageURL"].startswith("http://")


def test_a_message_over_the_body_cap_closes_only_that_connection(gateway):
    """The gateway's body limit holds for WebSocket messages too; other connections are unaffected."""
    import websockets

    async def scenario():
        async with websockets.connect(ws_url(gateway), max_size=None) as ws:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY}]))
            await ws.recv()
            await ws.send("[" + " " * (9 * 1024 * 1024) + "]")  # over this gateway's 8 MiB cap
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        sdk = await _connected(gateway)
        await sdk.disconnect()
        return closed.value.rcvd.code

    assert _run(scenario(), timeout=60) == 1009  # "message too big"


def _inference_task(**fields) -> dict:
    import uuid

    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "positivePrompt": PROMPT,
        "seedImage": base64.b64encode(png_bytes(make_image(96, 64))).decode(),
        "maskImage": base64.b64encode(png_bytes(irregular_mask(96, 64))).decode(),
        "width": 96, "height": 64, "steps": 3, "seed": 21,
    }  # fmt: skip
    return task | fields


def test_async_delivery_with_the_sdk_acknowledges_then_get_response_returns_the_images(gateway):
    async def scenario():
        sdk = await _connected(gateway)
        try:
            request = IImageInference(
                model=MODEL, positivePrompt=PROMPT, deliveryMethod="async", numberResults=2, steps=3, seed=3,
                seedImage=base64.b64encode(png_bytes(make_image(96, 64))).decode(), width=96, height=64,
                maskImage=base64.b64encode(png_bytes(irregular_mask(96, 64))).decode(),
            )  # fmt: skip
            accepted = await sdk.imageInference(requestImage=request)
            images = await sdk.getResponse(taskUUID=accepted.taskUUID, numberResults=2)
            return accepted, images
        finally:
            await sdk.disconnect()

    accepted, images = _run(scenario())
    assert accepted.taskType == "imageInference"
    assert [image.seed for image in images] == [3, 4] and all(image.status == "success" for image in images)
    assert {image.taskUUID for image in images} == {accepted.taskUUID}


def test_async_results_are_pushed_in_their_own_frame_over_the_websocket(gateway):
    import websockets

    # 100 steps at 256 px: seconds on the tiny model, so the getResponse below finds it running.
    task = _inference_task(deliveryMethod="async", steps=100, width=256, height=256)

    async def scenario():
        async with websockets.connect(ws_url(gateway)) as ws:
            await ws.send(json.dumps([{"taskType": "authentication", "apiKey": KEY}]))
            await ws.recv()
            await ws.send(json.dumps([task]))
            ack = json.loads(await ws.recv())
            await ws.send(json.dumps([{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]))
            polled = json.loads(await ws.recv())
            pushed = json.loads(await ws.recv())
            await asyncio.sleep(1.5)  # a second push, if any, would come within the follower's 0.5 s
            await ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
            return ack, pushed, polled, json.loads(await ws.recv())

    ack, pushed, polled, after = _run(scenario())
    assert ack == {
        "data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"], "status": "processing"}]
    }
    assert polled["data"][0]["status"] == "processing"
    # The poll was only answered: the results were pushed once, and the next frame is the pong.
    assert after == {"data": [{"taskType": "ping", "pong": True}]}
    (item,) = pushed["data"]
    assert item["status"] == "success" and item["taskUUID"] == task["taskUUID"] and item["seed"] == 21


def _poll(gateway, task_uuid, key=KEY, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while True:
        status, body = gateway.post("/v1", [{"taskType": "getResponse", "taskUUID": task_uuid}], key=key)
        processing = status == 200 and body["data"] and body["data"][0].get("status") == "processing"
        if not processing or time.monotonic() > deadline:
            return status, body
        time.sleep(0.3)


def test_async_over_rest_is_polled_with_get_response_and_belongs_to_its_key(gateway):
    task = _inference_task(deliveryMethod="async", numberResults=2)
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200 and body["data"][0]["status"] == "processing", body
    status, body = _poll(gateway, task["taskUUID"])
    assert status == 200 and [item["status"] for item in body["data"]] == ["success", "success"]
    assert [item["seed"] for item in body["data"]] == [21, 22]
    # The same task again (a client retrying) is the one task: answered with its results, nothing rerun.
    status, again = gateway.post("/v1", [task], key=KEY)
    assert status == 200 and again["data"] == body["data"]
    # Another task under that UUID is refused; a failed async task answers its error at getResponse.
    status, body = gateway.post("/v1", [{**task, "seed": 99}], key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == "taskUUID"
    assert "already used by another async task" in body["errors"][0]["message"]
    bad = _inference_task(deliveryMethod="async", model="no-such-model")
    assert gateway.post("/v1", [bad], key=KEY)[0] == 200
    status, body = _poll(gateway, bad["taskUUID"])
    (error,) = body["errors"]
    assert error["taskUUID"] == bad["taskUUID"] and error["taskType"] == "imageInference"
    assert error["parameter"] == "model" and "no-such-model" in error["message"]
    # Another key sees nothing of this key's tasks.
    status, body = _poll(gateway, task["taskUUID"], key=OTHER_KEY)
    assert status == 400 and body["errors"][0]["code"] == "notFound"


def test_an_async_task_survives_a_gateway_restart(triton_server, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    task = _inference_task(deliveryMethod="async", steps=8)
    store = tmp_path / "store"
    first = GatewayProcess(triton_server.grpc_url, store, "--keys", str(keys), "--rate", "100000").start()
    try:
        status, body = first.post("/v1", [task], key=KEY)
        assert status == 200 and body["data"][0]["status"] == "processing"
    finally:
        first.stop()  # probably mid-task: the worker thread is stopped with the process
    with GatewayProcess(triton_server.grpc_url, store, "--keys", str(keys), "--rate", "100000") as second:
        status, body = _poll(second, task["taskUUID"])
    assert status == 200 and body["data"][0]["status"] == "success" and body["data"][0]["seed"] == 21


def test_background_removal_with_the_sdk_cuts_out_the_person_mask(gateway, tmp_path):
    """imageBackgroundRemoval (an SDK method, which uploads the local file first): an RGBA PNG whose
    alpha is the served person segmentation's mask and whose colour is the input's."""
    import io

    import numpy as np
    from PIL import Image
    from runware import IImageBackgroundRemoval

    image = make_image(128, 96)
    path = tmp_path / "portrait.png"
    path.write_bytes(png_bytes(image))

    async def scenario():
        sdk = await _connected(gateway)
        try:
            request = IImageBackgroundRemoval(inputImage=str(path), outputFormat="PNG")
            return await sdk.imageBackgroundRemoval(removeImageBackgroundPayload=request)
        finally:
            await sdk.disconnect()

    (result,) = _run(scenario())
    status, _, data = gateway.request("GET", result.imageURL.removeprefix(gateway.url))
    cut = np.asarray(Image.open(io.BytesIO(data)))
    assert status == 200 and cut.shape == (96, 128, 4)
    masking = {"taskType": "imageMasking", "taskUUID": _inference_task()["taskUUID"], "model": "person",
               "maskPadding": 0, "maskBlur": 0, "outputType": "base64Data",
               "inputImage": base64.b64encode(png_bytes(image)).decode()}  # fmt: skip
    status, body = gateway.post("/v1", [masking], key=KEY)
    mask = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(body["data"][0]["maskImageBase64Data"]))).convert("L")
    )
    assert np.abs(cut[..., 3].astype(int) - mask.astype(int)).max() <= 1
    opaque = cut[..., 3] == 255
    assert (cut[..., :3][opaque] == image[opaque]).all()


@pytest.mark.parametrize(
    ("settings", "check"),
    [
        ({"rgba": [0, 0, 255, 255]}, lambda out: out.shape[-1] == 4 and (out[..., 3] == 255).all()),
        ({"settings": {"returnOnlyMask": True}}, lambda out: out.ndim == 3 and out.shape[-1] == 3),
    ],
)
def test_background_removal_settings(gateway, settings, check):
    import io

    import numpy as np
    from PIL import Image

    image = base64.b64encode(png_bytes(make_image(64, 64))).decode()
    task_uuid = _inference_task()["taskUUID"]
    task = {
        "taskType": "removeBackground",
        "taskUUID": task_uuid,
        "outputType": "base64Data",
        "inputImage": image,
    }
    task |= settings
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 200, body
    assert check(np.asarray(Image.open(io.BytesIO(base64.b64decode(body["data"][0]["imageBase64Data"])))))


def test_background_removal_refuses_alpha_matting_by_name(gateway):
    image = base64.b64encode(png_bytes(make_image(64, 64))).decode()
    task_uuid = _inference_task()["taskUUID"]
    task = {
        "taskType": "imageBackgroundRemoval",
        "taskUUID": task_uuid,
        "alphaMatting": True,
        "inputImage": image,
    }
    status, body = gateway.post("/v1", [task], key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == "alphaMatting"


def test_the_inputs_form_of_an_inference_task(gateway):
    """The SDK's ``inputs: {image, mask}`` form stands for seedImage and maskImage, over the
    WebSocket and for async tasks; giving an image twice, or an input this API has not, is refused by
    name."""
    image = base64.b64encode(png_bytes(make_image(96, 64))).decode()
    mask = base64.b64encode(png_bytes(irregular_mask(96, 64))).decode()

    async def scenario():
        sdk = await _connected(gateway)
        try:
            inputs = {"image": image, "mask": mask}
            request = IImageInference(
                model=MODEL, positivePrompt=PROMPT, inputs=inputs, steps=3, seed=31, width=96, height=64
            )
            return await sdk.imageInference(requestImage=request)
        finally:
            await sdk.disconnect()

    (result,) = _run(scenario())
    assert result.seed == 31
    plain = _inference_task(seed=31, steps=3, deliveryMethod="sync")
    status, body = gateway.post("/v1", [plain | {"seedImage": image, "maskImage": mask}], key=KEY)
    assert status == 200 and body["data"][0]["seed"] == 31
    moved = {key: value for key, value in plain.items() if key not in ("seedImage", "maskImage")}
    task = moved | {"inputs": {"image": image, "mask": mask}, "deliveryMethod": "async"}
    assert gateway.post("/v1", [task], key=KEY)[0] == 200
    status, body = _poll(gateway, task["taskUUID"])
    assert status == 200 and body["data"][0]["status"] == "success" and body["data"][0]["seed"] == 31
    other = base64.b64encode(png_bytes(make_image(96, 64, seed=1))).decode()
    twice = _inference_task() | {"inputs": {"image": other}}  # and seedImage: which one was meant?
    status, body = gateway.post("/v1", [twice], key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == "inputs.image"
    unknown = moved | {
        "taskUUID": _inference_task()["taskUUID"],
        "inputs": {"image": image, "references": [image]},
    }
    status, body = gateway.post("/v1", [unknown], key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == "inputs.references"
