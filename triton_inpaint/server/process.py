"""Start and stop the real ``tritonserver`` binary bundled in the ``nvidia-pytriton`` wheel.

The wheel carries a CPU-capable tritonserver 2.51 and its Python backend; we use it only as a carrier
of the binary. Three things make it work from a virtual environment (see shared/ENVIRONMENT.md): the
Python backend stub for this interpreter copied next to ``libtriton_python.so`` in a backend folder we
own, the venv's ``bin`` first on ``PATH`` (the stub takes its site-packages from the first ``python3``),
and the interpreter's ``LIBDIR`` on ``LD_LIBRARY_PATH`` (the stub links ``libpython3.11.so``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from triton_inpaint.api.commands import CommandError, ExitCode
from triton_inpaint.server.supervisor import ADMIN_HEADER, Supervisor

BUILTIN_PACKAGE = "triton_inpaint.model_repository"
BUILTIN_MODELS = ("inpaint_preprocess", "inpaint_postprocess")


def builtin_repository() -> Path:
    """The built-in models' repository: package data of an installed wheel, or ``model_repository/``
    of the checkout in an editable install. The folder has no ``__init__.py`` (Triton would take the
    ``__pycache__`` pip compiles beside it for a model), so it is found by path, not imported."""
    package = Path(__file__).resolve().parents[1]  # triton_inpaint/
    for path in (package / "model_repository", package.parent / "model_repository"):
        if all((path / name / "config.pbtxt").is_file() for name in BUILTIN_MODELS):
            return path
    raise FileNotFoundError(f"{BUILTIN_PACKAGE}: the built-in Triton models are missing from this install")


# Repositories Triton reads itself, from object storage (credentials from its environment).
REMOTE_REPOSITORY = re.compile(r"^(s3|gs|as)://.+")


def repository_location(value: str | Path) -> str | Path:
    """A ``--repository`` value: an object-store URL as given, else a local folder."""
    text = str(value)
    return text if REMOTE_REPOSITORY.match(text) else Path(text)


def with_builtin(repositories: Sequence[str | Path]) -> list[str | Path]:
    """``repositories`` plus the built-in one, unless one of them already holds the built-in models."""
    given = [repository_location(repo) for repo in repositories]
    local = [repo for repo in given if isinstance(repo, Path)]
    if any((repo / BUILTIN_MODELS[0] / "config.pbtxt").is_file() for repo in local):
        return given
    return [builtin_repository(), *given]


class ServerError(CommandError):
    """The server could not start or became unusable; the message says why in Triton's words. The
    code tells a command's caller whether the input, the machine or the start itself failed."""

    def __init__(self, message: str, code: ExitCode = ExitCode.UNAVAILABLE) -> None:
        super().__init__(message, code)


def _pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ServerError(
            "nvidia-pytriton is not installed; it carries the tritonserver binary", ExitCode.NOT_INSTALLED
        ) from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def tritonserver_binary() -> Path:
    return _pytriton_root() / "bin" / "tritonserver"


def prepare_backend_dir(target: Path | None = None) -> Path:
    """A backend folder holding the Python backend and the stub for this interpreter (idempotent)."""
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(
            f"the tritonserver bundle has no Python backend stub for Python {version}", ExitCode.NOT_INSTALLED
        )
    target = target or Path(sys.prefix) / "share" / "triton-inpaint" / "backends"
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [*sorted((root / "backends" / "python").iterdir()), stub]:
        destination = python_dir / source.name
        if source.is_file() and (
            not destination.exists() or destination.stat().st_size != source.stat().st_size
        ):
            tmp = destination.with_suffix(".tmp")
            shutil.copy2(source, tmp)
            tmp.replace(destination)
    return target


def server_environment(bundled: bool = True) -> dict[str, str]:
    """The environment of tritonserver and its stubs. ``bundled``: the binary from nvidia-pytriton, whose
    vendored libraries must be named; another install (NVIDIA's container) brings its own."""
    env = dict(os.environ)
    # glibc gives each thread that allocates at once an arena of its own (up to 8 per core) and keeps
    # what each arena once held: repeated large images grew tritonserver and the model processes request
    # after request. Two arenas make their memory plateau (tests/test_memory_plateau.py); an operator's
    # own setting wins.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # The backend and stub find the wheel's vendored libraries through an RPATH relative to where the
    # wheel put them; our copies live elsewhere, so name that folder explicitly.
    vendored = str(_pytriton_root().parent.parent / "nvidia_pytriton.libs") if bundled else ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in [libdir, vendored, env.get("LD_LIBRARY_PATH", "")] if p
    )
    return env


