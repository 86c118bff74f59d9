"""A tiny REST/JSON client over urllib, so tests speak HTTP exactly as curl does."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any


def b64(content: bytes) -> str:
    """Base64, as proto3 JSON expects bytes fields."""
    return base64.b64encode(content).decode()


class Rest:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        self.base_url = base_url
        self.api_key = api_key

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Sends one request; returns (HTTP status, parsed JSON body)."""
        sent = {"content-type": "application/json", **(headers or {})}
        if self.api_key is not None:
            sent.setdefault("authorization", f"Bearer {self.api_key}")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw or b"{}")
            except json.JSONDecodeError:
                return err.code, {"raw": raw.decode(errors="replace")}

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        return self.call("GET", path)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        return self.call("POST", path, body if body is not None else {}, headers)

    def poll(
        self, path: str, until: Callable[[int, dict[str, Any]], bool], timeout_s: float = 60.0
    ) -> tuple[int, dict[str, Any]]:
        """GETs ``path`` until ``until(status, body)`` holds; returns the last answer either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, body = self.get(path)
            if until(status, body) or time.monotonic() > deadline:
                return status, body
            time.sleep(0.2)
