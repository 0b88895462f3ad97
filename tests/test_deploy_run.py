"""Run what the chart runs: the image's entrypoint plus the rendered container arguments (and, for the
gateway, its rendered environment), with the container's paths mapped onto this machine. The rendered
probe paths must answer 200 and one inpainting request must pass through both processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from dockerfile_parse import DockerfileParser

from tests.service_dns import ServiceDns
from tests.test_deploy_chart import render
from triton_inpaint.server.process import free_port, prepare_backend_dir, tritonserver_binary

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.server


def _entrypoint(image: str) -> list[str]:
    parser = DockerfileParser(str(ROOT / "deploy" / "docker" / f"{image}.Dockerfile"))
    (value,) = [i["value"] for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
    command = json.loads(value)
    assert command[0] == "triton-inpaint"
    return [sys.executable, "-m", "triton_inpaint.cli", *command[1:]]


def _mapped(arguments: list[str], paths: dict[str, str]) -> list[str]:
    """Container paths replaced by this machine's, in ``--flag=VALUE`` and bare forms alike."""
    result = []
    for argument in arguments:
        flag, equals, value = argument.rpartition("=")
        if equals and value in paths:
            result.append(f"{flag}={paths[value]}")
        else:
            result.append(paths.get(argument, argument))
    return result


def _container(docs: list[dict], component: str) -> dict:
    (deployment,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(f"-{component}")
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _probe_urls(container: dict) -> list[str]:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    urls = []
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in container:
            get = container[probe]["httpGet"]
            urls.append(f"http://127.0.0.1:{ports[get['port']]}{get['path']}")
    return urls


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _wait_for(urls: list[str], process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"exited with {process.returncode}"
        if all(_status(url) == 200 for url in urls):
            return
        time.sleep(0.5)
    raise AssertionError(f"not every probe answered 200 in {timeout:.0f} s: {urls}")


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def chart_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny model exported as the chart's export Job would put it into the volume at /models."""
    from triton_inpaint.export.repository import export_checkpoint

    repository = tmp_path_factory.mktemp("models")
    export_checkpoint(tiny_checkpoint, "tiny", repository, log=lambda _: None)
    return repository


def test_the_rendered_triton_and_gateway_serve_a_request(chart_repository, tmp_path):
    from triton_inpaint.api.imaging import decode_image, encode_image, encode_mask
    from triton_inpaint.client import GatewayClient

    http, grpc, metrics, gateway_port = free_port(), free_port(), free_port(), free_port()
    docs = render({
        "triton": {"gpu": {"enabled": False}, "ports": {"http": http, "grpc": grpc, "metrics": metrics}},
        "gateway": {"port": gateway_port, "apiKeys": {"existingSecret": "inpaint-keys"}},
    })  # fmt: skip
    triton = _container(docs, "triton")
    gateway = _container(docs, "gateway")
    # The gateway's target is the headless Service's name: a real DNS server answers it with this
    # machine's address, as cluster DNS answers it with the ready Triton pods.
    (target,) = [arg.split("=", 1)[1] for arg in gateway["args"] if arg.startswith("--triton=")]
    name = target.removeprefix("dns:///").rsplit(":", 1)[0]
    dns = ServiceDns(name, ["127.0.0.1"])
    # The admin secret the chart mounts from its Secret.
    (secret_flag,) = [arg for arg in triton["args"] if arg.startswith("--admin-secret-file=")]
    admin_secret = "chart-test-admin-secret"
    (tmp_path / "admin-secret").write_text(admin_secret + "\n")
    paths = {  # the container's paths and names on this machine
        "/opt/tritonserver/bin/tritonserver": str(tritonserver_binary()),
        "/opt/tritonserver/backends": str(prepare_backend_dir()),
        "/models": str(chart_repository),
        "/data": str(tmp_path / "data"),
        secret_flag.split("=", 1)[1]: str(tmp_path / "admin-secret"),
        target: dns.target(grpc),
    }
    triton_command = _mapped(_entrypoint("triton") + triton["args"], paths)
    (secret,) = [e for e in gateway["env"] if e["name"] == "TRITON_INPAINT_API_KEYS"]
    assert secret["valueFrom"]["secretKeyRef"]["name"] == "inpaint-keys"
    gateway_env = {**os.environ, "TRITON_INPAINT_API_KEYS": "chart-test-key"}
    gateway_command = _mapped(_entrypoint("gateway") + gateway["args"], paths)
    print("triton:", " ".join(triton_command), "\ngateway:", " ".join(gateway_command))

    processes = []
    dns.__enter__()
    try:
        processes.append(subprocess.Popen(triton_command, start_new_session=True, stdout=subprocess.DEVNULL))
        _wait_for(_probe_urls(triton), processes[-1], timeout=300)
        processes.append(
            subprocess.Popen(
                gateway_command, start_new_session=True, env=gateway_env, stdout=subprocess.DEVNULL
            )
        )
        _wait_for(_probe_urls(gateway), processes[-1], timeout=120)
        assert _status(f"http://127.0.0.1:{metrics}/metrics") == 200  # what the ServiceMonitor scrapes

        image = np.full((64, 96, 3), 90, np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        mask[16:48, 24:72] = 255
        url = f"http://127.0.0.1:{gateway_port}"
        with GatewayClient(url, api_key="chart-test-key") as client:
            result = client.inpaint("tiny", encode_image(image), encode_mask(mask), "a cat", steps=2, seed=3)
        (png,) = result.images
        out = decode_image(png)
        assert out.shape == image.shape
        assert np.array_equal(out[mask == 0], image[mask == 0])  # outside the mask: untouched
        # The rendered key setting is in force.
        with GatewayClient(url, api_key="wrong") as client, pytest.raises(Exception, match="invalid API key"):
            client.inpaint("tiny", encode_image(image), encode_mask(mask), "a cat", steps=2)
        # Triton's model control answers only the mounted secret.
        index = f"http://127.0.0.1:{http}/v2/repository/index"
        for headers, expected in (({}, 403), ({"triton-inpaint-admin": "guess"}, 403),
                                  ({"triton-inpaint-admin": admin_secret}, 200)):  # fmt: skip
            request = urllib.request.Request(index, data=b"{}", headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            assert status == expected, (headers, status)
    finally:
        for process in reversed(processes):
            _stop(process)
        dns.__exit__()
