"""The gateway as a hostile or careless caller meets it: keys before bodies, bodies under caps and a
deadline, text that is not text, images that lie, refusals that store nothing, URLs that do not follow
the caller's Host header. A real gateway process in front of the session's Triton."""

from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes

pytestmark = pytest.mark.server
KEY = "hardening-key-0123456789"
IMAGE = make_image(96, 64, seed=5)
MASK = irregular_mask(96, 64)


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    data = tmp_path_factory.mktemp("hardened")
    keys = data / "keys.txt"
    keys.write_text(KEY + "\n")
    process = GatewayProcess(
        triton_server.grpc_url, data / "store",
        "--keys", str(keys), "--max-body-mb", "2", "--body-timeout", "2", "--rate", "100000",
    ).start()  # fmt: skip
    try:
        yield process
    finally:
        process.stop()


# A memory budget small enough that the tiny model's largest requests are refused: with fused attention
# and the VAE in tiles, the default budget (most of the machine's free memory) takes them all.
SMALL_BUDGET = "600MiB"


@pytest.fixture(scope="module")
def budgeted(exported_repository, tmp_path_factory):
    """A Triton serving the tiny model under ``SMALL_BUDGET``, and a gateway in front of it."""
    import os

    from tests.conftest import BUILTIN_REPOSITORY
    from triton_inpaint.api.sizes import BUDGET_ENV
    from triton_inpaint.networks.runners import network_tensors
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    models = [f"inpaint_{MODEL}", *(f"{MODEL}_{role}" for role in network_tensors("sd"))]
    server = TritonServer(
        [BUILTIN_REPOSITORY, repository], free_port(), free_port(), free_port(), models=models
    )
    os.environ[BUDGET_ENV] = SMALL_BUDGET  # the model processes read it; the suite's other servers do not
    try:
        server.start(timeout=300)
    finally:
        del os.environ[BUDGET_ENV]
    data = tmp_path_factory.mktemp("budgeted")
    (data / "keys.txt").write_text(KEY + "\n")
    gateway = GatewayProcess(server.grpc_url, data / "store", "--keys", str(data / "keys.txt")).start()
    try:
        yield server, gateway
    finally:
        gateway.stop()
        server.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def task(task_type: str, **fields) -> dict:
    return {"taskType": task_type, "taskUUID": str(uuid.uuid4()), **fields}


def inference(**fields) -> dict:
    base = {"positivePrompt": "a bowl of fruit", "model": MODEL, "steps": 2, "seed": 3,
            "seedImage": b64(png_bytes(IMAGE)), "maskImage": b64(png_bytes(MASK))}  # fmt: skip
    return task("imageInference", **{**base, **fields})


def stored(gateway) -> list[str]:
    return sorted(path.name for path in (gateway.data / "images").iterdir())


def connect(gateway) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)


def test_no_key_is_refused_before_a_byte_of_the_body_is_read(gateway):
    """Headers promise 60 MiB of malformed body, none is sent: the 401 comes anyway, at once."""
    connection = connect(gateway)
    connection.putrequest("POST", "/v1")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(60 * 1024 * 1024))
    connection.endheaders(b"{not json")
    started = time.monotonic()
    response = connection.getresponse()
    assert response.status == 401 and json.loads(response.read())["errors"][0]["code"] == "unauthorized"
    assert time.monotonic() - started < 2.0  # not waiting for the body (nor its 2 s deadline)
    status, body = gateway.post("/v1", "{not json")  # a small malformed body without a key: 401 too
    assert status == 401


def test_the_client_reads_an_early_refusal_of_a_large_upload(gateway):
    """The gateway answers 401 and 413 from the headers and closes while a large body is still being
    sent; the client must report that answer, not the broken pipe it meets (a flake seen in CI)."""
    from triton_inpaint.client import GatewayClient
    from triton_inpaint.client.inpaint_client import InpaintError, ServerUnreachableError

    large = bytes(np.random.default_rng(0).integers(0, 256, 8_000_000, dtype=np.uint8))
    for _ in range(3):
        with GatewayClient(gateway.url) as client, pytest.raises(InpaintError) as refused:
            client.mask(large, prompt="face")
        assert "missing or invalid API key" in str(refused.value)
        assert not isinstance(refused.value, ServerUnreachableError)
        with GatewayClient(gateway.url, KEY) as client, pytest.raises(InpaintError) as refused:
            client.upload(large)
        assert "request body is larger than 2097152 bytes" in str(refused.value)


