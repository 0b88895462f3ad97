"""Progress items of an imageInference task while it denoises, and how they cross from the worker
thread that runs the task to the connection that sends them.

An item has the hosted API's getResponse shape for a task still running (``status: "processing"``,
``progress`` in percent), which the hosted API's newest SDK (PyPI ``runware-sdk``) hands to its
``on_progress`` callback, plus the exact ``step`` of ``steps`` and, when asked, ``previewImages``:
small JPEG data URIs of the images so far. No key of an item ends in URL, Base64Data or DataURI, the
suffixes by which that SDK tells a result from progress.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

from triton_inpaint.client.streaming import Progress

# What a task handler calls with each progress item (on its worker thread).
ProgressSink = Callable[[dict[str, Any]], None]
SEND_TIMEOUT = 10.0  # seconds a worker thread waits for a progress frame to be sent before it skips it


def wants_progress(task: Any) -> bool:
    """Whether an inference task asked for progress items (previews imply progress)."""
    return bool(getattr(task, "includeProgress", None) or getattr(task, "includePreviews", None))


def progress_item(task: Any, progress: Progress) -> dict[str, Any]:
    """One progress item of ``task``: percent done, the step of steps and any previews."""
    item: dict[str, Any] = {
        "taskType": task.taskType,
        "taskUUID": task.taskUUID,
        "status": "processing",
        "progress": percent(progress.step, progress.total),
        "step": progress.step,
        "steps": progress.total,
    }
    if progress.previews:
        item["previewImages"] = [
            "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii") for jpeg in progress.previews
        ]
    return item


def percent(step: int, total: int) -> int:
    """Whole percent done, never 100 before the result (the result item says it is done)."""
    if total <= 0:
        return 0
    return min(99, (100 * step) // total)


def sink_from_thread(
    loop: asyncio.AbstractEventLoop, deliver: Callable[[dict[str, Any]], Awaitable[None]]
) -> ProgressSink:
    """A sink a worker thread calls: each item is delivered on ``loop`` before the call returns, so a
    task's progress frames are all out before its result frame, in order; a connection too slow to take
    one within SEND_TIMEOUT loses that frame, not the task."""

    def sink(item: dict[str, Any]) -> None:
        future = asyncio.run_coroutine_threadsafe(deliver(item), loop)
        try:
            future.result(timeout=SEND_TIMEOUT)
        except TimeoutError:
            future.cancel()

    return sink
