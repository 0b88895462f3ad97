"""The gateway process against the session's Triton: every task type, input form, output type and format."""

import base64
import io
import json
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes
from tests.test_detector_masks import ASTRONAUT_FACE, iou

pytestmark = pytest.mark.server
KEYS = ("key-one-0123456789", "key-two-9876543210")
IMAGE = make_image(96, 64, seed=4)
MASK = irregular_mask(96, 64)
ASTRONAUT = png_bytes(skimage.data.astronaut())


def task(task_type, **fields):
    return {"taskType": task_type, "taskUUID": str(uuid.uuid4()), **fields}


def inference(**fields):
    defaults = {"positivePrompt": "a bowl of fruit", "model": MODEL, "steps": 2, "seed": 11}
    return task("imageInference", **{**defaults, **fields})


def b64(data):
    return base64.b64encode(data).decode()


def decode(data):
    image = Image.open(io.BytesIO(data))
    return image.format, np.asarray(image.convert("RGB"))


class _Images(BaseHTTPRequestHandler):
    files = {"/photo.png": png_bytes(IMAGE), "/mask.png": png_bytes(MASK)}

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        body = self.files.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture(scope="module")
def image_host():
    server = ThreadingHTTPServer(("127.0.0.2", 0), _Images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.2:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("gateway")
    keys = data / "keys.txt"
    keys.write_text(f"# test keys\n{KEYS[0]}\n{KEYS[1]}\n")
    process = GatewayProcess(
        triton_server.grpc_url,
        data / "store",
        "--keys", str(keys), "--allow-fetch-network", "127.0.0.2/32",
        "--rate", "100000",  # the limits have a test of their own; these tests must never meet them
    ).start()  # fmt: skip
    try:
        yield process
    finally:
        process.stop()
        assert process.process.poll() is not None


def run(gateway, *tasks, key=KEYS[0]):
    return gateway.post("/v1", list(tasks), key=key)


def upload(gateway, data):
    status, body = run(gateway, task("imageUpload", image=b64(data)))
    assert status == 200, body
    return body["data"][0]["imageUUID"]


def test_image_upload_answers_the_url_the_hosted_apis_sdks_read(gateway):
    data = png_bytes(IMAGE)
    status, body = run(gateway, task("imageUpload", image=b64(data)))
    assert status == 200, body
    (item,) = body["data"]
    assert item["imageURL"] == f"{gateway.url}/images/{item['imageUUID']}.png"
    status, _, stored = gateway.request("GET", item["imageURL"].removeprefix(gateway.url))
    assert status == 200 and stored == data


def stored_count(gateway):
    return len(list((gateway.data / "images").glob("*")))


def test_a_missing_or_wrong_key_gets_401_and_nothing_is_done(gateway):
    before = stored_count(gateway)
    for key in (None, "wrong-key", KEYS[0][:-1]):
        status, body = run(gateway, task("imageUpload", image=b64(png_bytes(IMAGE))), key=key)
        assert status == 401 and body["errors"][0]["code"] == "unauthorized"
    assert stored_count(gateway) == before
    status, headers, content = gateway.request("GET", "/v2/tasks/x")
    assert status == 401
    # X-Api-Key works as well as Authorization: Bearer.
    import urllib.request

    request = urllib.request.Request(
        gateway.url + "/v1",
        data=json.dumps([task("imageUpload", image=b64(png_bytes(IMAGE)))]).encode(),
        headers={"X-Api-Key": KEYS[1], "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200


def test_upload_accepts_every_input_form(gateway, image_host):
    data = png_bytes(IMAGE)
    first = upload(gateway, data)
    forms = [f"data:image/png;base64,{b64(data)}", b64(data), f"{image_host}/photo.png", first]
    for form in forms:
        status, body = run(gateway, task("imageUpload", image=form))
        assert status == 200, (form[:40], body)
        image_uuid = body["data"][0]["imageUUID"]
        status, headers, content = gateway.request("GET", f"/images/{image_uuid}.png")
        assert status == 200 and headers["content-type"] == "image/png" and content == data


@pytest.mark.parametrize(
    ("output_type", "output_format", "field"),
    [
        ("URL", "PNG", "imageURL"),
        ("base64Data", "JPG", "imageBase64Data"),
        ("dataURI", "WEBP", "imageDataURI"),
    ],
)
def test_inference_output_types_and_formats(gateway, image_host, output_type, output_format, field):
    seed_image = upload(gateway, png_bytes(IMAGE))
    status, body = run(
        gateway,
        inference(
            seedImage=seed_image,
            maskImage=f"{image_host}/mask.png",
            outputType=output_type,
            outputFormat=output_format,
            numberResults=2,
        ),
    )
    assert status == 200, body
    items = body["data"]
    assert [item["seed"] for item in items] == [11, 12]
    for item in items:
        value = item[field]
        if output_type == "URL":
            status, _, data = gateway.request("GET", value.removeprefix(gateway.url))
            assert status == 200
        elif output_type == "dataURI":
            assert value.startswith("data:image/webp;base64,")
            data = base64.b64decode(value.split(",", 1)[1])
        else:
            data = base64.b64decode(value)
        image_format, pixels = decode(data)
        assert image_format == {"PNG": "PNG", "JPG": "JPEG", "WEBP": "WEBP"}[output_format]
        assert pixels.shape == IMAGE.shape
        if output_format == "PNG":
            assert np.array_equal(pixels[MASK == 0], IMAGE[MASK == 0])


def test_multi_stage_inpainting_reuses_a_result_uuid(gateway):
    first = run(gateway, inference(seedImage=b64(png_bytes(IMAGE)), maskImage=b64(png_bytes(MASK))))[1][
        "data"
    ][0]
    second_mask = np.zeros_like(MASK)
    second_mask[5:20, 60:90] = 255
    status, body = run(
        gateway, inference(seedImage=first["imageUUID"], maskImage=b64(png_bytes(second_mask)), seed=3)
    )
    assert status == 200, body
    _, first_pixels = decode(gateway.request("GET", f"/images/{first['imageUUID']}.png")[2])
    _, second_pixels = decode(gateway.request("GET", f"/images/{body['data'][0]['imageUUID']}.png")[2])
    assert np.array_equal(second_pixels[second_mask == 0], first_pixels[second_mask == 0])


def test_image_masking_task(gateway):
    status, body = run(
        gateway, task("imageMasking", inputImage=b64(ASTRONAUT), model="face", maskPadding=0, maskBlur=0)
    )
    assert status == 200, body
    item = body["data"][0]
    (face,) = item["detections"]
    assert iou((face["x_min"], face["y_min"], face["x_max"], face["y_max"]), ASTRONAUT_FACE) >= 0.7
    status, headers, mask = gateway.request("GET", item["maskImageURL"].removeprefix(gateway.url))
    assert status == 200 and decode(mask)[1].max() == 255


def huge_png_header(width=10_000, height=10_000):
    """A PNG that claims 100 megapixels: a valid header and no real pixel data. Refusing it with the
    size message proves the check ran on the header: decoding it would fail differently."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("fields", "parameter", "message"),
    [
        ({"steps": 500}, "steps", "steps: must be in [1, 100], got 500"),
        ({"CFGScale": 51}, "CFGScale", "CFGScale: must be in [0.0, 50.0], got 51"),
        ({"positivePrompt": "x"}, "positivePrompt", "must be 2-3000 characters (or __BLANK__), got 1"),
        ({"outputFormat": "gif"}, "outputFormat", "must be one of 'PNG', 'JPG' or 'WEBP'"),
        ({"model": "nope"}, "model", "model: 'nope' is not served; served models:"),
        ({"seedImage": "not base64!"}, "seedImage", "seedImage: the value is not valid base64"),
        ({"seedImage": str(uuid.uuid4())}, "seedImage", "seedImage: no uploaded or generated image has UUID"),
        ({"seedImage": "http://169.254.169.254/latest"}, "seedImage", "is not a public address"),
        ({"seedImage": b64(huge_png_header())}, "seedImage", "10000x10000 has more than 16777216 pixels"),
        ({"maskMargin": 16}, "maskMargin", "maskMargin: must be in [32, 128], got 16"),
        ({"colour": "red"}, "colour", "colour: is not a field of this task"),
    ],
)
def test_refusals_name_the_field_and_the_range(gateway, fields, parameter, message):
    good = inference(seedImage=b64(png_bytes(IMAGE)), maskImage=b64(png_bytes(MASK)))
    bad = inference(**{"seedImage": b64(png_bytes(IMAGE)), "maskImage": b64(png_bytes(MASK)), **fields})
    status, body = run(gateway, bad)
    assert status == 400, body
    (error,) = body["errors"]
    assert (
        error["parameter"] == parameter
        and message in error["message"]
        and error["taskUUID"] == bad["taskUUID"]
    )
    status, body = run(gateway, good, bad)  # one good task still runs beside a bad one
    assert status == 200 and len(body["data"]) == 1 and len(body["errors"]) == 1


def test_an_upload_that_does_not_decode_is_refused(gateway):
    truncated = png_bytes(IMAGE)[:200]  # a valid header, then nothing
    status, body = run(gateway, task("imageUpload", image=b64(truncated)))
    assert status == 400 and body["errors"][0]["parameter"] == "image"
    assert body["errors"][0]["message"].startswith("image: cannot be decoded")


def test_malformed_requests(gateway):
    status, _, content = gateway.request("POST", "/v1", raw=b"{not json", key=KEYS[0])
    assert 400 <= status < 500
    assert run(gateway, task("imageRotation"))[1]["errors"][0]["parameter"] == "taskType"
    assert run(gateway, *[task("imageUpload", image="x")] * 17)[0] == 400
    assert gateway.request("GET", "/images/nothing.png")[0] == 404


def test_health_ready_and_metrics(gateway):
    assert gateway.get_json("/healthz") == (200, {"status": "ok"})
    status, ready = gateway.get_json("/readyz")
    assert status == 200 and MODEL in ready["models"]
    status, headers, metrics = gateway.request("GET", "/metrics")
    assert status == 200 and b'gateway_tasks_total{outcome="ok",task_type="imageInference"}' in metrics


def test_async_task_survives_a_gateway_restart(triton_server, tmp_path):
    data = tmp_path / "store"
    first = GatewayProcess(triton_server.grpc_url, data).start()
    try:
        status, created = first.post(
            "/v2/tasks/create",
            {"tool": "flux_inpainting", "args": {"image": b64(ASTRONAUT), "masking_prompt": "face",
             "inpainting_prompt": "a bronze statue", "resolution": 512, "model": MODEL, "seed": 9}},
        )  # fmt: skip
        assert status == 201, created
    finally:
        first.stop()  # before the task can finish: the next gateway must pick it up
    second = GatewayProcess(triton_server.grpc_url, data).start()
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status, body = second.get_json(f"/v2/tasks/{created['taskId']}")
            assert status == 200
            if body["task"]["status"] in ("completed", "failed"):
                break
            time.sleep(1)
        task_view = body["task"]
        assert task_view["status"] == "completed", task_view
        assert (
            task_view["args"]["mask_blur"] == 24 and task_view["args"]["mask_expand"] == 12
        )  # Eden defaults
        (output,) = task_view["result"]["output"]
        assert output["seed"] == 9
        _, result = decode(second.request("GET", output["url"].removeprefix(second.url))[2])
        _, mask = decode(
            second.request("GET", task_view["result"]["mask"]["url"].removeprefix(second.url))[2]
        )
        astronaut = skimage.data.astronaut()
        outside = mask[..., 0] == 0
        assert 0.8 < outside.mean() < 1.0 and np.array_equal(result[outside], astronaut[outside])
        assert second.get_json("/v2/tasks/no-such-task")[0] == 404
    finally:
        second.stop()


def test_async_task_refusals(gateway):
    args = {"image": b64(png_bytes(IMAGE)), "inpainting_prompt": "x", "mask": b64(png_bytes(MASK))}
    for changes, message in (
        ({"creativity": 1.5}, "args.creativity: must be in [0.0, 1.1], got 1.5"),
        ({"resolution": 256}, "args.resolution: must be in [512, 1536], got 256"),
        ({"mask": None}, "args.mask: send a mask image or a masking_prompt, one of the two"),
    ):
        status, body = gateway.post(
            "/v2/tasks/create", {"tool": "flux_inpainting", "args": {**args, **changes}}, key=KEYS[0]
        )
        assert status == 400 and message in body["errors"][0]["message"], body


def test_body_size_and_rate_limits(triton_server, tmp_path):
    limited = GatewayProcess(
        triton_server.grpc_url, tmp_path / "store", "--max-body-mb", "1", "--rate", "3"
    ).start()
    try:
        status, _, content = limited.request("POST", "/v1", raw=b"[" + b" " * (2 * 1024 * 1024) + b"]")
        assert status == 413 and b"larger than 1048576 bytes" in content
        statuses = [
            limited.post("/v1", [task("imageUpload", image=b64(png_bytes(IMAGE)))])[0] for _ in range(4)
        ]
        assert statuses[:2] == [200, 200] and statuses[-1] == 429
        status, headers, content = limited.request("POST", "/v1", [task("imageUpload", image="x")])
        assert status == 429 and int(headers["retry-after"]) >= 1 and b"rateLimited" in content
    finally:
        limited.stop()


def test_triton_down_gives_503_then_recovers_without_a_gateway_restart(exported_repository, tmp_path):
    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    ports = (free_port(), free_port(), free_port())

    def triton():
        models = [
            f"inpaint_{MODEL}",
            *(f"{MODEL}_{n}" for n in ("text_encoder", "unet", "vae_encoder", "vae_decoder")),
        ]
        return TritonServer([BUILTIN_REPOSITORY, repository], *ports, models=models).start(timeout=300)

    request = inference(seedImage=b64(png_bytes(IMAGE)), maskImage=b64(png_bytes(MASK)))
    server = triton()
    gateway = GatewayProcess(server.grpc_url, tmp_path / "store", "--timeout", "20").start()
    try:
        status, body = gateway.post("/v1", [request])
        assert status == 200, body
        server.stop()
        started = time.monotonic()
        status, headers, content = gateway.request("POST", "/v1", [request])
        elapsed = time.monotonic() - started
        body = json.loads(content)
        print(f"Triton down: {status} after {elapsed:.2f} s: {body['errors'][0]['message'][:90]}")
        assert status == 503 and headers["retry-after"] == "5" and elapsed < 20
        assert (
            body["errors"][0]["code"] == "serviceUnavailable"
            and "is not reachable" in body["errors"][0]["message"]
        )
        assert gateway.get_json("/readyz")[0] == 503
        server = triton()
        assert gateway.post("/v1", [request])[0] == 200
        assert gateway.get_json("/readyz")[0] == 200
    finally:
        gateway.stop()
        server.stop()


def test_gateway_client_and_cli_make_the_same_calls(gateway, tmp_path):
    from triton_inpaint.client import GatewayClient

    with GatewayClient(gateway.url, KEYS[0]) as client:
        uploaded = client.upload(ASTRONAUT)
        assert gateway.request("GET", f"/images/{uploaded}.png")[2] == ASTRONAUT
        result = client.inpaint(
            MODEL, ASTRONAUT, None, "a statue", mask_prompt="face", mask_expand=6, steps=2, seed=4
        )
        masked = client.mask(ASTRONAUT, prompt="face", padding=0, blur=0)
    assert result.seeds == [4] and len(masked.detections) == 1
    used = decode(result.mask)[1][..., 0]
    astronaut = skimage.data.astronaut()
    outside = used == 0
    assert 0.9 < outside.mean() < 1.0 and np.array_equal(decode(result.image)[1][outside], astronaut[outside])

    image = tmp_path / "astronaut.png"
    image.write_bytes(ASTRONAUT)
    out = tmp_path / "out.png"
    common = [sys.executable, "-m", "triton_inpaint.cli"]
    done = subprocess.run(
        [*common, "inpaint", "--gateway", gateway.url, "--api-key", KEYS[1], "--model", MODEL,
         "--image", str(image), "--mask-prompt", "eyes", "--prompt", "sunglasses", "--steps", "2",
         "--seed", "8", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"seed 8 -> {out}" in done.stdout and decode(out.read_bytes())[1].shape == astronaut.shape
    done = subprocess.run(
        [*common, "mask", "--gateway", gateway.url, "--detector", "face", "--image", str(image),
         "--out", str(tmp_path / "m.png")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "missing or invalid API key" in done.stderr  # no key given


def test_soft_inpainting_through_the_gateway_equals_triton(gateway, triton_server):
    """softInpainting (and --soft-inpainting) reach the denoise model unchanged: the gateway's image is
    Triton's, and not the one without it."""
    from triton_inpaint.client import GatewayClient, InpaintClient

    image = png_bytes(make_image(96, 64, seed=2))
    settings = {"steps": 4, "seed": 12, "mask_blur": 16, "width": 96, "height": 64}
    mask = png_bytes(irregular_mask(96, 64))
    with GatewayClient(gateway.url, KEYS[0]) as client:
        over_gateway = client.inpaint(MODEL, image, mask, "a statue", soft_inpainting=True, **settings)
    with InpaintClient(triton_server.grpc_url) as client:
        soft = client.inpaint(MODEL, image, mask, "a statue", soft_inpainting=True, **settings)
        plain = client.inpaint(MODEL, image, mask, "a statue", **settings)
    assert over_gateway.images == soft.images and soft.images != plain.images
