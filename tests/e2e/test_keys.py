"""API keys as an operator and their users meet them, through Envoy: the CLI, REST and gRPC.

An admin key (the dev key `ferry up` prints) makes keys with scopes and rates; a key works for
what its scopes allow, gets 403 for the rest, 429 with Retry-After over its rate, and 401 once
revoked.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from typing import Any

import grpc
import pytest

from ferry_client.client import FerryClient, FerryError
from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY

pytestmark = pytest.mark.e2e

PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAUTHENTICATED = 7, 8, 16


def call(
    base_url: str, key: str, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, str], Any]:
    """One REST request: (HTTP status, response headers, parsed JSON body)."""
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"{}")


def reasons(body: dict[str, Any]) -> list[str]:
    return [d.get("reason", "") for d in body.get("details", [])]


def ferry_cli_text(stack: dict[str, Any], *args: str) -> str:
    """Runs the `ferry` command with the dev (admin) key; returns what it printed, as UTF-8."""
    env = {**os.environ, "FERRY_API_KEY": API_KEY, "FERRY_TARGET": stack["grpc_target"]}
    done = subprocess.run(
        [FERRY, *args], env=env, capture_output=True, encoding="utf-8", timeout=60, check=True
    )
    return done.stdout


def ferry_cli(stack: dict[str, Any], *args: str) -> dict[str, Any] | list[dict[str, Any]]:
    """Runs the `ferry` command with the dev (admin) key; returns its JSON output."""
    decoder, text, found = json.JSONDecoder(), ferry_cli_text(stack, *args).strip(), []
    while text:  # `keys list` prints one JSON object per key
        value, end = decoder.raw_decode(text)
        found.append(value)
        text = text[end:].strip()
    return found[0] if len(found) == 1 and args[1] != "list" else found


def test_an_admin_makes_a_scoped_key_that_works_for_its_scopes_only(
    stack: dict[str, Any], rest: Rest, cat_jpeg: bytes
) -> None:
    status, _, created = call(
        stack["http_url"],
        API_KEY,
        "POST",
        "/v1/keys",
        {"tenant": "acme", "scopes": ["read"], "display_name": "dashboard"},
    )
    assert status == 200, created
    key, api_key = created["key"], created["api_key"]
    assert key["name"].startswith("keys/") and key["scopes"] == ["read"] and key["tenant"] == "acme"
    assert api_key.startswith(key["hint"])

    # REST: reads work, a prediction is 403 naming the scope, and so is the admin API.
    status, _, body = call(stack["http_url"], api_key, "GET", "/v1/models")
    assert status == 200 and body["models"], body
    status, _, body = call(
        stack["http_url"],
        api_key,
        "POST",
        "/v1/models/efficientnet-lite0:predict",
        {"image": {"content": b64(cat_jpeg)}},
    )
    assert (status, body["code"]) == (403, PERMISSION_DENIED), body
    assert "'predict' scope" in body["message"] and "MISSING_SCOPE" in reasons(body)
    status, _, body = call(stack["http_url"], api_key, "GET", "/v1/keys")
    assert (status, body["code"]) == (403, PERMISSION_DENIED), body

    # gRPC through Envoy: the same key, the same answers.
    with FerryClient(stack["grpc_target"], api_key) as ferry:
        assert ferry.list_models()
        with pytest.raises(FerryError) as caught:
            ferry.predict(cat_jpeg)
        assert caught.value.code == grpc.StatusCode.PERMISSION_DENIED

    # Its own tenant: the dev tenant's predictions are not acme's.
    status, _, body = call(stack["http_url"], api_key, "GET", "/v1/predictions?page_size=5")
    assert status == 200 and not body.get("predictions"), body

    # Listed without the key itself; revoked, it is 401 at once.
    status, _, listed = call(stack["http_url"], API_KEY, "GET", "/v1/keys?tenant=acme")
    assert key["name"] in [k["name"] for k in listed["keys"]]
    assert api_key not in json.dumps(listed)
    status, _, revoked = call(stack["http_url"], API_KEY, "POST", f"/v1/{key['name']}:revoke", {})
    assert status == 200 and revoked["key"]["revoke_time"], revoked
    status, _, body = call(stack["http_url"], api_key, "GET", "/v1/models")
    assert (status, body["code"]) == (401, UNAUTHENTICATED), body


def test_the_cli_creates_lists_and_revokes_keys(stack: dict[str, Any], cat_jpeg: bytes) -> None:
    created = ferry_cli(
        stack, "keys", "create", "--tenant", "acme", "--scopes", "predict,jobs,read", "--rate", "50/s"
    )
    assert isinstance(created, dict)
    assert created["key"]["rate_per_s"] == 50 and created["key"]["scopes"] == ["predict", "jobs", "read"]
    with FerryClient(stack["grpc_target"], created["api_key"]) as ferry:
        assert ferry.predict(cat_jpeg).classes[0].label
    listed = ferry_cli(stack, "keys", "list", "--tenant", "acme")
    assert created["key"]["name"] in [k["name"] for k in listed]
    ferry_cli(stack, "keys", "revoke", created["key"]["name"])
    with FerryClient(stack["grpc_target"], created["api_key"]) as ferry, pytest.raises(FerryError) as caught:
        ferry.list_models()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_burst_over_a_keys_rate_is_429_with_retry_after(stack: dict[str, Any]) -> None:
    _, _, created = call(
        stack["http_url"],
        API_KEY,
        "POST",
        "/v1/keys",
        {"tenant": "acme", "scopes": ["read"], "rate_per_s": 0.01, "burst": 2},
    )
    api_key = created["api_key"]
    answers = [call(stack["http_url"], api_key, "GET", "/v1/models") for _ in range(4)]
    assert [a[0] for a in answers[:2]] == [200, 200]
    status, headers, body = answers[3]
    assert (status, body["code"]) == (429, RESOURCE_EXHAUSTED), body
    assert "RATE_LIMITED" in reasons(body)
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    retry = [d for d in body["details"] if d["@type"].endswith("google.rpc.RetryInfo")]
    assert retry and retry[0]["retry_delay"], body

    with FerryClient(stack["grpc_target"], api_key) as ferry, pytest.raises(FerryError) as caught:
        ferry.list_models()
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
