"""Image bytes in an S3-compatible bucket: a real moto server started by the tests, a real gateway
process in front of the session's Triton. Same URLs, presigned redirects as an option, a dead bucket a
clear 503 with nothing listed."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import uuid

import pytest
import urllib3

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes
from tests.s3_server import CREDENTIALS, S3Server
from triton_inpaint.gateway.store.blobs import BlobsUnavailable, S3Blobs, S3Settings

IMAGE = png_bytes(make_image(96, 64, seed=3))
MASK = png_bytes(irregular_mask(96, 64))


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture
def bucket(s3):
    name = f"images-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)


def task(task_type, **fields):
    return {"taskType": task_type, "taskUUID": str(uuid.uuid4()), **fields}


def test_s3_blobs_store_read_delete_and_presign(s3, bucket, aws_env):
    blobs = S3Blobs(S3Settings.from_url(f"s3://{bucket}/results", endpoint_url=s3.url, presign_seconds=60))
    blobs.check()
    blobs.write("a.png", IMAGE, "image/png")
    head = s3.client().head_object(Bucket=bucket, Key="results/a.png")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(IMAGE)
    assert blobs.read("a.png") == IMAGE and blobs.read("missing.png") is None
    link = blobs.link("a.png")
    assert link.startswith(f"{s3.url}/{bucket}/results/a.png?") and "X-Amz-Signature=" in link
    assert urllib3.request("GET", link).data == IMAGE
    blobs.delete("a.png")
    blobs.delete("a.png")  # absent is fine
    assert blobs.read("a.png") is None
    with pytest.raises(BlobsUnavailable, match="no such bucket"):
        S3Blobs(S3Settings(bucket="nobody-made-this", endpoint_url=s3.url)).check()
    with pytest.raises(ValueError, match="s3://BUCKET"):
        S3Settings.from_url("https://example.com/bucket")


@pytest.mark.server
def test_the_gateway_keeps_images_in_the_bucket(triton_server, s3, bucket, tmp_path, aws_env):
    options = ("--image-store", f"s3://{bucket}/gw", "--s3-endpoint", s3.url)
    with GatewayProcess(triton_server.grpc_url, tmp_path / "store", *options) as gateway:
        status, body = gateway.post("/v1", [task("imageUpload", image=base64.b64encode(IMAGE).decode())])
        assert status == 200, body
        upload = body["data"][0]["imageUUID"]
        stored = s3.client().get_object(Bucket=bucket, Key=f"gw/{upload}.png")
        assert stored["ContentType"] == "image/png" and stored["Body"].read() == IMAGE
        local = tmp_path / "store" / "images"
        assert not local.exists() or not list(local.iterdir()), "nothing on local disk"
        status, headers, content = gateway.request("GET", f"/images/{upload}.png")
        assert status == 200 and content == IMAGE

        inference = task(
            "imageInference", model=MODEL, positivePrompt="a bowl of fruit", steps=2, seed=3,
            seedImage=upload, maskImage=base64.b64encode(MASK).decode(),
        )  # fmt: skip
        status, body = gateway.post("/v1", [inference])
        assert status == 200, body
        result = body["data"][0]
        key = f"gw/{result['imageUUID']}.png"
        assert (
            s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            == gateway.request("GET", f"/images/{result['imageUUID']}.png")[2]
        )
        assert gateway.get_json("/readyz")[0] == 200


@pytest.mark.server
def test_presigned_image_urls_redirect_to_the_bucket(triton_server, s3, bucket, tmp_path, aws_env):
    options = ("--image-store", f"s3://{bucket}", "--s3-endpoint", s3.url, "--s3-presign", "120")
    with GatewayProcess(triton_server.grpc_url, tmp_path / "store", *options) as gateway:
        status, body = gateway.post("/v1", [task("imageUpload", image=base64.b64encode(IMAGE).decode())])
        assert status == 200, body
        url = body["data"][0]["imageURL"]
        assert url.startswith(gateway.url + "/images/"), "image URLs stay the gateway's"
        status, headers, _ = gateway.request("GET", url[len(gateway.url) :])
        assert status == 307 and headers["location"].startswith(f"{s3.url}/{bucket}/")
        assert urllib3.request("GET", headers["location"]).data == IMAGE
        csp = gateway.request("GET", "/")[1]["content-security-policy"]
        assert f"img-src 'self' data: blob: {s3.url};" in csp


@pytest.mark.server
def test_an_unreachable_bucket_is_a_clear_503_and_nothing_is_listed(triton_server, tmp_path, aws_env):
    with S3Server() as own:
        own.client().create_bucket(Bucket="images")
        options = ("--image-store", "s3://images", "--s3-endpoint", own.url)
        with GatewayProcess(triton_server.grpc_url, tmp_path / "store", *options) as gateway:
            upload = task("imageUpload", image=base64.b64encode(IMAGE).decode())
            assert gateway.post("/v1", [upload])[0] == 200
            own.stop()
            second = task("imageUpload", image=base64.b64encode(IMAGE).decode())
            status, headers, content = gateway.request("POST", "/v1", [second])
            body = json.loads(content)
            print(f"bucket down: {status} {body['errors'][0]['message'][:120]}")
            assert status == 503 and headers["retry-after"] == "5"
            assert body["errors"][0]["code"] == "serviceUnavailable"
            assert "could not be stored" in body["errors"][0]["message"]
            database = sqlite3.connect(tmp_path / "store" / "gateway.sqlite3")
            (listed,) = database.execute("SELECT COUNT(*) FROM images").fetchone()
            assert listed == 1, "a failed upload must not be listed"
            status, ready = gateway.get_json("/readyz")
            assert status == 503 and "image store" in ready["reason"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--image-store", "https://bucket"], "--image-store: an object store URL looks like s3://BUCKET"),
        (["--s3-presign", "60"], "--s3-endpoint and --s3-presign need --image-store"),
        (["--image-store", "s3://b", "--s3-presign", "-1"], "--s3-presign: must be 0 (off) or more"),
        (["--workers", "0"], "--workers: must be an integer in [1, 64], got 0"),
        (["--task-lease", "1"], "--task-lease: must be in [3, 3600] seconds, got 1"),
        (["--database", "mysql://u:hunter2@db/x"], "--database: must be a PostgreSQL URL"),
    ],
)
def test_bad_object_store_and_task_store_options_are_refused_before_serving(arguments, message, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "gateway", "--data", str(tmp_path), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "gateway ready" not in done.stdout and "hunter2" not in done.stderr
