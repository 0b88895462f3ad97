"""API keys and per-key limits: who may call, how many requests at once, how many a minute."""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Protocol

from starlette.concurrency import run_in_threadpool

KEYS_ENV = "TRITON_INPAINT_API_KEYS"


def load_keys(path: Path | None) -> frozenset[str]:
    """Keys from a file (one per line, ``#`` comments) and from ``$TRITON_INPAINT_API_KEYS``
    (comma-separated). No keys at all means the gateway asks for none."""
    keys: set[str] = set()
    if path is not None:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.add(line)
    keys.update(k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip())
    return frozenset(keys)


def presented_key(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``."""
    if api_key:
        return api_key.strip()
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def matching_key(keys: frozenset[str], presented: str | None) -> str | None:
    """The configured key equal to ``presented``, compared in constant time against every key (the
    time taken does not depend on how much of a key matched, nor on which key)."""
    if presented is None:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(key.encode(), presented.encode()):
            found = key
    return found


class Limits(Protocol):
    concurrency: int
    per_minute: int
    blocking: bool  # True: acquire and release wait on a database, so they run in a thread

    def acquire(self, who: str) -> float | None: ...

    def release(self, who: str) -> None: ...

    def close(self) -> None: ...


async def acquire(limits: Limits, who: str) -> float | None:
    """:meth:`Limits.acquire` from the event loop; OSError when shared limits cannot be counted."""
    return await run_in_threadpool(limits.acquire, who) if limits.blocking else limits.acquire(who)


async def release(limits: Limits, who: str) -> None:
    if limits.blocking:
        await run_in_threadpool(limits.release, who)
    else:
        limits.release(who)


def over_limit_message(limits: Limits, wait: float) -> str:
    """What a caller over its limits is told."""
    return (
        f"too many requests for this key (at most {limits.concurrency} at once and "
        f"{limits.per_minute} a minute); retry after {wait:g} s"
    )


class KeyLimits:
    """Concurrency and a sliding one-minute rate window per key (or per client address when open), in
    this process (one replica; :class:`~.postgres.SharedKeyLimits` counts across replicas)."""

    blocking = False  # answers from memory: called straight from the event loop

    def __init__(self, concurrency: int, per_minute: int) -> None:
        self.concurrency = concurrency
        self.per_minute = per_minute
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def acquire(self, who: str) -> float | None:
        """None when the request may go ahead (call :meth:`release` after); else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            recent = self._recent.setdefault(who, deque())
            while recent and now - recent[0] >= 60.0:
                recent.popleft()
            if len(recent) >= self.per_minute:
                return max(1.0, math.ceil(60.0 - (now - recent[0])))
            if self._active.get(who, 0) >= self.concurrency:
                return 1.0
            recent.append(now)
            self._active[who] = self._active.get(who, 0) + 1
            return None

    def release(self, who: str) -> None:
        with self._lock:
            self._active[who] = max(0, self._active.get(who, 0) - 1)

    def close(self) -> None:
        """Nothing to stop (the shared limits stop their renewal thread)."""
