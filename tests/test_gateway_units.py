"""The gateway's pieces without a server: storage, keys and limits, task schemas, image inputs."""

import base64
import time

import numpy as np
import pytest
from pydantic import ValidationError

from tests.helpers import png_bytes
from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.gateway.access.limits import KeyLimits, load_keys, matching_key, presented_key
from triton_inpaint.gateway.eden.tasks import resolution_size
from triton_inpaint.gateway.inputs.fetch import FetchPolicy
from triton_inpaint.gateway.inputs.images import output_fields, resolve_image
from triton_inpaint.gateway.runware.protocol import ImageInferenceTask
from triton_inpaint.gateway.store.storage import LocalStorage
from triton_inpaint.gateway.validation import field_errors

PNG = png_bytes(np.full((6, 10, 3), 7, np.uint8))


def test_storage_lists_an_image_only_once_it_is_complete(tmp_path):
    storage = LocalStorage(tmp_path)
    image_uuid = storage.put_image(PNG, "png")
    assert storage.get_image(image_uuid).data == PNG
    assert not list((tmp_path / "images").glob("*.part"))
    # A file without its row (a crash between the two) is not an image; nor is an unknown UUID.
    (tmp_path / "images" / "00000000-0000-4000-8000-000000000000.png").write_bytes(PNG)
    assert storage.get_image("00000000-0000-4000-8000-000000000000") is None
    with pytest.raises(ValueError, match="unknown image extension"):
        storage.put_image(PNG, "gif")


def test_a_failed_write_leaves_nothing_and_a_task_stores_all_of_its_images_or_none(tmp_path, monkeypatch):
    import errno
    import os

    from triton_inpaint.gateway.config import GatewayConfig
    from triton_inpaint.gateway.errors import StorageUnavailable
    from triton_inpaint.gateway.inference import TaskRunner

    storage = LocalStorage(tmp_path)
    kept = storage.put_image(PNG, "png")
    writes = []
    real_fsync = os.fsync

    def fsync_until_full(fd):
        writes.append(fd)
        if len(writes) > 2:  # the disk fills up on the third image
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_until_full)
    runner = TaskRunner(GatewayConfig(data_dir=tmp_path), storage)
    with pytest.raises(StorageUnavailable, match="No space left on device"):
        runner.store([(PNG, "png")] * 4)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"{kept}.png"]  # no .part, no orphans
    assert storage.get_image(kept).data == PNG


def test_tasks_persist_across_storage_instances(tmp_path):
    task = LocalStorage(tmp_path).tasks.create_task("flux_inpainting", {"resolution": 512}, "t1")
    reopened = LocalStorage(tmp_path).tasks
    assert [t.id for t in reopened.unfinished_tasks()] == [task.id]
    assert reopened.claim_task("w", 30).id == task.id
    assert reopened.finish_task(task.id, "w", "completed", {"output": []}, None)
    done = LocalStorage(tmp_path).tasks.get_task(task.id)
    assert (done.status, done.progress, done.result, done.args) == (
        "completed",
        1.0,
        {"output": []},
        {"resolution": 512},
    )
    assert LocalStorage(tmp_path).tasks.unfinished_tasks() == []
    with pytest.raises(ValueError):
        reopened.finish_task(task.id, "w", "exploded", None, None)