def check_stub_libraries(stub: Path, env: dict[str, str]) -> None:
    """Refuse to start when the Python backend stub cannot load a library it links: Triton only logs
    that the stub died and then waits minutes for it. On a distribution's minimal image the one missing
    is usually libpython (Debian ships ``libpython3.X.so`` apart from its ``python3``)."""
    ldd = shutil.which("ldd")
    if ldd is None:  # not a glibc system: Triton's own log will have to say it
        return
    done = subprocess.run([ldd, str(stub)], env=env, capture_output=True, text=True, timeout=60)
    missing = [line.split("=>")[0].strip() for line in done.stdout.splitlines() if "not found" in line]
    if not missing:
        return
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    hint = (
        f"; on Debian or Ubuntu: apt-get install -y libpython{version}"
        if any(name.startswith("libpython") for name in missing)
        else ""
    )
    raise ServerError(
        f"the Python backend stub cannot start: {', '.join(missing)} not found{hint}", ExitCode.NOT_INSTALLED
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``port``. SO_REUSEADDR as servers set it: connections of a
    stopped server still in TIME_WAIT do not keep a restarted one from binding."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM when the launching process dies.

    Without it a server started by a test or the demo outlives a parent killed by a timeout; Linux's
    prctl(PR_SET_PDEATHSIG) is the only mechanism that covers SIGKILL of the parent.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: best effort only
        pass


_LOAD_FAILURE = re.compile(r"failed to load '([^']+)' version \d+: (.*)")
_TABLE_FAILURE = re.compile(r"^\|\s*(\S+)\s*\|\s*\d+\s*\|\s*UNAVAILABLE: (.*?)\s*\|?$")


LOOPBACK = "127.0.0.1"
# Triton's administrative APIs, open only to callers presenting the admin header: model control
# (load/unload, and the repository index that goes with it), registering shared memory (which would let
# a caller make Triton map regions of its choosing), trace and log settings. Inference, health, metadata,
# model configs and statistics stay open: that is all a gateway or perf_analyzer uses (clients list the
# served models from statistics, see InpaintClient.served_models).
RESTRICTED_APIS = "model-repository,shared-memory,trace,logging"
# Triton's gRPC frontend expects restricted-protocol metadata under this prefix.
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
ADMIN_SECRET_ENV = "TRITON_INPAINT_ADMIN_SECRET"


def new_admin_secret() -> str:
    return secrets.token_hex(16)


def _connect_host(address: str) -> str:
    """Where a local client reaches a server bound to ``address``."""
    if address in ("0.0.0.0", "::", ""):
        return LOOPBACK
    return f"[{address}]" if ":" in address else address


@dataclass
class TritonServer:
    """One tritonserver process. Use as a context manager, or ``start()`` / ``stop()``.

    Every endpoint binds loopback unless an address is given: Triton's own HTTP frontend aborts the
    whole server on a JSON tensor whose declared shape is huge (a 91-byte request), so only the gRPC
    port (which checks shapes first) should ever face other machines, and then only the gateway's.
    With ``supervise`` (the default), model processes that die are reloaded and a server that dies
    takes its stubs and shared memory with it (see :mod:`triton_inpaint.server.supervisor`).
    """

    repositories: Sequence[str | Path]
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log: Callable[[str], None] | None = None
    extra_args: Sequence[str] = ()
    grpc_address: str = LOOPBACK
    http_address: str = LOOPBACK
    metrics_address: str = LOOPBACK
    supervise: bool = True
    models: Sequence[str] | None = None  # the models to load (with what they depend on); None: all
    # Another tritonserver of the same release (e.g. NVIDIA's container's, with GPU backends) and its
    # backend folder; None: the binary bundled in nvidia-pytriton, with our Python backend folder.
    binary: Path | None = None
    backend_directory: Path | None = None
    # The value of the admin header: who knows it may load and unload models. A fresh random one unless
    # given (the chart mounts one from a Secret, so an operator can use it too).
    admin_secret: str = field(default_factory=new_admin_secret, repr=False)
    # Seconds after which the server closes each gRPC connection (in-flight calls finish first), so that
    # clients resolve its name again and find pods added since; None: connections last.
    grpc_max_connection_age: float | None = None
    process: subprocess.Popen | None = field(default=None, init=False)
    supervisor: Supervisor | None = field(default=None, init=False)
    _lines: list[str] = field(default_factory=list, init=False)
    _reader: threading.Thread | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        return f"{_connect_host(self.http_address)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_connect_host(self.grpc_address)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"{_connect_host(self.metrics_address)}:{self.metrics_port}"

    @property
    def bundled(self) -> bool:
        """Whether the binary is nvidia-pytriton's (the default), which needs the wheel's libraries."""
        return self.binary is None or Path(self.binary).resolve() == tritonserver_binary().resolve()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def command(self) -> list[str]:
        args = [str(self.binary or tritonserver_binary())]
        args += [
            f"--model-repository={repo if isinstance(repo, str) else Path(repo).resolve()}"
            for repo in map(repository_location, self.repositories)
        ]
        args += [
            f"--backend-directory={self.backend_directory or prepare_backend_dir()}",
            f"--http-address={self.http_address}",
            f"--http-port={self.http_port}",
            f"--grpc-address={self.grpc_address}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.metrics_address}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            # Triton's gRPC frontend keeps up to 8 request/response objects for reuse, each holding on to
            # the capacity of the largest message it carried: repeated large images grew the server by
            # tens of MB a request for a dozen requests. With none kept, its memory plateaus after the
            # first few (tests/test_memory_plateau.py); the allocation costs microseconds a request.
            "--grpc-infer-allocation-pool-size=0",
            "--strict-readiness=true",
            "--exit-on-error=true",
            # Explicit model control with every model loaded at start: the same models as mode
            # "none", plus the unload/load the supervisor needs to bring a lost model back (only
            # through the admin header, see RESTRICTED_APIS).
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in (self.models or ["*"])),
            f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_secret}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={self.admin_secret}",
            *(
                [f"--grpc-max-connection-age={round(self.grpc_max_connection_age * 1000)}"]
                if self.grpc_max_connection_age
                else []
            ),
            *self.extra_args,
        ]
        return args

    def _check_inputs(self) -> None:
        if self.bundled and self.backend_directory is None:
            stub = prepare_backend_dir() / "python" / "triton_python_backend_stub"
            check_stub_libraries(stub, server_environment(bundled=True))
        for repo in map(repository_location, self.repositories):
            if isinstance(repo, Path) and not repo.is_dir():
                raise ServerError(f"--repository {repo}: no such folder", ExitCode.BAD_INPUT)
        for flag, path in (("--tritonserver", self.binary), ("--backend-directory", self.backend_directory)):
            if path is not None and not Path(path).exists():
                raise ServerError(f"{flag} {path}: no such file or folder", ExitCode.BAD_INPUT)
        ports = {
            "--http-port": (self.http_port, self.http_address),
            "--grpc-port": (self.grpc_port, self.grpc_address),
            "--metrics-port": (self.metrics_port, self.metrics_address),
        }
        if len({port for port, _ in ports.values()}) != len(ports):
            given = {flag: port for flag, (port, _) in ports.items()}
            raise ServerError(f"ports must differ: {given}", ExitCode.BAD_INPUT)
        for flag, (port, address) in ports.items():
            if not port_is_free(port, address or "0.0.0.0"):
                raise ServerError(
                    f"{flag} {port}: the port is already in use on {address}; choose another",
                    ExitCode.BAD_INPUT,
                )

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.rstrip("\n")
            self._lines.append(line)
            if self.log is not None:
                self.log(line)

    def start(self, timeout: float = 300.0) -> TritonServer:
        """Launch the server and return once every model is ready; raise ``ServerError`` otherwise."""
        self._check_inputs()
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=server_environment(bundled=self.bundled),
            start_new_session=True,  # our signal handler, not the terminal, decides when it stops
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(timeout=5)
                raise ServerError(self.failure_reason())
            if self.is_ready():
                if self.supervise:
                    self.supervisor = Supervisor(
                        self.process.pid, self.http_url, log=self.log or (lambda line: None),
                        admin_secret=self.admin_secret,
                        alive=lambda: self.process is not None and self.process.poll() is None,
                    ).start()  # fmt: skip
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"tritonserver was not ready after {timeout:.0f} s; {self.failure_reason()}")

    def is_ready(self) -> bool:
        try:
            url = f"http://{self.http_url}/v2/health/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def failure_reason(self) -> str:
        """The model-load failures (with Triton's reasons) or the last log lines."""
        failures = []
        for line in self._lines:
            for pattern in (_LOAD_FAILURE, _TABLE_FAILURE):
                match = pattern.search(line)
                if match:
                    failures.append(f"model '{match.group(1)}' failed to load: {match.group(2).strip()}")
        if failures:
            return "; ".join(dict.fromkeys(failures))
        tail = "\n".join(self._lines[-15:])
        code = None if self.process is None else self.process.poll()
        return f"tritonserver exited with code {code}. Last log lines:\n{tail}"

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; also reaps the backend stubs of its process group."""
        if self.process is None:
            return
        if self.supervisor is not None:
            self.supervisor.stop()  # the stubs' exit from here on is no loss to repair
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # stubs a killed server left share its group
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.supervisor is not None:
            self.supervisor.clean_up_after_server()  # shared memory a killed server left behind
        if self._reader is not None:
            self._reader.join(timeout=5)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ready_models(http_url: str) -> list[str]:
    """Names of the models the server has loaded and ready, from its statistics: an open API, unlike the
    repository index (restricted, see RESTRICTED_APIS)."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=5) as response:
        stats = json.loads(response.read())
    return sorted({entry["name"] for entry in stats.get("model_stats", [])})
