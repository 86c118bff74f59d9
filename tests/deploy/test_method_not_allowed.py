"""The real Envoy with the rendered config: a known REST path asked with another method is 405
METHOD_NOT_ALLOWED with an ``allow`` header (not 404), in the gateway's error shape; an unknown path
stays 404 UNKNOWN_PATH. Paths and methods come from deploy/openapi/ferry.json (devstack/edge.py)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from devstack.edge import path_regex, rest_methods
from tests.deploy.test_edge_envoy import edge, stalled_gateway

__all__ = ["edge", "stalled_gateway"]  # the module's fixtures: a real Envoy, no gateway behind it


def _call(url: str, method: str) -> tuple[int, dict[str, Any], str]:
    request = urllib.request.Request(url, method=method, headers={"authorization": "Bearer k"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read() or b"{}"), answer.headers.get("allow", "")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers.get("allow", "")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/models/efficientnet-lite0:predict", "POST"),
        ("DELETE", "/v1/jobs", "GET, POST, HEAD"),
        ("POST", "/v1/predictions/0193a1b2-0000-7000-8000-000000000000?x=1", "GET, HEAD"),
        ("PUT", "/v1/jobs/abc:cancel", "POST"),
        ("POST", "/console/", "GET, HEAD"),
        ("DELETE", "/console", "GET, HEAD"),
    ],
)
def test_a_wrong_method_on_a_known_path_is_405_naming_the_methods(
    edge: str, method: str, path: str, allow: str
) -> None:
    status, body, allowed = _call(edge + path, method)
    assert status == 405, body
    assert allowed == allow and allow in body["message"], (allowed, body)
    assert body["details"][0]["reason"] == "METHOD_NOT_ALLOWED", body


def test_an_unknown_path_stays_404(edge: str) -> None:
    status, body, _ = _call(edge + "/v1/nothing-here", "GET")
    assert status == 404 and body["details"][0]["reason"] == "UNKNOWN_PATH", body


def test_templates_match_names_not_verbs_or_deeper_paths() -> None:
    import re

    assert re.fullmatch(path_regex("/v1/jobs/{name}").strip("^$"), "/v1/jobs/abc")
    assert not re.fullmatch(path_regex("/v1/jobs/{name}").strip("^$"), "/v1/jobs/abc:cancel")
    assert not re.fullmatch(path_regex("/v1/jobs/{name}").strip("^$"), "/v1/jobs/abc/results")
    assert rest_methods()["/v1/models/{model}:predict"] == ("POST",)
    assert not [p for p in rest_methods() if p.startswith("/v2")]


def test_the_console_still_answers_get_and_head(edge: str) -> None:
    for method in ("GET", "HEAD"):
        request = urllib.request.Request(edge + "/console/", method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")