def test_keys_come_from_a_file_and_the_environment(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team A\nalpha-key\n\n beta-key  # trailing comment\n")
    monkeypatch.setenv("TRITON_INPAINT_API_KEYS", "gamma-key, ,delta-key")
    keys = load_keys(keys_file)
    assert keys == {"alpha-key", "beta-key", "gamma-key", "delta-key"}
    assert matching_key(keys, presented_key("Bearer beta-key", None)) == "beta-key"
    assert matching_key(keys, presented_key(None, "alpha-key")) == "alpha-key"
    assert matching_key(keys, presented_key("Basic alpha-key", None)) is None
    assert matching_key(keys, "alpha-ke") is None and matching_key(keys, None) is None


def test_limits_count_concurrency_and_a_one_minute_window():
    limits = KeyLimits(concurrency=2, per_minute=3)
    assert limits.acquire("a") is None and limits.acquire("a") is None
    assert limits.acquire("a") == 1.0  # two already running
    assert limits.acquire("b") is None  # other keys are not affected
    limits.release("a")
    assert limits.acquire("a") is None
    limits.release("a")
    limits.release("a")
    assert 1.0 <= limits.acquire("a") <= 60.0  # three in the last minute


def test_image_inputs_in_every_form(tmp_path):
    storage = LocalStorage(tmp_path)
    policy = FetchPolicy()
    encoded = base64.b64encode(PNG).decode()
    stored = storage.put_image(PNG, "png")
    for value in (
        f"data:image/png;base64,{encoded}",
        encoded,
        f" {encoded[:20]}\n{encoded[20:]} ",
        stored.upper(),
    ):
        assert resolve_image(value, "seedImage", storage, policy) == PNG
    for value, message in (
        ("", "seedImage: is empty"),
        ("data:image/png,abc", "data URI must look like"),
        (base64.b64encode(b"GIF89a....").decode(), "cannot be decoded"),
        ("ftp://example.com/x.png", "URL scheme 'ftp' is not allowed"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            resolve_image(value, "seedImage", storage, policy)
    with pytest.raises(InvalidInputError, match="has more than 50 pixels"):
        resolve_image(encoded, "seedImage", storage, policy, max_pixels=50)


def test_output_fields_by_type():
    assert output_fields("image", "u", PNG, "png", "URL", "http://gw") == {
        "imageUUID": "u",
        "imageURL": "http://gw/images/u.png",
    }
    assert output_fields("mask", "u", PNG, "webp", "dataURI", "")["maskDataURI"].startswith(
        "data:image/webp;base64,"
    )
    assert (
        base64.b64decode(output_fields("image", "u", PNG, "png", "base64Data", "")["imageBase64Data"]) == PNG
    )


def test_blank_prompt_and_output_type_lists():
    base = {"taskType": "imageInference", "taskUUID": "3738f7ee-392d-4fae-927d-604abf2de01b",
            "seedImage": "x", "maskImage": "y", "model": "m"}  # fmt: skip
    task = ImageInferenceTask.model_validate(
        {**base, "positivePrompt": "__BLANK__", "outputType": ["dataURI", "URL"]}
    )
    assert task.positivePrompt == "" and task.outputType == "dataURI"
    with pytest.raises(ValidationError) as info:
        ImageInferenceTask.model_validate({**base, "positivePrompt": "ok", "numberResults": 9, "width": 10})
    assert sorted(field_errors(ImageInferenceTask, info.value)) == [
        ("numberResults", "must be in [1, 4], got 9"),
        ("width", "must be in [64, 2048], got 10"),
    ]


def test_eden_resolution_is_the_longer_side():
    assert resolution_size(512, 512, 1024) == (1024, 1024)
    assert resolution_size(1200, 800, 768) == (768, 512)
    assert resolution_size(100, 3000, 512) == (64, 512)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_gateway_process_prints_ready_and_stops_cleanly(tmp_path, signal_name):
    import signal

    from triton_inpaint.gateway.launcher import GatewayServer

    gateway = GatewayServer("127.0.0.1:1", tmp_path / "store").start()  # Triton need not be up to start
    assert any(line.startswith(f"gateway ready on {gateway.url}") for line in gateway.lines)
    gateway.process.send_signal(getattr(signal, signal_name))
    assert gateway.process.wait(timeout=20) == 0
    time.sleep(0.2)  # the reader thread collects the last line
    assert gateway.lines[-1] == "gateway stopped"


def test_a_broken_async_task_fails_alone_and_the_worker_goes_on(tmp_path):
    from triton_inpaint.gateway.config import GatewayConfig
    from triton_inpaint.gateway.services import build_services

    storage = LocalStorage(tmp_path)
    tasks = storage.tasks
    # A record without "resolution" (written by an older version, say) breaks in an unforeseen way.
    broken = tasks.create_task("flux_inpainting", {"image": storage.put_image(PNG, "png")}, "broken")
    gone = tasks.create_task(
        "flux_inpainting", {"image": "00000000-0000-4000-8000-000000000000", "resolution": 512}, "gone"
    )
    worker = build_services(GatewayConfig(triton_url="127.0.0.1:1", data_dir=tmp_path), storage).worker
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and tasks.unfinished_tasks():
            time.sleep(0.1)
    finally:
        worker.stop()
    first, second = tasks.get_task(broken.id), tasks.get_task(gone.id)
    assert (first.status, second.status) == ("failed", "failed")
    assert first.error.startswith("internal error: KeyError")
    assert second.error == "the task's stored input images are gone"


@pytest.mark.parametrize(
    ("message", "parts"),
    [
        (
            "steps: must be an integer in [1, 100], got 500",
            ("steps", "must be an integer in [1, 100], got 500"),
        ),
        ("args.mask: send a mask", ("args.mask", "send a mask")),
        ("internal error: boom", None),  # two words: not a field
        ("no field here", None),
        ("mask:", None),
    ],
)
def test_field_messages_split_into_field_and_reason(message, parts):
    from triton_inpaint.api.errors import split_field
    from triton_inpaint.client import InpaintError

    assert split_field(message) == parts
    error = InpaintError(message)
    assert (error.field, error.reason) == (parts or (None, None))


def _refusals(**fields):
    task = {"taskType": "imageInference", "taskUUID": "3738f7ee-392d-4fae-927d-604abf2de01b",
            "model": "m", "seedImage": "x", "positivePrompt": "a door"}  # fmt: skip
    for name, value in fields.items():  # "outpaint.top" is the field top of the object outpaint
        owner, _, leaf = name.rpartition(".")
        (task.setdefault(owner, {}) if owner else task)[leaf] = value
    with pytest.raises(ValidationError) as caught:
        ImageInferenceTask.model_validate(task)
    return dict(field_errors(ImageInferenceTask, caught.value))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"steps": 2.5}, "must be an integer in [1, 100], got 2.5"),
        ({"steps": "many"}, "must be an integer in [1, 100], got 'many'"),
        ({"strength": "lots"}, "must be a number in [0.0, 1.0], got 'lots'"),
        ({"steps": 500}, "must be in [1, 100], got 500"),
    ],
)
def test_a_number_of_the_wrong_kind_is_refused_with_its_range(fields, expected):
    (name,) = fields
    assert _refusals(**fields) == {name: expected}