def _send_and_read(gateway, head: bytes, chunks) -> bytes:
    """Send a request as raw bytes, going on after the server stops reading (it answers a body over the
    cap before the body ends, and may close while the client still sends), then read its answer."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        try:
            sock.sendall(head)
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server has answered and closed: read what it said
            pass
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            if b"\r\n\r\n{" in answer and answer.endswith(b"}"):
                break
    return answer


def test_bodies_over_the_cap_get_413_whether_declared_or_chunked(gateway):
    headers = f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
    chunk = b" " * (256 * 1024)
    chunked = _send_and_read(
        gateway,
        f"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Transfer-Encoding: chunked\r\n\r\n".encode(),
        (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n" for _ in range(12)),
    )
    assert chunked.startswith(b"HTTP/1.1 413") and b"larger than 2097152 bytes" in chunked, chunked[:300]
    declared = _send_and_read(
        gateway,
        f"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {3 * 2**20}\r\n\r\n[".encode(),
        [],
    )
    assert declared.startswith(b"HTTP/1.1 413"), declared[:300]


def test_a_stalled_body_gets_408_at_its_deadline(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: 1000\r\n\r\n[".encode()
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n{" not in answer or not answer.endswith(b"}"):  # headers and body may come apart
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 2 s" in answer
    assert time.monotonic() - started < 10.0


def test_malformed_json_with_a_key_is_a_400_naming_the_body(gateway):
    status, _, content = gateway.request("POST", "/v1", raw=b"[{not json", key=KEY)
    (error,) = json.loads(content)["errors"]
    assert status == 400 and error["parameter"] == "body"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("positivePrompt", "a \ud800 fruit"),
        ("negativePrompt", "\udfff"),
        ("model", "tiny\ud800"),
        ("scheduler", "\ud83d"),
        ("maskPrompt", "her \udc00 face"),
        ("model", "tiny\x00"),
        ("scheduler", "DDIM\n"),
        ("positivePrompt", "fruit\x00bowl"),
        ("model", "m" * 201),
    ],
)
def test_text_that_is_not_text_is_a_400_naming_the_field(gateway, field, value):
    body = inference(**{field: value})
    if field == "maskPrompt":
        body.pop("maskImage")
    # json.dumps writes a lone surrogate as the escape "\ud800", exactly as a hostile client would.
    status, _, content = gateway.request("POST", "/v1", raw=json.dumps([body]).encode(), key=KEY)
    answer = json.loads(content)
    assert status == 400, answer
    (error,) = answer["errors"]
    assert error["parameter"] == field and error["message"].startswith(f"{field}: ")
    assert error["taskUUID"] == body["taskUUID"]


def test_a_task_uuid_that_is_not_one_is_refused_and_never_echoed(gateway):
    body = inference(taskUUID="\ud800not-a-uuid")
    status, _, content = gateway.request("POST", "/v1", raw=json.dumps([body]).encode(), key=KEY)
    (error,) = json.loads(content)["errors"]
    assert status == 400 and error["parameter"] == "taskUUID" and "taskUUID" not in error
    assert content.isascii()


def test_a_jpeg_whose_header_lies_is_neither_stored_nor_used(gateway):
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(buffer, format="JPEG")
    lying = bytearray(buffer.getvalue())
    sof = lying.index(b"\xff\xc0")
    lying[sof + 5 : sof + 9] = (4000).to_bytes(2, "big") * 2
    before = stored(gateway)
    status, body = gateway.post("/v1", [task("imageUpload", image=b64(bytes(lying)))], key=KEY)
    assert status == 400 and "JPEG data ends before its 4000x4000 image" in body["errors"][0]["message"]
    args = {"image": b64(bytes(lying)), "mask": b64(png_bytes(MASK)), "inpainting_prompt": "a hat"}
    status, body = gateway.post("/v2/tasks/create", {"tool": "flux_inpainting", "args": args}, key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == "args.image"
    assert stored(gateway) == before


@pytest.mark.parametrize(
    ("changes", "parameter"),
    [
        ({"mask": b64(b"\x89PNG\r\n\x1a\nbroken")}, "args.mask"),
        ({"mask": b64(png_bytes(irregular_mask(48, 32)))}, "args.mask"),  # size differs from the image
        ({"mask": "http://[::ffff:127.0.0.1:18090/"}, "args.mask"),  # malformed URL: 400, not 500
    ],
)
def test_a_refused_async_task_stores_nothing(gateway, changes, parameter):
    before = stored(gateway)
    args = {"image": b64(png_bytes(IMAGE)), "mask": b64(png_bytes(MASK)), "inpainting_prompt": "x", **changes}
    status, body = gateway.post("/v2/tasks/create", {"tool": "flux_inpainting", "args": args}, key=KEY)
    assert status == 400 and body["errors"][0]["parameter"] == parameter, body
    assert stored(gateway) == before


def test_result_urls_never_follow_an_untrusted_host_header(gateway, triton_server, tmp_path):
    connection = connect(gateway)
    body = json.dumps([inference(outputType="URL")]).encode()
    headers = {"Host": "evil.example", "Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    connection.request("POST", "/v1", body=body, headers=headers)
    response = connection.getresponse()
    answer = json.loads(response.read())
    assert response.status == 200, answer
    assert answer["data"][0]["imageURL"].startswith(f"http://127.0.0.1:{gateway.port}/images/")
    assert "evil" not in json.dumps(answer)
    status, answer = gateway.post("/v1", [inference(outputType="URL")], key=KEY)  # a trusted loopback Host
    assert answer["data"][0]["imageURL"].startswith(f"http://127.0.0.1:{gateway.port}/images/")
    with GatewayProcess(
        triton_server.grpc_url, tmp_path / "store", "--trusted-host", "inpaint.example.com"
    ) as trusting:
        for host, base in (("inpaint.example.com", "http://inpaint.example.com"),
                           ("evil.example", trusting.url)):  # fmt: skip
            connection = http.client.HTTPConnection("127.0.0.1", trusting.port, timeout=30)
            connection.request(
                "POST", "/v1", body=json.dumps([inference(outputType="URL")]).encode(),
                headers={"Host": host, "Content-Type": "application/json"},
            )  # fmt: skip
            answer = json.loads(connection.getresponse().read())
            assert answer["data"][0]["imageURL"].startswith(base + "/images/"), answer
    with GatewayProcess(
        triton_server.grpc_url, tmp_path / "store2", "--public-url", "https://cdn.example.org/"
    ) as public:
        status, answer = public.post("/v1", [inference(outputType="URL")])
        assert answer["data"][0]["imageURL"].startswith("https://cdn.example.org/images/")


def test_sixteen_bit_images_and_masks_keep_their_meaning(gateway):
    """A 16-bit greyscale photo comes back as its 8-bit self outside the mask (not clipped to white),
    and a 16-bit mask of 1000/65535 changes pixels by about 1.5 %, not by 90 %."""
    photo16 = (make_image(96, 64, seed=6)[..., 0].astype(np.uint16) * 257).astype(np.uint16)
    mask16 = np.zeros((64, 96), np.uint16)
    mask16[16:48, 24:72] = 1000

    def png16(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    sixteen_bit = inference(
        seedImage=b64(png16(photo16)), maskImage=b64(png16(mask16)), outputType="base64Data"
    )
    status, body = gateway.post("/v1", [sixteen_bit], key=KEY)
    assert status == 200, body
    result = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(body["data"][0]["imageBase64Data"]))).convert("L")
    )
    expected = np.rint(photo16 / 257).astype(np.uint8)
    outside = mask16 == 0
    assert np.array_equal(result[outside], expected[outside])
    changed = np.abs(result.astype(int) - expected.astype(int))[~outside]
    print(f"16-bit mask of 1000/65535: largest change inside {changed.max()}/255")
    assert changed.max() <= 5


def test_requests_too_large_for_memory_are_refused_up_front_and_no_model_process_dies(budgeted):
    """The two requests that used to get a model process OOM-killed, inside the documented ranges, on a
    server whose budget they exceed."""
    from triton_inpaint.server.supervisor import stubs_of

    triton_server, gateway = budgeted
    processes = set(stubs_of(triton_server.pid))
    status, body = gateway.post("/v1", [inference(width=2048, height=2048, numberResults=4)], key=KEY)
    assert status == 400, body
    (error,) = body["errors"]
    assert error["parameter"] == "width"
    assert "2048x2048 (width x height) with num_images 4 needs about" in error["message"]
    assert "fits with num_images 4" in error["message"]
    # resolution is the longer side of the processing size, whatever the input's: 96x64 -> 1536x1024.
    # Refused at create (a dry run through Triton), before anything is stored or queued.
    args = {"image": b64(png_bytes(IMAGE)), "mask": b64(png_bytes(MASK)), "inpainting_prompt": "a hat",
            "resolution": 1536, "n_samples": 4, "model": MODEL}  # fmt: skip
    before = stored(gateway)
    status, body = gateway.post("/v2/tasks/create", {"tool": "flux_inpainting", "args": args}, key=KEY)
    assert status == 400, body
    (error,) = body["errors"]
    assert error["parameter"] == "args.resolution" and error["message"].startswith(
        "args.resolution: 1536x1024"
    )
    assert "needs about" in error["message"] and stored(gateway) == before
    assert set(stubs_of(triton_server.pid)) == processes, "a model process was lost"
    status, body = gateway.post("/v1", [inference()], key=KEY)  # and the service goes on
    assert status == 200, body


def test_a_dry_run_checks_everything_and_generates_nothing(budgeted):
    from triton_inpaint.client import InpaintClient, InpaintError

    triton_server, _ = budgeted
    with InpaintClient(triton_server.grpc_url) as client:
        result = client.inpaint(
            MODEL, png_bytes(IMAGE), png_bytes(MASK), "a hat", seed=5, num_images=2, dry_run=True
        )
        assert result.images == [] and result.seeds == [5, 6] and result.mask  # the mask it would use
        for changes, field in (
            ({"width": 2048, "height": 2048, "num_images": 4}, "width"),
            ({"scheduler": "no such scheduler"}, "scheduler"),
            ({"strength": 0.01, "steps": 2, "scheduler": "DDIM"}, "strength"),
        ):
            with pytest.raises(InpaintError) as info:
                client.inpaint(MODEL, png_bytes(IMAGE), png_bytes(MASK), "a hat", dry_run=True, **changes)
            assert info.value.field == field, info.value


def test_a_request_that_fits_only_with_the_vae_in_tiles_is_served_as_diffusers_tiles_it(
    budgeted, reference_pipeline, scheduler_config
):
    """1024x1024 on the small budget: the untiled VAE (about 1.2 GiB with the rest) would not fit, its
    128 px tiles do. The served image is diffusers' with enable_vae_tiling(), inside the mask.

    The mask is two 48 px bands: a 128 px tile wholly inside the mask is black in the masked image, and
    the tiny random VAE's GroupNorm over a constant tile turns float noise (contiguous or strided
    input) into differences of 1.0 in its moments, the same in diffusers against itself."""
    from tests.helpers import assert_served_parity, decode_rgb, diffusers_inpaint
    from triton_inpaint.client import InpaintClient

    triton_server, _ = budgeted
    image = make_image(1024, 1024, seed=6)
    mask = np.zeros((1024, 1024), np.uint8)
    mask[:, 300:348] = mask[600:648, :] = 255
    with InpaintClient(triton_server.grpc_url) as client:
        result = client.inpaint(
            MODEL, png_bytes(image), png_bytes(mask), "a hat", steps=3, seed=8, scheduler="DDIM",
            width=1024, height=1024, strength=1.0, guidance_scale=7.5,
        )  # fmt: skip
    served = decode_rgb(result.image)
    settings = {"steps": 3, "strength": 1.0, "guidance": 7.5, "seed": 8}
    reference_pipeline.vae.enable_tiling()
    try:
        tiled = diffusers_inpaint(
            reference_pipeline, scheduler_config, image, mask, "a hat", "DDIM", **settings
        )
    finally:
        reference_pipeline.vae.disable_tiling()
    untiled = diffusers_inpaint(
        reference_pipeline, scheduler_config, image, mask, "a hat", "DDIM", **settings
    )
    assert_served_parity("served, VAE in tiles", served, tiled, mask, image, tolerance=3)
    inside = mask == 255
    assert np.abs(served[inside].astype(int) - untiled[inside]).max() > 3  # the tiles made the difference


def _stalled_upload(gateway, key: str) -> socket.socket:
    """A connection that sends its headers and the first byte of a 1000-byte body, then nothing."""
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
    sock.sendall(
        b"POST /v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n[".encode()
    )
    return sock


def test_stalled_uploads_hold_no_slot_of_their_key(triton_server, tmp_path):
    """Issue 27's finding: 16 bodies stalled mid-upload held the key's concurrency slots, so its next
    normal request got 429 until the body timeout. Slots now count requests being processed; what
    bounds stalled uploads is their own cap per key."""
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    gateway = GatewayProcess(
        triton_server.grpc_url, tmp_path / "store", "--keys", str(tmp_path / "keys.txt"),
        "--concurrency", "4", "--uploads-per-key", "20", "--body-timeout", "60", "--rate", "100000",
    ).start()  # fmt: skip
    stalled: list[socket.socket] = []
    try:
        stalled += [_stalled_upload(gateway, KEY) for _ in range(16)]
        time.sleep(0.5)  # every one of them has been read up to its stall
        started = time.monotonic()
        status, body = gateway.post("/v1", [inference()], key=KEY)
        assert status == 200, body
        assert time.monotonic() - started < 30  # far from the 60 s body timeout
        # Up to the cap: 20 arriving at once; the 21st is refused before its body, naming the cap.
        stalled += [_stalled_upload(gateway, KEY) for _ in range(4)]
        time.sleep(0.5)
        status, body = gateway.post("/v1", [inference()], key=KEY)
        assert status == 429 and "at most 20" in body["errors"][0]["message"], body
        # Closing the stalled uploads frees the cap at once.
        for sock in stalled:
            sock.close()
        stalled.clear()
        deadline = time.monotonic() + 10
        while (
            status := gateway.post("/v1", [inference()], key=KEY)[0]
        ) == 429 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
    finally:
        for sock in stalled:
            sock.close()
        gateway.stop()


def test_progress_from_a_server_without_the_streaming_twin_says_so(budgeted):
    """This server loads inpaint_tiny without inpaint_tiny_stream: asking for progress names what is
    missing instead of calling the model unknown."""
    from triton_inpaint.client import InpaintClient, ModelNotServedError

    triton_server, _ = budgeted
    with InpaintClient(triton_server.grpc_url) as client:
        with pytest.raises(ModelNotServedError, match="served without progress: inpaint_tiny_stream is not"):
            client.inpaint(MODEL, png_bytes(IMAGE), png_bytes(MASK), "a hat", steps=2, on_progress=print)
        assert client.inpaint(MODEL, png_bytes(IMAGE), png_bytes(MASK), "a hat", steps=2).images


def test_a_task_asking_progress_of_a_model_served_without_it_is_refused_naming_include_progress(budgeted):
    """The gateway in front of that server: over server-sent events the task that asked for progress
    gets a 400-style error naming includeProgress; the same task without it runs."""
    import httpx

    _, gateway = budgeted
    status, catalog = gateway.get_json("/v1/models", key=KEY)
    assert status == 200 and [entry["progress"] for entry in catalog["models"]] == [False], catalog
    task = {
        "taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": MODEL, "steps": 2,
        "positivePrompt": "a hat", "seedImage": base64.b64encode(png_bytes(IMAGE)).decode(), "width": 96,
        "maskImage": base64.b64encode(png_bytes(MASK)).decode(), "height": 64, "includeProgress": True,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "text/event-stream"}
    with httpx.stream("POST", gateway.url + "/v1", json=[task], headers=headers, timeout=120) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    (error,) = json.loads(lines[0].removeprefix("data: "))["errors"]
    assert error["parameter"] == "includeProgress" and error["taskUUID"] == task["taskUUID"], error
    assert "served without progress" in error["message"] and "--no-stream" in error["message"]
    task["includeProgress"] = False
    status, body = gateway.post("/v1", [{**task, "taskUUID": str(uuid.uuid4())}], key=KEY)
    assert status == 200 and body["data"][0]["imageURL"], body
