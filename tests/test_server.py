"""The launcher's own guarantees, with a real tritonserver."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import BUILTIN_REPOSITORY

pytestmark = pytest.mark.server


def test_server_dies_with_a_killed_parent():
    """A parent killed by a timeout (SIGKILL) must not leave tritonserver running."""
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from triton_inpaint.server import TritonServer, free_port
        ports = free_port(), free_port(), free_port()
        server = TritonServer([Path({str(BUILTIN_REPOSITORY)!r})], *ports).start()
        print(server.pid, flush=True)
        time.sleep(300)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        os.kill(server_pid, 0)  # running
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(server_pid, signal.SIGKILL)
            pytest.fail("tritonserver outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
