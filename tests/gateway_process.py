"""The gateway as the tests run it: a real ``triton-inpaint gateway`` process on a free port."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from triton_inpaint.gateway.launcher import GatewayServer


class GatewayProcess(GatewayServer):
    """The launcher plus small HTTP helpers for the tests."""

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def post(self, path: str, body: Any, key: str | None = None) -> tuple[int, dict]:
        status, _, content = self.request("POST", path, body, key)
        return status, json.loads(content)

    def get_json(self, path: str, key: str | None = None) -> tuple[int, dict]:
        status, _, content = self.request("GET", path, key=key)
        return status, json.loads(content)
