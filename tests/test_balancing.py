"""Requests spread over every Triton server behind one name, as the chart's headless Service gives the
gateway: three real tritonservers on three loopback addresses and the same gRPC port, a real DNS server
answering the name with the addresses of the servers that are up (as cluster DNS answers a headless
Service with its ready pods), and a real gateway given ``dns://DNS/NAME:PORT``. Each server's own
statistics show its share; a server added to the name starts taking requests once connections age out;
a server killed under load costs no failed request."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
import uuid
from collections import Counter

import pytest

from tests.conftest import BUILTIN_REPOSITORY, MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes
from tests.service_dns import ServiceDns

pytestmark = pytest.mark.server
ADDRESSES = ("127.0.0.2", "127.0.0.3", "127.0.0.4")  # all of 127/8 is loopback on Linux
NAME = "triton.inpaint.test"
CONNECTION_AGE_S = 2.0  # the chart uses 30 s; short here so that the test sees a re-resolution
RESOLVE_INTERVAL_S = 5.0  # gRPC resolves a name again at most this often (our channel options)
ROLES = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
TASK = {
    "taskType": "imageInference",
    "positivePrompt": "a red apple",
    "model": MODEL,
    "steps": 2,
    "seedImage": base64.b64encode(png_bytes(make_image(64, 64, seed=8))).decode(),
    "maskImage": base64.b64encode(png_bytes(irregular_mask(64, 64))).decode(),
}


@pytest.fixture(scope="module")
def servers(exported_repository):
    from triton_inpaint.server.process import TritonServer, free_port

    repository, _ = exported_repository
    grpc_port = free_port()
    models = [f"inpaint_{MODEL}", *(f"{MODEL}_{role}" for role in ROLES)]
    started = [
        TritonServer(
            [BUILTIN_REPOSITORY, repository],
            free_port(),
            grpc_port,
            free_port(),
            grpc_address=address,
            models=models,
            grpc_max_connection_age=CONNECTION_AGE_S,
        )
        for address in ADDRESSES
    ]
    try:
        # One after another from this thread: a server's parent-death signal follows the thread that
        # started it (prctl), so servers started from short-lived threads would be stopped with them.
        for server in started:
            server.start(timeout=300)
        yield started
    finally:
        for server in started:
            server.stop()


def _served(server) -> int:
    """Inpainting requests this server answered, from its own statistics."""
    url = f"http://{server.http_url}/v2/models/inpaint_{MODEL}/stats"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["model_stats"][0]["inference_count"]


def _send(gateway: GatewayProcess, count: int, concurrency: int = 4) -> list[int]:
    statuses: list[int] = []
    lock = threading.Lock()
    remaining = iter(range(count))

    def worker() -> None:
        while True:
            with lock:
                seed = next(remaining, None)
            if seed is None:
                return
            status, _ = gateway.post("/v1", [{**TASK, "seed": seed, "taskUUID": str(uuid.uuid4())}])
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def _shares(servers, before: list[int]) -> list[int]:
    return [_served(server) - start for server, start in zip(servers, before, strict=True)]


def _spread(gateway: GatewayProcess, servers, count: int) -> list[int]:
    """Send ``count`` requests through the gateway (all must succeed); each server's share of them."""
    before = [_served(server) for server in servers]
    statuses = _send(gateway, count)
    assert statuses == [200] * count, Counter(statuses)
    return _shares(servers, before)


def test_requests_spread_over_every_server_behind_the_name(servers, tmp_path):
    first, second, third = servers
    with ServiceDns(NAME, list(ADDRESSES[:2])) as dns:
        target = dns.target(first.grpc_port)
        with GatewayProcess(target, tmp_path / "gateway", "--rate", "100000") as gateway:
            # Two servers behind the name: each answers about half.
            count = 40
            shares = _spread(gateway, servers, count)
            print(f"2 servers, {count} requests through the gateway: shares {shares[:2]}")
            assert sum(shares) == count and shares[2] == 0
            assert min(shares[:2]) >= 0.35 * count, f"not spread: {shares}"

            # A third joins the name (a pod scaled up): found once connections age out and the name
            # is resolved again.
            dns.addresses = list(ADDRESSES)
            time.sleep(max(CONNECTION_AGE_S, RESOLVE_INTERVAL_S) + 1.0)
            count = 60
            shares = _spread(gateway, servers, count)
            print(f"3 servers, {count} requests: shares {shares}")
            assert min(shares) >= 0.2 * count, f"not spread over all three: {shares}"

            # One dies under load (SIGKILL, as a node lost); the name still lists it for a while, as
            # cluster DNS would until the endpoint is removed.
            results: list[int] = []
            stop = threading.Event()

            def load() -> None:
                seed = 1000
                while not stop.is_set():
                    seed += 1
                    status, _ = gateway.post("/v1", [{**TASK, "seed": seed, "taskUUID": str(uuid.uuid4())}])
                    results.append(status)

            threads = [threading.Thread(target=load) for _ in range(4)]
            for thread in threads:
                thread.start()
            try:
                while len(results) < 12:
                    time.sleep(0.05)
                before = [_served(server) for server in (first, third)]
                second.supervisor.stop()  # it would otherwise clean up after the kill; leave the wreck
                second.process.kill()
                killed_at = len(results)
                time.sleep(3.0)
                dns.addresses = [ADDRESSES[0], ADDRESSES[2]]
                while len(results) < killed_at + 40:
                    time.sleep(0.05)
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=120)
            after = _shares([first, third], before)
            failed = Counter(status for status in results if status != 200)
            print(
                f"one of 3 killed under load: {len(results)} requests, not 200: {dict(failed)}; after "
                f"the kill the other two answered {after}"
            )
            # Requests in flight on the dead server are sent again to another (gRPC's retry policy):
            # none fails.
            assert not failed, failed
            assert min(after) >= 10, after
