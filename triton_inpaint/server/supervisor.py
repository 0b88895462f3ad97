"""Keeping a tritonserver's models loaded and alive, and cleaning up after a server that died.

Triton 2.51 does not restart a Python-backend stub that died (OOM killer, a crash): every later request
to that model fails with "Stub process ... is not healthy" while the server and its readiness still say
all is well. The supervisor watches the server's stub processes (children of the server, found in
``/proc``); when one disappears that nobody asked to stop, it unloads and reloads that model through
Triton's model control API, which starts fresh stubs (about 1-2 s for the tiny models). While the model
is unloaded, ``/v2/health/ready`` (strict readiness) answers 503, so readiness reports the loss at once.

It also holds the server to the models it was ready with: one that leaves the READY state for any other
reason (unloaded through the model control API, a failed reload) is loaded again, with a growing pause
between failed attempts. Model control is restricted to the admin header (see
``triton_inpaint.server.process.RESTRICTED_APIS``), whose value the supervisor is given.

When the server itself dies (SIGKILL, a crash), its stubs would live on for minutes and their shared
memory regions in ``/dev/shm`` for ever: the supervisor kills the stubs it knew and unlinks their
regions. Written by hand: Triton has no hook for either.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STUB_BINARY = "triton_python_backend_stub"
SHM_DIR = Path("/dev/shm")
ADMIN_HEADER = "triton-inpaint-admin"  # the header RESTRICTED_APIS names (server.py imports this module)
# States in which Triton is already changing the model: leave it to finish.
_TRANSITIONS = {"LOADING", "UNLOADING"}
RETRY_PAUSE = (1.0, 60.0)  # first and longest pause between failed loads of one model, seconds


@dataclass(frozen=True)
class Stub:
    """One Python-backend model instance process."""

    pid: int
    model: str
    instance: str
    shm_region: str


def _parent_pid(pid: str) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces


def stubs_of(server_pid: int) -> dict[int, Stub]:
    """The server's live stub processes by pid, read from their command lines:
    ``stub MODEL_DIR/VERSION/model.py SHM_REGION ... INSTANCE_NAME ...``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _parent_pid(entry) != server_pid:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) < 9 or not argv[0].endswith(STUB_BINARY.encode()):
            continue
        model = Path(argv[1].decode()).parent.parent.name
        found[int(entry)] = Stub(int(entry), model, argv[8].decode(), argv[2].decode())
    return found


