"""A request's denoising loop as a job that advances one step at a time, and in-flight batching: many
jobs advanced together, one denoiser call per tick carrying every active request's rows.

This is what continuous batching does for LLM serving, applied to diffusion. A job holds everything
one request's loop needs (its scheduler object with its own state, timesteps, guidance, generators,
latents and conditions); the denoiser's inputs are per row (each row has its own timestep), so rows
of different requests at different steps, with different schedulers or guidance, go through one
network call. Requests join and leave between ticks. A request's result does not depend on its
batch-mates: each job only ever sees its own slice of the prediction.

Jobs batch when their denoiser inputs have the same shapes apart from the batch axis (same processing
size and text length: a *size bucket*); different buckets in one tick make one call each. A bucket
whose rows exceed the network's largest batch is split between calls at job boundaries.

No Triton import: the Triton model (``triton/denoise.py``) supplies the network calls and sends the
responses; tests drive the same code with onnxruntime.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from triton_inpaint.api.imaging import Box

Result = tuple[np.ndarray, Box]


# The output every denoiser call returns for the scheduler: the UNet's noise, FLUX's velocity.
PREDICTION = "noise_pred"


@dataclass
class NetworkCall:
    """One network call a job's step needs: the role of the network (``unet``, a shallow UNet, a
    transformer half), its inputs by tensor name (batch first), and the outputs the job reads."""

    role: str
    inputs: dict[str, torch.Tensor]
    outputs: tuple[str, ...] = (PREDICTION,)


class DenoiseJob(Protocol):
    """One request inside its denoising loop (see :class:`triton_inpaint.pipelines.steps.job.DenoisingJob`).
    A step is one network call, or several one after another (the first-block cache's two halves)."""

    @property
    def done(self) -> bool:
        """All steps taken: ``finish`` may run."""

    def call(self) -> NetworkCall:
        """The next call this job's current step needs."""

    def run(self, call: NetworkCall) -> dict[str, torch.Tensor]:
        """Run a call of this job's kind (possibly carrying several jobs' rows): its outputs by name."""

    def take(self, outputs: dict[str, torch.Tensor]) -> bool:
        """This job's rows of its call's outputs; True once the step is taken, False when the step
        needs another call."""

    def finish(self) -> Result:
        """Decode: the generated images and the box of the input they belong to."""


def run_alone(job: DenoiseJob) -> Result:
    """A job's whole loop with nobody else in its batch (in-process use and the parity reference)."""
    while not job.done:
        job.take(job.run(job.call()))
    return job.finish()


def _rows(inputs: dict[str, torch.Tensor]) -> int:
    return next(iter(inputs.values())).shape[0]


def _bucket(call: NetworkCall) -> tuple:
    shapes = tuple((name, tuple(value.shape[1:]), value.dtype) for name, value in call.inputs.items())
    return (call.role, shapes)


Member = tuple[DenoiseJob, NetworkCall]


def _chunks(members: list[Member], max_rows: int) -> Iterable[list[Member]]:
    chunk: list[Member] = []
    rows = 0
    for member in members:
        size = _rows(member[1].inputs)
        if chunk and rows + size > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(member)
        rows += size
    if chunk:
        yield chunk


def advance_together(jobs: list[DenoiseJob], max_rows: int) -> list[tuple[DenoiseJob, BaseException]]:
    """One tick: every job takes one step, through as few network calls as the buckets and
    ``max_rows`` allow. Calls group by network and input shapes (a bucket): full and cached steps of
    different requests go to their own networks, each in one call. A step that needs a second call
    (the first-block cache's second half) gets it in a second round of the same tick. Returns the jobs
    that failed (a failed call fails only the jobs in it)."""
    failures: list[tuple[DenoiseJob, BaseException]] = []
    pending = list(jobs)
    while pending:
        buckets: dict[tuple, list[Member]] = {}
        for job in pending:
            try:
                call = job.call()
            except Exception as exc:  # noqa: BLE001 - this job's failure is answered, the others go on
                failures.append((job, exc))
                continue
            buckets.setdefault(_bucket(call), []).append((job, call))
        pending = []
        for members in buckets.values():
            for chunk in _chunks(members, max_rows):
                pending += _run_chunk(chunk, failures)
    return failures


def _run_chunk(chunk: list[Member], failures: list[tuple[DenoiseJob, BaseException]]) -> list[DenoiseJob]:
    """One network call for a chunk of jobs' calls (their outputs joined); the jobs whose step needs
    another call."""
    first_job, first_call = chunk[0]
    outputs = tuple(dict.fromkeys(name for _, call in chunk for name in call.outputs))
    try:
        if len(chunk) == 1:
            batched = first_call.inputs
        else:
            names = first_call.inputs
            batched = {name: torch.cat([call.inputs[name] for _, call in chunk]) for name in names}
        results = first_job.run(NetworkCall(first_call.role, batched, outputs))
    except Exception as exc:  # noqa: BLE001
        failures.extend((job, exc) for job, _ in chunk)
        return []
    again = []
    start = 0
    for job, call in chunk:
        rows = _rows(call.inputs)
        try:
            if not job.take({name: results[name][start : start + rows] for name in call.outputs}):
                again.append(job)
        except Exception as exc:  # noqa: BLE001
            failures.append((job, exc))
        start += rows
    return again


Callback = Callable[[Result | None, BaseException | None], None]
Progress = Callable[[DenoiseJob], None]  # told of a job's step, on the worker thread


class SharedLedger:
    """The memory every denoise process of one checkpoint on one host has reserved: the plain model and
    its streaming twin each batch their own requests, and together they must stay within one budget.

    A small JSON file, ``{pid: [requests, bytes]}``, read and written under an exclusive ``flock``;
    entries of processes that are gone (a model reloaded, a stub killed) are dropped on every read.
    Written by hand: the standard library's multiprocessing shares memory only between a parent and
    the processes it starts, and Triton starts each model's process itself."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _change(self, change: Callable[[dict[str, list[int]]], bool]) -> bool:
        with open(self.path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read()
            entries = {pid: value for pid, value in (json.loads(text) if text else {}).items() if _alive(pid)}
            changed = change(entries)
            if changed:
                handle.seek(0)
                handle.truncate()
                handle.write(json.dumps(entries))
            return changed

    def reserve(self, cost: int, budget: int | None) -> bool:
        """Reserve ``cost`` bytes if they fit ``budget`` with everyone's (alone, a request always fits)."""

        def change(entries: dict[str, list[int]]) -> bool:
            active = sum(requests for requests, _ in entries.values())
            reserved = sum(used for _, used in entries.values())
            if active and budget is not None and reserved + cost > budget:
                return False
            mine = entries.setdefault(str(os.getpid()), [0, 0])
            mine[0], mine[1] = mine[0] + 1, mine[1] + cost
            return True

        return self._change(change)

    def release(self, cost: int) -> None:
        def change(entries: dict[str, list[int]]) -> bool:
            mine = entries.setdefault(str(os.getpid()), [0, 0])
            mine[0], mine[1] = max(0, mine[0] - 1), max(0, mine[1] - cost)
            return True

        self._change(change)


def ledger_path(checkpoint: str, device: object = None, server: int | None = None) -> Path:
    """Where the denoise processes of ``checkpoint`` on ``device`` in one Triton server (by default
    the parent of this process: Triton starts each model's process) keep their :class:`SharedLedger`:
    ``/dev/shm`` where it is writable (the Helm chart's Triton pods have a read-only root file system
    and a memory-backed ``/dev/shm``), else the temporary folder."""
    server = os.getppid() if server is None else server
    key = hashlib.sha1(f"{server}|{checkpoint}|{device}".encode()).hexdigest()[:16]
    shm = Path("/dev/shm")
    folder = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    return folder / f"triton-inpaint-budget-{key}.json"


def open_ledger(path: Path, log: Callable[[str], None]) -> SharedLedger | None:
    """The ledger at ``path``, or None (and a warning: each process then keeps the budget alone) where
    no file can be written there."""
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        log(f"the memory budget is not shared with the streaming twin: {path}: {exc.strerror}")
        return None
    return SharedLedger(path)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's, but there
        return True
    return True


class Admission:
    """Who may start: at most ``max_active`` requests in flight, whose memory (bytes each declares when
    it enters) stays within ``budget``. A request that does not fit now waits for others to finish;
    one alone is always let in (a request larger than the budget is refused before it asks). Callers
    enter one at a time (the model's ``execute``), so they are let in in arrival order. With a
    ``ledger``, the budget is shared with the other processes that keep it (:class:`SharedLedger`)."""

    def __init__(
        self, max_active: int, budget: int | None = None, ledger: SharedLedger | None = None
    ) -> None:
        self.max_active = max_active
        self.budget = budget  # None: memory is not counted
        self.ledger = ledger
        self.active = 0
        self.reserved = 0
        self._condition = threading.Condition()

    def _fits(self, cost: int) -> bool:
        if self.active >= self.max_active:
            return False
        if self.ledger is not None:  # everyone's reservations, this process's included; reserves on success
            return self.ledger.reserve(cost, self.budget)
        return self.active == 0 or self.budget is None or self.reserved + cost <= self.budget

    def enter(self, cost: int = 0) -> None:
        with self._condition:
            # Another process's request leaving is not notified here: look again every 20 ms.
            while not self._fits(cost):
                self._condition.wait(timeout=None if self.ledger is None else 0.02)
            self.active += 1
            self.reserved += cost

    def leave(self, cost: int = 0) -> None:
        with self._condition:
            self.active -= 1
            self.reserved -= cost
            if self.ledger is not None:
                self.ledger.release(cost)
            self._condition.notify_all()


class InflightBatcher:
    """Advances submitted jobs together on one worker thread; decodes finished ones on another.

    ``max_active`` jobs are in flight at most, and with a memory budget their declared memory fits it
    (:class:`Admission`): a caller takes a slot (``acquire``) before it starts a job, so requests
    beyond that wait in front of the model (in Triton's queue, where its queue-time metrics see them)
    rather than inside it. ``max_rows`` is the denoiser's largest batch.
    Each submitted job's ``callback`` is called exactly once, with its result or its error.
    """

    def __init__(
        self,
        max_rows: int,
        max_active: int,
        log: Callable[[str], None] | None = None,
        ledger: SharedLedger | None = None,
    ) -> None:
        if max_active < 1 or max_rows < 1:
            raise ValueError(f"max_active and max_rows must be at least 1, got {max_active}, {max_rows}")
        self.max_rows = max_rows
        self._log = log or (lambda message: None)
        self.admission = Admission(max_active, ledger=ledger)
        self._condition = threading.Condition()
        self._incoming: list[tuple[DenoiseJob, Callback]] = []
        self._costs: dict[int, int] = {}  # id(job) -> the memory its slot holds
        self._progress: dict[int, Progress] = {}  # id(job) -> told after each of its steps but the last
        self._closed = False
        # Decoding runs beside the next ticks rather than stalling every other request's loop.
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="denoise-finish")
        self._worker = threading.Thread(target=self._loop, name="denoise-ticks", daemon=True)
        self._worker.start()

    def acquire(self, cost: int = 0) -> None:
        """Wait for a free slot and ``cost`` bytes of the budget; each acquire is matched by one
        ``submit`` (with the same cost) or one ``release``."""
        self.admission.enter(cost)

    def release(self, cost: int = 0) -> None:
        """Give back a slot taken for a job that was never submitted (e.g. it failed to start)."""
        self.admission.leave(cost)

    def submit(
        self, job: DenoiseJob, callback: Callback, cost: int = 0, progress: Progress | None = None
    ) -> None:
        """Add a started job (its slot already acquired with ``cost``); it joins at the next tick.
        ``progress`` is told after each step but the last (which ``callback``'s result follows)."""
        with self._condition:
            if self._closed:
                self.admission.leave(cost)
                callback(None, RuntimeError("the model is shutting down"))
                return
            self._costs[id(job)] = cost
            if progress is not None:
                self._progress[id(job)] = progress
            self._incoming.append((job, callback))
            self._condition.notify()

    def close(self) -> None:
        """Stop ticking; jobs still in flight are answered with an error."""
        with self._condition:
            self._closed = True
            self._condition.notify()
        self._worker.join(timeout=30)
        self._finisher.shutdown(wait=True)

    def _answer(
        self, job: DenoiseJob, callback: Callback, result: Result | None, error: BaseException | None
    ) -> None:
        try:
            callback(result, error)
        except Exception:  # noqa: BLE001 - a failed answer must not stop the loop
            self._log(f"answering a request failed: {traceback.format_exc()}")
        finally:
            with self._condition:  # an RLock: the loop may hold it already
                cost = self._costs.pop(id(job), 0)
                self._progress.pop(id(job), None)
            self.admission.leave(cost)

    def _finish(self, job: DenoiseJob, callback: Callback) -> None:
        try:
            result = job.finish()
        except Exception as exc:  # noqa: BLE001
            self._answer(job, callback, None, exc)
            return
        self._answer(job, callback, result, None)

    def _loop(self) -> None:
        active: list[tuple[DenoiseJob, Callback]] = []
        while True:
            with self._condition:
                while not self._incoming and not active and not self._closed:
                    self._condition.wait()
                if self._closed:
                    for job, callback in active + self._incoming:
                        self._answer(job, callback, None, RuntimeError("the model is shutting down"))
                    self._incoming.clear()
                    return
                active.extend(self._incoming)
                self._incoming.clear()
            callbacks = {id(job): callback for job, callback in active}
            failures = advance_together([job for job, _ in active], self.max_rows)
            failed = {id(job) for job, _ in failures}
            for job, error in failures:
                self._answer(job, callbacks[id(job)], None, error)
            remaining = []
            for job, callback in active:
                if id(job) in failed:
                    continue
                if job.done:
                    self._finisher.submit(self._finish, job, callback)
                else:
                    self._tell(job)
                    remaining.append((job, callback))
            active = remaining

    def _tell(self, job: DenoiseJob) -> None:
        progress = self._progress.get(id(job))
        if progress is None:
            return
        try:
            progress(job)
        except Exception:  # noqa: BLE001 - a failed progress report must not fail the request
            self._log(f"reporting progress failed: {traceback.format_exc()}")
