"""Schema-based fuzzing of the gateway (schemathesis, from its own OpenAPI): no request gets a 5xx."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.gateway_process import GatewayProcess

pytestmark = pytest.mark.server
KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def fuzz_gateway(triton_server, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("TRITON_INPAINT_API_KEYS", KEY)
    gateway = GatewayProcess(
        triton_server.grpc_url,
        tmp_path_factory.mktemp("fuzz") / "store",
        "--rate", "100000", "--concurrency", "64", "--fetch-timeout", "2",
    ).start()  # fmt: skip
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_no_request_gets_a_server_error(fuzz_gateway):
    # schemathesis' own pytest plugin does not run under pytest 9; its Python API does the same work.
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/v1",
        "/v2/tasks/create",
        "/v2/tasks/{task_id}",
        "/images/{name}",
    }
    failures, counts = [], {}

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case):
            response = case.call(headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
            counts[case.path] = counts.get(case.path, 0) + 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
                )

        check()
    print(f"fuzzed {sum(counts.values())} requests: {counts}")
    assert not failures, failures[:5]
