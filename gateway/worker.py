"""The async task queue: workers that claim stored tasks, hold them under a lease they renew, run them
and write their outcome.

Tasks are stored first (by the Runware and Eden modules, which know what a task means), then run by
``workers`` threads that claim them from the task store, so they survive a gateway restart and, with a
shared store, are run by whichever replica is free. A worker holds its task under a lease it renews
every third of ``task_lease``; a task whose worker died is claimed again once the lease ran out
(:mod:`.store.records`). What a task does is a handler given by the app for its ``tool``: this module
knows no task style.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from triton_inpaint.gateway.config import GatewayConfig
from triton_inpaint.gateway.errors import TaskFailed, TaskTimedOut, Unavailable, logger
from triton_inpaint.gateway.store.records import MAX_ATTEMPTS, TaskRecord
from triton_inpaint.gateway.store.storage import GatewayStorage

# What a handler calls while it runs: (progress 0-1, what to show of it, e.g. a progress item).
Report = Callable[[float, dict[str, Any] | None], None]
# tool -> run(stored args, report) -> the result to store; it raises TaskFailed (refused), Unavailable
# (retry).
Handler = Callable[[dict[str, Any], Report], dict[str, Any]]
# tool -> the stored result of a refused task (None: only its message), in that style's error shape.
Failure = Callable[[TaskFailed], dict[str, Any] | None]


class TaskWorker:
    RETRY_SECONDS = 5.0
    GIVE_UP_SECONDS = 600.0  # Triton unreachable this long: the task fails
    POLL_SECONDS = 1.0  # how often an idle worker looks for due tasks it was not told of
    REPORT_SECONDS = 0.5  # a running task's progress is written at most this often

    def __init__(
        self,
        config: GatewayConfig,
        storage: GatewayStorage,
        handlers: Mapping[str, Handler],
        failures: Mapping[str, Failure] | None = None,
    ) -> None:
        self.storage = storage
        self.tasks = storage.tasks
        self.handlers = dict(handlers)
        self.failures = dict(failures or {})
        self.lease = config.task_lease
        process = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.owners = [f"{process}:{index}" for index in range(config.workers)]
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[str, str] = {}  # task id -> the worker running it now (heartbeats)
        self._running_lock = threading.Lock()

    def wake(self) -> None:
        """A task was stored: an idle worker looks now rather than at its next poll."""
        self._wake.set()

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
            handler = self.handlers.get(task.tool)
            if handler is None:
                raise TaskFailed(f"this gateway runs no {task.tool!r} tasks", code="inferenceFailed")
            report = self._reporter(task, owner)
            outcome: tuple[str, dict[str, Any] | None, str | None] = (
                "completed",
                handler(task.args, report),
                None,
            )
        except TaskFailed as exc:
            if isinstance(exc, TaskTimedOut):
                exc = exc.for_async()
            failure = self.failures.get(task.tool)
            outcome = ("failed", failure(exc) if failure else None, exc.message)
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

    def _reporter(self, task: TaskRecord, owner: str) -> Report:
        """The task's progress written to the store (for getResponse, from any replica), at most every
        REPORT_SECONDS: a store that does not answer costs the task its progress, never its run."""
        last = [0.0]

        def report(progress: float, live: dict[str, Any] | None) -> None:
            now = time.monotonic()
            if now - last[0] < self.REPORT_SECONDS:
                return
            last[0] = now
            try:
                self.tasks.report_progress(task.id, owner, progress, live)
            except OSError as exc:
                logger.warning("async task %s: progress not stored: %s", task.id, exc)

        return report

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
