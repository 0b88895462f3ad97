"""What every task needs of Triton and the stores: its images resolved (uploads, URLs, base64), one
Triton client per worker thread, Triton's refusals turned into errors naming the caller's field, and
results stored all or nothing.

Plain synchronous code, run in worker threads by the routes and the async worker; no FastAPI here.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from triton_inpaint.api.errors import InvalidInputError
from triton_inpaint.client import (
    DeadlineExceededError,
    InpaintClient,
    InpaintError,
    ModelUnavailableError,
    ServerUnreachableError,
)
from triton_inpaint.gateway.config import GatewayConfig
from triton_inpaint.gateway.errors import (
    StorageUnavailable,
    TaskFailed,
    TaskTimedOut,
    TritonUnavailable,
    logger,
)
from triton_inpaint.gateway.inputs.images import resolve_image
from triton_inpaint.gateway.store.storage import GatewayStorage


def refusal(exc: InpaintError, names: dict[str, str]) -> TaskFailed:
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
        except DeadlineExceededError:  # Triton answers, the task is just longer than the gateway waits
            raise TaskTimedOut(self.config.triton_timeout) from None
        except InpaintError as exc:
            raise refusal(exc, names) from None
        except InvalidInputError as exc:  # refused by the client library before it asked Triton
            public = names.get(exc.field, exc.field)
            raise TaskFailed(f"{public}: {exc.reason}", public) from None

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
