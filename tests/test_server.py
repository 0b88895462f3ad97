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
        from triton_inpaint.server.process import TritonServer, free_port
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


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            lines = handle.read().splitlines()[1:]
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                found.add(address)
    return found


@pytest.fixture()
def builtin_server():
    from triton_inpaint.server.process import TritonServer, free_port

    server = TritonServer([BUILTIN_REPOSITORY], free_port(), free_port(), free_port()).start()
    try:
        yield server
    finally:
        server.stop()


def test_every_port_listens_on_loopback_only_and_admin_apis_are_closed(builtin_server):
    import urllib.error
    import urllib.request

    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 or IPv4-mapped IPv6
    for port in (builtin_server.http_port, builtin_server.grpc_port, builtin_server.metrics_port):
        assert _listening(port) and _listening(port) <= loopback, f"port {port} listens on {_listening(port)}"
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{builtin_server.http_url}/v2/systemsharedmemory/status")
    assert info.value.code == 403 and b"restricted" in info.value.read()


def test_a_killed_server_takes_its_stubs_and_shared_memory_with_it(builtin_server):
    from pathlib import Path

    from triton_inpaint.server.supervisor import stubs_of

    stubs = stubs_of(builtin_server.pid)
    regions = [Path("/dev/shm") / stub.shm_region for stub in stubs.values()]
    assert len(stubs) == 2 and all(region.exists() for region in regions)  # pre- and postprocess
    os.kill(builtin_server.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        any(_alive(pid) for pid in stubs) or any(r.exists() for r in regions)
    ):
        time.sleep(0.1)
    assert not [pid for pid in stubs if _alive(pid)], "stubs outlived their server"
    assert not [region for region in regions if region.exists()], "shared memory outlived its server"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_serve_starts_a_dead_server_again(tmp_path):
    """``triton-inpaint serve`` brings a tritonserver that was killed back on the same ports."""
    import urllib.request

    from triton_inpaint.server.process import free_port

    ports = [free_port(), free_port(), free_port()]
    flags = ("--http-port", "--grpc-port", "--metrics-port")
    command = [sys.executable, "-m", "triton_inpaint.cli", "serve", "--repository", str(BUILTIN_REPOSITORY)]
    command += [str(part) for pair in zip(flags, ports, strict=True) for part in pair]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first = process.stdout.readline()
        assert "server ready (pid" in first
        os.kill(int(first.split("(pid ")[1].split(")")[0]), signal.SIGKILL)
        second = process.stdout.readline()  # blocks until the new server is ready
        assert "server ready (pid" in second and second != first
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=5) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def test_object_store_repositories_pass_through_to_triton():
    """``serve --repository s3://...``: Triton reads the bucket itself; the built-in models are added."""
    from pathlib import Path

    from triton_inpaint.server.process import (
        TritonServer,
        builtin_repository,
        repository_location,
        with_builtin,
    )

    assert repository_location("s3://bucket/models") == "s3://bucket/models"
    assert repository_location("build/repo") == Path("build/repo")
    repositories = with_builtin(["gs://bucket/models"])
    assert repositories == [builtin_repository(), "gs://bucket/models"]
    command = TritonServer(repositories).command()
    assert "--model-repository=gs://bucket/models" in command
    assert f"--model-repository={builtin_repository().resolve()}" in command
