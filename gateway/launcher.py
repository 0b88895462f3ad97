"""Start and stop a ``triton-inpaint gateway`` process (the demo and the tests use it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from triton_inpaint.server.process import free_port


class GatewayServer:
    """One gateway process on ``port`` (a free one by default), started with ``start()``, stopped by PID
    with ``stop()`` (SIGTERM, then SIGKILL after ``timeout``)."""

    def __init__(self, triton_url: str, data: Path, *extra: str, port: int | None = None) -> None:
        self.data = data
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable, "-m", "triton_inpaint.cli", "gateway", "--triton", triton_url,
            "--port", str(self.port), "--data", str(data), *extra,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None
        self.lines: list[str] = []

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self, timeout: float = 60.0) -> GatewayServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line.rstrip())
                if line.startswith("gateway ready on"):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("the gateway did not start:\n" + "\n".join(self.lines[-20:]))
        return self

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
