"""What each task does: resolve its images, call Triton through :class:`InpaintClient`, store results.

Plain synchronous code, run in worker threads by the HTTP layer; no FastAPI here, so it is testable and
reusable by the async-task worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.api.imaging import (
    MAX_PIXELS,
    cut_out,
    decode_image,
    decode_mask,
    encode_image,
    mask_pixels,
    probe,
)
from triton_inpaint.api.schema import INPAINT, MASK, MASK_SOURCES, RequestSchema
from triton_inpaint.client import InpaintClient, InpaintError, ModelUnavailableError, ServerUnreachableError

from .blobs import S3Settings
from .fetch import FetchPolicy
from .guard import error_item
from .images import image_extension, output_fields, resolve_image
from .records import MAX_ATTEMPTS, TaskExists, TaskRecord
from .storage import GatewayStorage
from .tasks import (
    ASYNC_IMAGE_FIELDS,
    EDEN_TOOL,
    TASK_TYPES,
    ImageInferenceTask,
    ImageMaskingTask,
    ImageUploadTask,
)

# Triton's input names -> the reference's field names, so a refusal names what the caller sent.
INFERENCE_FIELDS = {control.name: control.runware for control in INPAINT if control.runware}
MASKING_FIELDS = {control.name: control.runware for control in MASK if control.runware}
EXTENSIONS = {"PNG": "png", "JPG": "jpg", "WEBP": "webp"}
# Runware-style tasks sent with deliveryMethod "async", kept in the task store like Eden-style ones.
RUNWARE_TOOL = "runware"
MAX_PENDING_PER_CALLER = 64  # async tasks one key may have waiting or running at once


def runware_task_id(caller: str, task_uuid: str) -> str:
    """The stored id of a caller's async task: its taskUUID, scoped to the caller (a digest, so no key
    is stored), so that one key can neither read nor block another key's tasks."""
    owner = hashlib.sha256(caller.encode()).hexdigest()[:16]
    return f"rw-{owner}-{task_uuid.lower()}"


logger = logging.getLogger("triton_inpaint.gateway")