def test_the_catalog_declares_each_control_as_the_task_schema_checks_it():
    from triton_inpaint.gateway.page.catalog import inference_controls

    controls = {control["name"]: control for control in inference_controls()}
    assert not {"seedImage", "maskImage", "maskModel", "maskPrompt"} & set(controls)
    assert list(controls)[:3] == ["maskInvert", "maskExpand", "maskBlur"]  # the schema's order
    assert controls["steps"] | {"description": ""} == {
        "name": "steps", "type": "integer", "description": "", "required": False, "default": None,
        "defaultText": "the model's (20)", "min": 1, "max": 100, "range": "[1, 100]",
    }  # fmt: skip
    assert controls["width"]["multipleOf"] == 8
    assert controls["scheduler"]["openChoices"] and "DPM++ 2M" in controls["scheduler"]["choices"]
    prompt = controls["positivePrompt"]
    assert (prompt["required"], prompt["minLength"], prompt["maxLength"], prompt["blank"]) == (
        True, 2, 3000, "__BLANK__",
    )  # fmt: skip
    assert controls["negativePrompt"]["maxLength"] == 3000
    assert controls["outpaint.left"] | {"description": ""} == {
        "name": "outpaint.left", "type": "integer", "description": "", "required": False, "default": 0,
        "defaultText": "0", "min": 0, "max": 2048, "range": "[0, 2048]", "multipleOf": 64,
    }  # fmt: skip
    # Every declared range is the one a refusal of that field prints (nested fields too).
    for name, control in controls.items():
        if "range" in control:
            too_big = control["max"] + 1
            assert _refusals(**{name: too_big}) == {name: f"must be in {control['range']}, got {too_big}"}


def test_a_task_whose_workers_keep_dying_is_failed_not_retried_forever(tmp_path):
    from triton_inpaint.gateway.config import GatewayConfig
    from triton_inpaint.gateway.services import build_services
    from triton_inpaint.gateway.store.records import MAX_ATTEMPTS

    storage = LocalStorage(tmp_path)
    tasks = storage.tasks
    tasks.create_task("runware", {"task": {"taskType": "imageUpload", "taskUUID": "u"}, "base_url": ""}, "t")
    for attempt in range(MAX_ATTEMPTS):  # each claimer dies: its lease runs out, nothing is written
        assert tasks.claim_task(f"doomed-{attempt}", lease_seconds=0.05).attempts == attempt + 1
        time.sleep(0.1)
    config = GatewayConfig(triton_url="127.0.0.1:1", data_dir=tmp_path, workers=2, task_lease=3.0)
    worker = build_services(config, storage).worker
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and tasks.unfinished_tasks():
            time.sleep(0.05)
    finally:
        worker.stop()
    failed = tasks.get_task("t")
    assert (failed.status, failed.attempts) == ("failed", MAX_ATTEMPTS + 1)
    assert f"started {MAX_ATTEMPTS} times and its worker stopped each time" in failed.error
    (item,) = failed.result["errors"]
    assert item["code"] == "inferenceFailed"


