"""The gateway as the tests run it: a real ``triton-inpaint gateway`` process on a free port."""

from __future__ import annotations

import json
from typing import Any

import urllib3

from triton_inpaint.gateway.launcher import GatewayServer

_POOL = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=30.0, read=300.0))


class GatewayProcess(GatewayServer):
    """The launcher plus small HTTP helpers for the tests."""

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        # urllib3, as the gateway client: it reads an answer the gateway sends before the body ends.
        response = _POOL.request(method, self.url + path, body=data, headers=headers, redirect=False)
        return response.status, dict(response.headers), response.data

    def post(self, path: str, body: Any, key: str | None = None) -> tuple[int, dict]:
        status, _, content = self.request("POST", path, body, key)
        return status, json.loads(content)

    def get_json(self, path: str, key: str | None = None) -> tuple[int, dict]:
        status, _, content = self.request("GET", path, key=key)
        return status, json.loads(content)