class TaskFailed(Exception):
    """A task was refused: ``parameter`` is the reference's field name (or None for the whole task)."""

    def __init__(
        self,
        message: str,
        parameter: str | None = None,
        code: str = "invalidParameter",
        task_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.task_type = task_type  # the failed task's type when another task reports it (getResponse)
        self.message = message
        self.parameter = parameter
        self.code = code


class Unavailable(Exception):
    """A service the gateway needs did not work; the caller retries later (HTTP 503)."""


class TritonUnavailable(Unavailable):
    """Triton did not answer."""


class StorageUnavailable(Unavailable):
    """Images could not be stored (a full disk, a broken volume); nothing of the task was kept."""


@dataclass(frozen=True)
class GatewayConfig:
    triton_url: str = "127.0.0.1:8001"
    data_dir: Path = Path("build/gateway")
    keys: frozenset[str] = frozenset()  # empty: no key is asked for
    public_url: str | None = None  # base of image URLs; see trusted_hosts when None
    # Host headers (host[:port]) whose value may become the base of image URLs when no public_url is
    # set; any other Host gets listen_url. Loopback names of the listen port are always trusted.
    trusted_hosts: tuple[str, ...] = ()
    listen_url: str = "http://127.0.0.1:8080"
    default_model: str | None = None  # for async tasks that name none: the first served model
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout: float = 60.0  # seconds the whole request body may take to arrive
    max_pixels: int = MAX_PIXELS
    triton_timeout: float = 300.0  # seconds one Triton request may take
    concurrency_per_key: int = 4  # requests being processed at once per key, once their bodies are in
    requests_per_minute: int = 120
    uploads_per_key: int = 32  # request bodies arriving at once per key, in one gateway process
    fetch: FetchPolicy = field(default_factory=FetchPolicy)
    s3: S3Settings | None = None  # image bytes in this bucket instead of data_dir/images
    # Tasks, the image index and per-key limits in this PostgreSQL database (shared by replicas)
    # instead of data_dir/gateway.sqlite3.
    database_url: str | None = None
    workers: int = 1  # async tasks this gateway runs at once
    task_lease: float = 30.0  # seconds a worker holds a task without renewing (heartbeats: a third)

    def trusted_host_names(self) -> frozenset[str]:
        """The Host header values that result URLs may be built from, lower-case."""
        port = urllib.parse.urlsplit(self.listen_url).port
        loopback = {f"{name}:{port}" for name in ("127.0.0.1", "localhost", "[::1]")} if port else set()
        return frozenset(host.lower() for host in (*self.trusted_hosts, *loopback))


def _refusal(exc: InpaintError, names: dict[str, str]) -> TaskFailed:
    """An InpaintError as a TaskFailed naming the reference's field; a failure inside the server
    ("internal error: ...") is not the caller's fault and says so."""
    message = str(exc)
    if message.startswith("internal error"):
        return TaskFailed(f"inference failed on the server: {message}", code="inferenceFailed")
    if exc.field is None:
        return TaskFailed(message)
    public = names.get(exc.field, exc.field)
    return TaskFailed(f"{public}: {exc.reason}", public)


class TaskRunner:
    def __init__(self, config: GatewayConfig, storage: GatewayStorage) -> None:
        self.config = config
        self.storage = storage
        self._local = threading.local()

    def client(self) -> InpaintClient:
        """One Triton client per worker thread (channels are reused across that thread's tasks)."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = InpaintClient(self.config.triton_url, "grpc", timeout=self.config.triton_timeout)
            self._local.client = client
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken channel may fail to close; it is dropped anyway
                client.close()

    def image(self, value: str, field_name: str) -> bytes:
        """The bytes an image field stands for, or TaskFailed naming the field."""
        try:
            return resolve_image(value, field_name, self.storage, self.config.fetch, self.config.max_pixels)
        except InvalidInputError as exc:
            raise TaskFailed(str(exc), field_name) from None
        except OSError as exc:  # the image store failed reading an uploaded image
            logger.error("reading a stored image failed: %s", exc)
            message = f"{field_name}: the image store is unavailable ({exc}); retry later"
            raise StorageUnavailable(message) from None

    def call(self, names: dict[str, str], call: Any) -> Any:
        """``call(client)`` against Triton; refusals name the caller's field (``names`` maps them)."""
        try:
            return call(self.client())
        except ServerUnreachableError as exc:
            # A gRPC channel that failed waits out a growing back-off before it reconnects; a fresh
            # one next time lets the first request after Triton returns succeed.
            self._drop_client()
            raise TritonUnavailable(f"Triton at {self.config.triton_url} is not reachable: {exc}") from None
        except ModelUnavailableError as exc:  # being restored: 503 and Retry-After, not the caller's fault
            raise TritonUnavailable(str(exc)) from None
        except InpaintError as exc:
            raise _refusal(exc, names) from None

    # -- task types -------------------------------------------------------------------------------

    def image_upload(self, task: ImageUploadTask, base_url: str) -> list[dict[str, Any]]:
        data = self.image(task.image, "image")  # decoded once there: a corrupt file is refused now
        ext = image_extension(data)
        (image_uuid,) = self.store([(data, ext)])
        # imageUUID to use in later tasks, and imageURL as the hosted API answers (its SDKs read it).
        item = {"taskType": task.taskType, "taskUUID": task.taskUUID}
        return [item | output_fields("image", image_uuid, data, ext, "URL", base_url)]

    def image_inference(self, task: ImageInferenceTask, base_url: str) -> list[dict[str, Any]]:
        _inputs_once(task)
        _one_of(task, tuple(INFERENCE_FIELDS[name] for name in MASK_SOURCES))
        image = self.image(task.seedImage, "seedImage")
        mask = None if task.maskImage is None else self.image(task.maskImage, "maskImage")
        controls = runware_controls(INPAINT, task)
        prompt = controls.pop("prompt")
        result = self.call(
            INFERENCE_FIELDS, lambda client: client.inpaint(task.model, image, mask, prompt, **controls)
        )
        ext = EXTENSIONS[task.outputFormat]
        made_mask = task.maskImage is None  # a mask made on the server: the caller sees which
        uuids = self.store(
            [(data, ext) for data in result.images] + ([(result.mask, "png")] if made_mask else [])
        )
        items = []
        for data, seed, image_uuid in zip(result.images, result.seeds, uuids, strict=False):
            item = {"taskType": task.taskType, "taskUUID": task.taskUUID}
            item.update(output_fields("image", image_uuid, data, ext, task.outputType, base_url))
            item["seed"] = seed
            if made_mask:
                item.update(
                    output_fields("maskImage", uuids[-1], result.mask, "png", task.outputType, base_url)
                )
            items.append(item)
        return items

    def image_masking(self, task: ImageMaskingTask, base_url: str) -> list[dict[str, Any]]:
        _one_of(task, ("model", "maskPrompt"))
        image = self.image(task.inputImage, "inputImage")
        controls = runware_controls(MASK, task)
        result = self.call(MASKING_FIELDS, lambda client: client.mask(image, **controls))
        mask = result.mask
        if task.outputFormat != "PNG":
            mask = _reencode(mask, task.outputFormat)
        ext = EXTENSIONS[task.outputFormat]
        (mask_uuid,) = self.store([(mask, ext)])
        item: dict[str, Any] = {"taskType": task.taskType, "taskUUID": task.taskUUID}
        item.update(output_fields("maskImage", mask_uuid, mask, ext, task.outputType, base_url))
        item["detections"] = result.detections
        return [item]

    def image_background_removal(self, task: Any, base_url: str) -> list[dict[str, Any]]:
        settings = task.settings or task
        if settings.alphaMatting:
            raise TaskFailed(
                "alphaMatting: not supported here (no matting model is served); the cut-out's edges are "
                "the person segmentation's soft mask, or a hard one with postProcessMask",
                "alphaMatting",
            )
        data = self.image(task.inputImage, "inputImage")
        controls = {"model": "person", "padding": 0, "blur": 0}
        result = self.call(MASKING_FIELDS, lambda client: client.mask(data, **controls))
        alpha = decode_mask(result.mask)
        if settings.postProcessMask:
            alpha = (alpha >= 0.5).astype(np.float64)
        if settings.returnOnlyMask:
            mask_rgb = np.repeat(mask_pixels(alpha)[..., None], 3, axis=-1)
            output = encode_image(mask_rgb, task.outputFormat, task.outputQuality)
        else:
            background = tuple(settings.rgba) if settings.rgba else (0, 0, 0, 0)
            output = cut_out(decode_image(data), alpha, background, task.outputFormat, task.outputQuality)
        ext = EXTENSIONS[task.outputFormat]
        (image_uuid,) = self.store([(output, ext)])
        item: dict[str, Any] = {"taskType": task.taskType, "taskUUID": task.taskUUID}
        item.update(output_fields("image", image_uuid, output, ext, task.outputType, base_url))
        return [item]

    def run(self, task: Any, base_url: str) -> list[dict[str, Any]]:
        handler = {
            "imageUpload": self.image_upload,
            "imageInference": self.image_inference,
            "imageMasking": self.image_masking,
            "imageBackgroundRemoval": self.image_background_removal,
            "removeBackground": self.image_background_removal,
        }[task.taskType]
        return handler(task, base_url)

    def store(self, images: list[tuple[bytes, str]]) -> list[str]:
        """Store every (data, ext) or none of them: a task that fails half-way leaves no orphans."""
        stored: list[str] = []
        try:
            for data, ext in images:
                stored.append(self.storage.put_image(data, ext))
        except OSError as exc:
            for image_uuid in stored:
                with contextlib.suppress(OSError):
                    self.storage.delete_image(image_uuid)
            logger.error("storing images failed: %s", exc)
            raise StorageUnavailable(
                f"images could not be stored ({exc.strerror or exc}); retry later"
            ) from None
        return stored


def runware_controls(schema: RequestSchema, task: Any) -> dict[str, Any]:
    """The task's control fields by control name, images left out (they are resolved first)."""
    return {
        control.name: getattr(task, control.runware)
        for control in schema
        if control.runware is not None and control.kind is not bytes
    }


def _inputs_once(task: Any) -> None:
    """An image given both at the top (seedImage, maskImage) and in ``inputs`` is refused: which one
    was meant cannot be told. (The schema copies ``inputs`` up where the top is empty.)"""
    inputs = task.inputs
    if inputs is None:
        return
    pairs = (("image", "seedImage"), ("seedImage", "seedImage"), ("mask", "maskImage"))
    for source, target in pairs:
        value = getattr(inputs, source)
        if value is not None and getattr(task, target) != value:
            raise TaskFailed(
                f"inputs.{source}: {target} is given too; send the image once", f"inputs.{source}"
            )
    if inputs.image is not None and inputs.seedImage is not None:
        raise TaskFailed(
            "inputs.seedImage: inputs.image is given too; send the image once", "inputs.seedImage"
        )


def _one_of(task: Any, names: tuple[str, ...]) -> None:
    given = [name for name in names if getattr(task, name) is not None]
    if len(given) != 1:
        raise TaskFailed(
            f"{names[0]}: send exactly one of {', '.join(names)}"
            + (f"; got {', '.join(given)}" if given else ""),
            names[0],
        )


def _reencode(png: bytes, name: str) -> bytes:
    """The mask in the task's output format (image_masking answers PNG)."""
    return encode_image(decode_image(png, "mask"), name)


def result_images(result: Any) -> list[str]:
    """The image UUIDs a task's outcome lists: its every ``...UUID`` field but ``taskUUID``, at any
    depth (Runware items and Eden outputs alike). All of them were made by the run that wrote it."""
    if isinstance(result, dict):
        return [
            found
            for key, value in result.items()
            for found in (
                [value] if key.endswith("UUID") and key != "taskUUID" and isinstance(value, str)
                else result_images(value)
            )
        ]  # fmt: skip
    if isinstance(result, list):
        return [found for value in result for found in result_images(value)]
    return []


def _resent(record: TaskRecord, digest: str, task_uuid: str) -> TaskRecord:
    """A task whose UUID is taken: the same request sent again (a client retrying after a lost answer)
    gets the one task there is; a different request under that UUID is refused."""
    if record.digest == digest:
        return record
    raise TaskFailed(
        f"taskUUID: {task_uuid} was already used by another async task of this key; send a new UUID",
        "taskUUID",
    )


def resolution_size(width: int, height: int, resolution: int, multiple: int = 16) -> tuple[int, int]:
    """Eden's ``resolution``: the longer side of the processing size, the aspect ratio kept, both sides
    multiples of 16 (what every family accepts) and at least 64."""
    scale = resolution / max(width, height)
    return (
        max(64, int(width * scale) // multiple * multiple),
        max(64, int(height * scale) // multiple * multiple),
    )


def request_digest(task: Any) -> str:
    """A digest of a task as it was sent: a resend (the same digest) is told from a reuse of its UUID."""
    sent = task.model_dump(mode="json", exclude_none=True)
    return hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()


class AsyncInpainting:
    """Async tasks (Eden-style, and Runware-style sent with deliveryMethod "async"): stored first, then
    run by ``workers`` threads that claim them from the task store, so they survive a gateway restart
    and, with a shared store, are run by whichever replica is free. A worker holds its task under a
    lease it renews every third of ``task_lease``; a task whose worker died is claimed again once the
    lease ran out (:mod:`.records`)."""

    RETRY_SECONDS = 5.0
    GIVE_UP_SECONDS = 600.0  # Triton unreachable this long: the task fails
    POLL_SECONDS = 1.0  # how often an idle worker looks for due tasks it was not told of

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.storage = runner.storage
        self.tasks = runner.storage.tasks
        config = runner.config
        self.lease = config.task_lease
        process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.owners = [f"{process}:{index}" for index in range(config.workers)]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, str] = {}  # task id -> the worker running it now (heartbeats)
        self._running_lock = threading.Lock()

    def create(self, args: Any) -> Any:
        """Store the task, its input images first (as uploads), so it can run after a restart."""
        if (args.mask is None) == (args.masking_prompt is None):
            raise TaskFailed("args.mask: send a mask image or a masking_prompt, one of the two", "args.mask")
        stored = args.model_dump()
        # Every input is resolved and checked before anything is stored: a refused task keeps nothing.
        inputs = {
            name: self.runner.image(getattr(args, name), f"args.{name}")
            for name in ("image", "mask")
            if getattr(args, name) is not None
        }
        if "mask" in inputs:
            image_size, mask_size = (probe(inputs[name])[1:] for name in ("image", "mask"))
            if image_size != mask_size:
                raise TaskFailed(
                    f"args.mask: size {mask_size[0]}x{mask_size[1]} does not match the image's "
                    f"{image_size[0]}x{image_size[1]}; send a mask of the same width and height",
                    "args.mask",
                )
        # Whatever Triton would refuse (a mask prompt that finds nothing, a size over the memory budget)
        # is refused now, with a 400, not later in the task. A Triton that does not answer does not
        # stop the task from being accepted: it waits and retries like any other.
        try:
            self._request(stored, inputs["image"], inputs.get("mask"), dry_run=True)
        except TritonUnavailable as exc:
            logger.warning("async task accepted without its checks: %s", exc)
        uuids = self.runner.store([(data, image_extension(data)) for data in inputs.values()])
        stored.update(zip(inputs, uuids, strict=True))
        record = self.tasks.create_task(EDEN_TOOL, stored, str(uuid.uuid4()))
        self._wake.set()
        return record

    def create_runware(self, task: Any, caller: str, base_url: str) -> TaskRecord:
        """Store a Runware-style task sent with deliveryMethod "async": its image inputs first (as
        uploads: checked now, no URL fetched later), then the task; the worker runs it."""
        task_id = runware_task_id(caller, task.taskUUID)
        prefix = task_id[: -len(task.taskUUID)]
        digest = request_digest(task)
        existing = self.tasks.get_task(task_id)
        if existing is not None:
            return _resent(existing, digest, task.taskUUID)
        pending = self.tasks.count_unfinished(prefix)
        if pending >= MAX_PENDING_PER_CALLER:
            raise TaskFailed(
                f"this key has {pending} async tasks waiting or running (at most {MAX_PENDING_PER_CALLER}); "
                "fetch their results with getResponse before sending more",
                "deliveryMethod",
                "rateLimited",
            )
        if task.taskType == "imageInference":
            _inputs_once(task)  # before any image is fetched or decoded
        inputs = {
            name: self.runner.image(getattr(task, name), name)
            for name in ASYNC_IMAGE_FIELDS[task.taskType]
            if getattr(task, name) is not None
        }
        # ``inputs`` was copied to seedImage/maskImage by the schema; those are stored as uploads.
        stored = task.model_dump(mode="json", exclude_none=True, exclude={"deliveryMethod", "inputs"})
        uuids = self.runner.store([(data, image_extension(data)) for data in inputs.values()])
        stored.update(zip(inputs, uuids, strict=True))
        args = {"task": stored, "base_url": base_url}
        try:
            record = self.tasks.create_task(RUNWARE_TOOL, args, task_id, digest)
        except TaskExists as exc:  # the same UUID sent twice at once (to two replicas): one task
            for image_uuid in uuids:
                self.storage.delete_image(image_uuid)
            return _resent(exc.record, digest, task.taskUUID)
        self._wake.set()
        return record

    def response(self, caller: str, task_uuid: str) -> list[dict[str, Any]]:
        """``getResponse``: an async task's items so far (``status`` processing or success); a task that
        failed raises its error, as the task itself would have."""
        record = self.tasks.get_task(runware_task_id(caller, task_uuid))
        if record is None or record.tool != RUNWARE_TOOL:
            raise TaskFailed(
                f"taskUUID: no async task {task_uuid} of this key (send a task with deliveryMethod "
                "'async' first)",
                "taskUUID",
                "notFound",
            )
        task_type = record.args["task"]["taskType"]
        if record.status in ("pending", "running"):
            return [{"taskType": task_type, "taskUUID": task_uuid, "status": "processing"}]
        if record.status == "failed":
            stored = (record.result or {}).get("errors") or [
                {"message": record.error, "code": "inferenceFailed"}
            ]
            error = stored[0]
            code = error.get("code", "inferenceFailed")
            raise TaskFailed(error["message"], error.get("parameter"), code, task_type)
        return [{**item, "status": "success"} for item in record.result["data"]]

    def finished(self, caller: str, task_uuid: str) -> bool:
        """Whether the task has its outcome (a follower stops waiting); not while the store is down."""
        try:
            record = self.tasks.get_task(runware_task_id(caller, task_uuid))
        except OSError:
            return False
        return record is None or record.status in ("completed", "failed")

    def runware(self, args: dict[str, Any]) -> dict[str, Any]:
        stored = args["task"]
        # Validated when it was accepted; rebuilt as it was (validators ran then, e.g. __BLANK__ -> "").
        task = TASK_TYPES[stored["taskType"]].model_construct(**stored)
        return {"data": self.runner.run(task, args["base_url"])}

    def _request(self, args: dict[str, Any], image: bytes, mask: bytes | None, dry_run: bool = False) -> Any:
        """The task's inpainting request to Triton (``dry_run``: only its checks, no images)."""
        _, width, height = probe(image)
        width, height = resolution_size(width, height, args["resolution"])

        def call(client: InpaintClient) -> Any:
            model = args.get("model") or self.runner.config.default_model or _first_model(client)
            controls = {
                control.name: args.get(control.eden)
                for control in INPAINT
                if control.eden is not None and control.kind is not bytes
            }
            prompt = controls.pop("prompt")
            return client.inpaint(
                model,
                image,
                mask,
                prompt,
                **controls,
                strength=min(1.0, args["creativity"]),
                width=width,
                height=height,
                dry_run=dry_run or None,
            )

        return self.runner.call(EDEN_FIELDS, call)

    def start(self) -> None:
        if not self.tasks.shared:
            # One machine, one gateway: whatever the store shows running was left by this gateway's
            # previous run; it is taken again now, not once its lease has run out.
            with contextlib.suppress(OSError):
                self.tasks.expire_leases()
        for index, owner in enumerate(self.owners):
            thread = threading.Thread(target=self._work, args=(owner,), name=f"async-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        beat = threading.Thread(target=self._heartbeat, name="async-leases", daemon=True)
        beat.start()
        self._threads.append(beat)
        self.tasks.on_new_task(self._wake.set)  # tasks other replicas store

    def stop(self) -> None:
        """Stop claiming; tasks still running after a short wait are given back, so that another replica
        takes them at once instead of after their lease (their late outcome is then dropped)."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + 10.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for owner, thread in zip(self.owners, self._threads, strict=False):
            if thread.is_alive():
                with contextlib.suppress(OSError):
                    self.tasks.release_owned(owner)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            with self._running_lock:
                held = dict(self._running)
            try:
                self.tasks.heartbeat(held, self.lease)
            except OSError as exc:  # the leases may run out: other workers then take those tasks over
                logger.warning("async task leases not renewed: %s", exc)

    def _work(self, owner: str) -> None:
        while not self._stop.is_set():
            try:
                task = self.tasks.claim_task(owner, self.lease)
            except OSError as exc:
                logger.warning("async worker %s: cannot claim tasks: %s", owner, exc)
                self._stop.wait(self.RETRY_SECONDS)
                continue
            if task is None:
                self._wake.wait(timeout=self.POLL_SECONDS)
                self._wake.clear()
                continue
            with self._running_lock:
                self._running[task.id] = owner
            try:
                self._run(task, owner)
            finally:  # written, given back, or abandoned to its lease: no longer renewed
                with self._running_lock:
                    self._running.pop(task.id, None)

    def _run(self, task: TaskRecord, owner: str) -> None:
        """Run one claimed task and write its outcome (if this worker still holds it)."""
        try:
            if task.attempts > MAX_ATTEMPTS:
                raise TaskFailed(
                    f"the task was started {task.attempts - 1} times and its worker stopped each time "
                    f"(a gateway died or hung while running it); it is not tried again",
                    code="inferenceFailed",
                )
            result = self.runware(task.args) if task.tool == RUNWARE_TOOL else self.inpaint(task.args)
            outcome: tuple[str, dict[str, Any] | None, str | None] = ("completed", result, None)
        except TaskFailed as exc:
            failure = None
            if task.tool == RUNWARE_TOOL:  # the reference's error item, as the sync task answers it
                failure = {"errors": [error_item(exc.message, exc.parameter, None, exc.code)]}
            outcome = ("failed", failure, exc.message)
        except Unavailable as exc:
            if time.time() <= task.created + self.GIVE_UP_SECONDS:
                with contextlib.suppress(OSError):  # not given back: the lease runs out, same effect
                    self.tasks.release_task(task.id, owner, str(exc), self.RETRY_SECONDS)
                return
            outcome = ("failed", None, str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken task must not stop the worker
            logger.exception("async task %s failed", task.id)
            outcome = ("failed", None, f"internal error: {type(exc).__name__}: {exc}")
        self._finish(task, owner, *outcome)

    def _finish(
        self, task: TaskRecord, owner: str, status: str, result: dict[str, Any] | None, error: str | None
    ) -> None:
        """Write the outcome, retrying while the store is down for as long as the lease would last. An
        outcome refused because another worker took the task over takes the images it made with it:
        nothing would ever list them."""
        deadline = time.monotonic() + self.lease
        while True:
            try:
                if not self.tasks.finish_task(task.id, owner, status, result, error):
                    logger.warning(
                        "async task %s: its lease ran out and another worker took it over; this "
                        "worker's outcome is dropped",
                        task.id,
                    )
                    self._discard(task.id, result)
                return
            except OSError as exc:
                if time.monotonic() > deadline or self._stop.is_set():
                    logger.error("async task %s: outcome not stored (%s); it will run again", task.id, exc)
                    return
                self._stop.wait(1.0)

    def _discard(self, task_id: str, result: dict[str, Any] | None) -> None:
        """Remove a refused outcome's images, but none that the stored task lists: a write that failed
        after all committed (the answer lost with the connection) makes its retry look refused."""
        try:
            stored = self.tasks.get_task(task_id)
        except OSError:  # cannot tell: an orphan is better than a listed image gone
            return
        listed = set(result_images(stored.result if stored else None))
        for image_uuid in result_images(result):
            if image_uuid in listed:
                continue
            try:
                self.storage.delete_image(image_uuid)
            except OSError as exc:
                logger.warning("image %s of a dropped outcome not removed: %s", image_uuid, exc)

    def inpaint(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            image = self.storage.get_image(args["image"])
            mask = self.storage.get_image(args["mask"]) if args.get("mask") else None
        except OSError as exc:  # the image store is down: the task waits and retries, as for Triton
            raise StorageUnavailable(f"the task's input images cannot be read ({exc})") from None
        if image is None or (args.get("mask") and mask is None):
            raise TaskFailed("the task's stored input images are gone", "args.image")
        result = self._request(args, image.data, None if mask is None else mask.data)
        *uuids, mask_uuid = self.runner.store([(data, "png") for data in [*result.images, result.mask]])
        outputs = [
            {"imageUUID": image_uuid, "url": f"/images/{image_uuid}.png", "seed": seed}
            for image_uuid, seed in zip(uuids, result.seeds, strict=True)
        ]
        return {"output": outputs, "mask": {"imageUUID": mask_uuid, "url": f"/images/{mask_uuid}.png"}}


EDEN_FIELDS = {
    **{control.name: f"args.{control.eden}" for control in INPAINT if control.eden},
    # What Eden-style tasks send under other names: the size from resolution, a prompt's detector.
    "mask_model": "args.masking_prompt",
    "width": "args.resolution",
    "height": "args.resolution",
    "strength": "args.creativity",
    "model": "args.model",
}


def _first_model(client: InpaintClient) -> str:
    served = client.served_models()
    if not served:
        raise TaskFailed("no inpainting model is served", "args.model")
    return served[0]
