"""What happens to a request before any route sees it, in the order that costs an attacker the most.

1. The API key (401), from the headers alone: a caller without a key gets nothing read, parsed or
   stored, however large or malformed its body.
2. The key's bodies arriving at once in this process (429), before the body: stalled uploads cannot
   pile up without bound.
3. The body, read whole under a size cap (413, whether Content-Length says so, lies, or is absent
   because the body is chunked) and a deadline (408).
4. The key's limits (429): requests at once and a minute. Counted once the body is in, so they count
   requests being processed: a key's uploads stalled mid-body hold none of its slots, and its next
   normal request goes ahead.
5. The route, which gets the body already in memory.

A pure ASGI middleware rather than FastAPI dependencies, because dependencies run only after FastAPI
has read and parsed the body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from triton_inpaint.gateway.access.limits import (
    Limits,
    acquire,
    matching_key,
    over_limit_message,
    presented_key,
    release,
)
from triton_inpaint.gateway.errors import AsciiJSONResponse, error_item, error_response

# Paths that need a key (and count against its limits); health, metrics, images and the API docs
# do not, as in the reference (image URLs are capabilities).
PROTECTED_PREFIXES = ("/v1", "/v2/")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RequestGuard:
    def __init__(
        self,
        app: Any,
        keys: frozenset[str],
        limits: Limits,
        max_body_bytes: int,
        body_timeout: float,
        uploads_per_key: int = 32,
    ) -> None:
        self.app = app
        self.keys = keys
        self.limits = limits
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.uploads_per_key = uploads_per_key
        self._uploads: dict[str, int] = {}  # bodies arriving per caller; the event loop's thread only

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
        }
        who = None
        if scope["path"].startswith(PROTECTED_PREFIXES):
            who = self._caller(scope, headers)
            if who is None:
                await error_response(
                    401,
                    error_item(
                        "missing or invalid API key; send 'Authorization: Bearer KEY' or 'X-Api-Key: KEY'",
                        code="unauthorized",
                    ),
                    headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return
            # The route reads who is calling (request.state.caller): async tasks belong to their caller.
            scope.setdefault("state", {})["caller"] = who
            if self._uploads.get(who, 0) >= self.uploads_per_key:
                message = (
                    f"too many request bodies arriving at once for this key (at most "
                    f"{self.uploads_per_key}); finish or close the uploads in progress"
                )
                await error_response(
                    429, error_item(message, code="rateLimited"), headers={"Retry-After": "1"}
                )(scope, receive, send)
                return
        admitted = False
        try:
            self._upload_started(who)
            try:
                body, refusal = await self._read_body(headers.get("content-length"), receive)
            finally:
                self._upload_ended(who)
            if refusal is None and who is not None:
                refusal = await self._admit(who)
                admitted = refusal is None
            if refusal is not None:
                await refusal(scope, receive, send)
                return
            await self.app(scope, _replay(body, receive), send)
        except _Disconnected:
            return  # the client left mid-body: nobody to answer
        finally:
            if admitted:
                await release(self.limits, who)

    async def _admit(self, who: str) -> AsciiJSONResponse | None:
        """Take one of the key's slots, or the refusal to send."""
        try:
            wait = await acquire(self.limits, who)
        except OSError as exc:  # shared limits: the database that counts them did not answer
            return error_response(
                503, error_item(str(exc), code="serviceUnavailable"), headers={"Retry-After": "5"}
            )
        if wait is None:
            return None
        return error_response(
            429,
            error_item(over_limit_message(self.limits, wait), code="rateLimited"),
            headers={"Retry-After": str(int(wait))},
        )

    def _upload_started(self, who: str | None) -> None:
        if who is not None:
            self._uploads[who] = self._uploads.get(who, 0) + 1

    def _upload_ended(self, who: str | None) -> None:
        if who is None:
            return
        left = self._uploads.get(who, 1) - 1
        if left:
            self._uploads[who] = left
        else:
            self._uploads.pop(who, None)

    def _caller(self, scope: dict[str, Any], headers: dict[str, str]) -> str | None:
        """The identity limits count against: the key, or the client address when no key is set."""
        if not self.keys:
            client = scope.get("client")
            return f"address:{client[0] if client else 'unknown'}"
        key = matching_key(self.keys, presented_key(headers.get("authorization"), headers.get("x-api-key")))
        return None if key is None else f"key:{key}"

    async def _read_body(
        self, declared: str | None, receive: Receive
    ) -> tuple[bytes, AsciiJSONResponse | None]:
        too_large = error_response(
            413, error_item(f"request body is larger than {self.max_body_bytes} bytes", code="bodyTooLarge")
        )
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            if declared.isdigit():
                return b"", too_large
            return b"", error_response(
                400, error_item("Content-Length is not a number", "Content-Length", code="invalidRequest")
            )
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0))
            except TimeoutError:
                message = f"the request body did not arrive within {self.body_timeout:g} s"
                return b"", error_response(408, error_item(message, code="requestTimeout"))
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


class _Disconnected(Exception):
    pass


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the route the body already read, then waits for the disconnect."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