def test_an_outcome_dropped_after_a_takeover_takes_its_images_with_it(tmp_path):
    from triton_inpaint.gateway.config import GatewayConfig
    from triton_inpaint.gateway.services import build_services
    from triton_inpaint.gateway.worker import result_images

    storage = LocalStorage(tmp_path)
    tasks = storage.tasks
    upload = {"taskType": "imageUpload", "taskUUID": "u", "image": base64.b64encode(PNG).decode()}
    tasks.create_task("runware", {"task": upload, "base_url": ""}, "t")
    slow = tasks.claim_task("slow", lease_seconds=0.05)  # a worker that hangs past its lease ...
    time.sleep(0.1)
    assert tasks.claim_task("other", lease_seconds=30).id == "t"  # ... and the task is taken over
    worker = build_services(GatewayConfig(triton_url="127.0.0.1:1", data_dir=tmp_path), storage).worker
    worker._run(slow, "slow")  # the hung worker wakes up, runs the task (storing its image), and is refused
    assert list((tmp_path / "images").iterdir()) == []  # the image nothing lists is gone too
    assert tasks.get_task("t").status == "running"  # still the other worker's
    # A write that committed although its answer was lost: the retry is refused, and keeps the images.
    tasks.create_task("runware", {"task": upload, "base_url": ""}, "t2")
    claimed = tasks.claim_task("w", lease_seconds=30)
    worker._run(claimed, "w")
    done = tasks.get_task("t2")
    assert done.status == "completed" and len(list((tmp_path / "images").iterdir())) == 1
    worker._finish(claimed, "w", "completed", done.result, None)  # the retry of that write
    assert [path.stem for path in (tmp_path / "images").iterdir()] == result_images(done.result)
    # What counts as the outcome's images, in both APIs' shapes.
    eden = {"output": [{"imageUUID": "a", "seed": 1}], "mask": {"imageUUID": "m", "url": "/images/m.png"}}
    runware = {"data": [{"taskUUID": "t", "imageUUID": "b", "maskImageUUID": "c", "seed": 2}]}
    assert (result_images(eden), result_images(runware), result_images(None)) == (["a", "m"], ["b", "c"], [])


def test_a_router_serves_alone_on_an_app_of_its_own(tmp_path):
    """Each router takes its services from ``app.state``: mounted alone, with services of the test's
    choosing (no Triton), it answers as in the whole gateway."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from triton_inpaint.gateway.config import GatewayConfig
    from triton_inpaint.gateway.eden.router import router
    from triton_inpaint.gateway.services import build_services

    app = FastAPI()
    app.state.services = build_services(GatewayConfig(triton_url="127.0.0.1:1", data_dir=tmp_path))
    app.include_router(router)
    stored = app.state.services.storage.tasks.create_task("flux_inpainting", {"resolution": 512}, "t1")
    with TestClient(app) as client:
        found = client.get(f"/v2/tasks/{stored.id}")
        missing = client.get("/v2/tasks/nope")
        refused = client.post(
            "/v2/tasks/create", json={"tool": "flux_inpainting", "args": {"resolution": 99}}
        )
    assert found.status_code == 200 and found.json()["task"]["status"] == "pending"
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "notFound"
    assert refused.status_code == 400
    assert {"parameter": "args.resolution"}.items() <= refused.json()["errors"][0].items()
    assert "must be in [512, 1536], got 99" in refused.json()["errors"][0]["message"]


def test_progress_items_have_the_hosted_apis_shape_and_no_result_keys():
    from triton_inpaint.client import Progress
    from triton_inpaint.gateway.runware.progress import percent, progress_item, wants_progress

    task = ImageInferenceTask.model_validate(
        {"taskType": "imageInference", "taskUUID": "3738f7ee-392d-4fae-927d-604abf2de01b", "model": "tiny",
         "positivePrompt": "a hat", "seedImage": "x", "maskImage": "y", "includePreviews": True}
    )  # fmt: skip
    assert wants_progress(task) and not wants_progress(task.model_copy(update={"includePreviews": None}))
    item = progress_item(task, Progress(step=3, total=8, previews=[b"\xff\xd8jpeg"]))
    preview = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8jpeg").decode()
    assert item == {
        "taskType": "imageInference", "taskUUID": task.taskUUID, "status": "processing", "progress": 37,
        "step": 3, "steps": 8, "previewImages": [preview],
    }  # fmt: skip
    assert "previewImages" not in progress_item(task, Progress(step=1, total=2))
    assert [percent(step, 4) for step in range(5)] == [0, 25, 50, 75, 99] and percent(1, 0) == 0