def _still_runs(stub: Stub) -> bool:
    try:
        argv = Path(f"/proc/{stub.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return len(argv) > 2 and argv[0].endswith(STUB_BINARY.encode()) and argv[2].decode() == stub.shm_region


def unlink_regions(regions: set[str]) -> None:
    for region in regions:
        if region.startswith("triton_python_backend_shm_region_"):
            (SHM_DIR / region).unlink(missing_ok=True)


class Supervisor:
    """Watches one tritonserver process; see the module's docstring."""

    def __init__(
        self,
        server_pid: int,
        http_url: str,
        log: Callable[[str], None],
        interval: float = 0.5,
        alive: Callable[[], bool] | None = None,
        admin_secret: str = "",
    ) -> None:
        self.server_pid = server_pid
        self.http_url = http_url
        self.admin_secret = admin_secret
        self.log = log
        self.interval = interval
        self.alive = alive or (lambda: _parent_pid(str(server_pid)) is not None)
        self.reloads: list[tuple[str, float]] = []  # (model, seconds it took), for logs and tests
        self._stop = threading.Event()
        self._known: dict[int, Stub] = {}
        self._regions: set[str] = set()
        self._wanted: set[str] = set()  # the models ready at start: the ones kept loaded
        self._retry: dict[str, tuple[float, float]] = {}  # model: (next attempt, pause after that one)
        self._unrestored: dict[int, Stub] = {}  # lost processes of models whose reload failed
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)

    def start(self) -> Supervisor:
        self._known = stubs_of(self.server_pid)
        self._regions = {stub.shm_region for stub in self._known.values()}
        self._wanted = {name for name, (state, _) in self.model_states().items() if state == "READY"}
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before the server is stopped on purpose, so its stubs' exit is no loss)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    def clean_up_after_server(self) -> None:
        """Kill the stubs the server left and unlink every shared-memory region it used."""
        for stub in [*self._known.values(), *stubs_of(self.server_pid).values()]:
            if _still_runs(stub):  # never a process that merely reuses a dead stub's pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(stub.pid, signal.SIGKILL)
        unlink_regions(self._regions)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.alive():
                self.log("triton-inpaint: tritonserver died; removing its stubs and shared memory")
                self.clean_up_after_server()
                return
            try:
                self._round()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any one failed round
                self.log(f"triton-inpaint: the supervisor's round failed ({exc!r}); watching on")

    def _round(self) -> None:
        self._replace_lost_processes()
        if not self._stop.is_set():
            self._restore_unready_models()
        # A model whose reload failed keeps its lost processes known, so the next round tries again.
        self._known = stubs_of(self.server_pid) | self._unrestored
        self._regions |= {stub.shm_region for stub in self._known.values()}

    def _replace_lost_processes(self) -> None:
        current = stubs_of(self.server_pid)
        self._regions |= {stub.shm_region for stub in current.values()}
        lost = [stub for pid, stub in self._known.items() if pid not in current]
        now = time.monotonic()
        for model in dict.fromkeys(stub.model for stub in lost):
            if self._stop.is_set():
                return
            if now < self._retry.get(model, (0.0, 0.0))[0]:
                continue
            gone = [stub for stub in lost if stub.model == model]
            names = ", ".join(f"{stub.instance} (pid {stub.pid})" for stub in gone)
            self.log(f"triton-inpaint: model {model} lost its process {names}; reloading it")
            started = time.monotonic()
            try:
                self._reload(model, {pid for pid, stub in self._known.items() if stub.model == model})
            except Exception as exc:  # noqa: BLE001 - tried again after a pause, as a failed load is
                pause = self._retry.get(model, (0.0, RETRY_PAUSE[0]))[1]
                self._retry[model] = (time.monotonic() + pause, min(2 * pause, RETRY_PAUSE[1]))
                self._unrestored |= {stub.pid: stub for stub in gone}
                self.log(f"triton-inpaint: reloading {model} failed: {exc}; next try in {pause:g} s")
                continue
            seconds = time.monotonic() - started
            self._retry.pop(model, None)
            self._unrestored = {pid: stub for pid, stub in self._unrestored.items() if stub.model != model}
            self.reloads.append((model, seconds))
            unlink_regions({stub.shm_region for stub in gone})
            self.log(f"triton-inpaint: model {model} is back after {seconds:.1f} s")

    def _restore_unready_models(self) -> None:
        """Load again every wanted model that is neither READY nor on its way somewhere."""
        try:
            states = self.model_states()
        except (OSError, RuntimeError, ValueError):
            return  # the server is busy or going away: the next round looks again
        now = time.monotonic()
        for model in sorted(self._wanted):
            state, reason = states.get(model, ("UNKNOWN", "not in the repository index"))
            if state == "READY":
                self._retry.pop(model, None)
                continue
            if state in _TRANSITIONS or now < self._retry.get(model, (0.0, 0.0))[0]:
                continue
            self.log(f"triton-inpaint: model {model} is {state} ({reason or 'no reason given'}); loading it")
            started = time.monotonic()
            try:
                self._control(model, "load")
            except (OSError, RuntimeError) as exc:
                pause = self._retry.get(model, (0.0, RETRY_PAUSE[0]))[1]
                self._retry[model] = (time.monotonic() + pause, min(2 * pause, RETRY_PAUSE[1]))
                self.log(f"triton-inpaint: loading {model} failed: {exc}; next try in {pause:g} s")
                continue
            seconds = time.monotonic() - started
            self._retry.pop(model, None)
            self.reloads.append((model, seconds))
            self.log(f"triton-inpaint: model {model} is back after {seconds:.1f} s")

    def model_states(self) -> dict[str, tuple[str, str]]:
        """Every model of the repository index: name -> (state, reason)."""
        index = json.loads(self._post("/v2/repository/index", timeout=10))
        return {entry["name"]: (entry.get("state", ""), entry.get("reason", "")) for entry in index}

    def _post(self, path: str, timeout: float) -> bytes:
        request = urllib.request.Request(
            f"http://{self.http_url}{path}",
            data=b"{}",
            method="POST",
            headers={ADMIN_HEADER: self.admin_secret},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{path}: HTTP {exc.code} {exc.read()[:300]!r}") from None

    def _control(self, model: str, action: str) -> None:
        self._post(f"/v2/repository/models/{model}/{action}", timeout=600)

    def _reload(self, model: str, old_pids: set[int]) -> None:
        """Unload (the dead instance cannot be reused: a plain load of an unchanged model is a no-op),
        wait until the model's old processes are gone, load again. An unload that does not answer
        within a minute (a request stuck on the dead process) fails this try; the next one comes after
        a pause."""
        self._post(f"/v2/repository/models/{model}/unload", timeout=60)
        deadline = time.monotonic() + 60
        while old_pids & set(stubs_of(self.server_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._control(model, "load")
