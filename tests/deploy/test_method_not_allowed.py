"""The real Envoy with the rendered config: a known REST path asked with another method is 405
METHOD_NOT_ALLOWED with an ``allow`` header (not 404), in the gateway's error shape; an unknown path
stays 404 UNKNOWN_PATH. Paths and methods come from deploy/openapi/ferry.json (devstack/edge.py)."""

from __future__ import annotations

import http.client
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


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v2/models/efficientnet-lite0/infer", "POST"),
        ("POST", "/v2/models/efficientnet-lite0", "GET, HEAD"),
        ("DELETE", "/v2/health/ready", "GET, HEAD"),
    ],
)
def test_a_wrong_method_on_an_open_inference_path_is_405_in_the_protocols_shape(
    edge: str, method: str, path: str, allow: str
) -> None:
    """/v2 answered 404 "Could not resolve … to a method" to a GET of a model's infer path; its
    clients read ``{"error": ...}``, so the 405 says which methods the path takes in that shape."""
    status, body, allowed = _call(edge + path, method)
    assert status == 405 and allowed == allow, (status, allowed, body)
    assert list(body) == ["error"] and allow in body["error"], body


def test_an_unknown_path_stays_404(edge: str) -> None:
    status, body, _ = _call(edge + "/v1/nothing-here", "GET")
    assert status == 404 and body["details"][0]["reason"] == "UNKNOWN_PATH", body


@pytest.mark.parametrize("path", ["/v1/nothing-here", "/v1/models/:predict", "/v1/predict"])
def test_an_unknown_path_says_where_the_calls_are_listed(edge: str, path: str) -> None:
    """A new user's wrong path (a missing model name, a guessed route) is told where the calls are,
    beside the transcoder's own words naming the path (was: "Could not resolve … to a method." alone)."""
    status, body, _ = _call(edge + path, "POST")
    assert status == 404 and body["details"][0]["reason"] == "UNKNOWN_PATH", body
    assert path in body["message"] and "GET /openapi.json" in body["message"], body


@pytest.mark.parametrize(
    ("url", "data", "words"),
    [
        ("/v1/models/efficientnet-lite0:predict", b'{"image": ', "Unexpected end of string"),
        ("/v1/models/efficientnet-lite0:predict", b'{"top_k": "three"}', "top_k"),
        ("/v1/predictions?pagesize=10", None, "pagesize"),
    ],
)
def test_a_request_the_transcoder_cannot_read_says_what_and_where_the_fields_are(
    edge: str, url: str, data: bytes | None, words: str
) -> None:
    """Broken JSON, a value of the wrong type, an unknown query parameter: 400 saying the request is
    not one the call takes, the transcoder's words, and where the calls' fields are described."""
    request = urllib.request.Request(edge + url, data=data, headers={"authorization": "Bearer k"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    body = json.loads(caught.value.read())
    assert caught.value.code == 400 and body["details"][0]["reason"] == "MALFORMED_REQUEST", body
    message = body["message"]
    assert message.startswith("the request is not one this call takes: "), body
    assert words in message and "GET /openapi.json" in message, body


def test_templates_match_names_not_verbs_or_deeper_paths() -> None:
    import re

    assert re.fullmatch(path_regex("/v1/jobs/{name}").strip("^$"), "/v1/jobs/abc")
    assert not re.fullmatch(path_regex("/v1/jobs/{name}").strip("^$"), "/v1/jobs/abc:cancel")
    assert not re.fullmatch(path_regex("/v1/jobs/{name}").strip("^$"), "/v1/jobs/abc/results")
    assert rest_methods()["/v1/models/{model}:predict"] == ("POST",)
    assert rest_methods()["/v2/models/{model_name}/infer"] == ("POST",)


def test_the_console_still_answers_get_and_head(edge: str) -> None:
    for method in ("GET", "HEAD"):
        request = urllib.request.Request(edge + "/console/", method=method)
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200 and answer.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_a_browser_at_the_public_port_is_sent_to_the_console(edge: str, method: str) -> None:
    """`GET /` answered the JSON 404 "Could not resolve / to a method" to a person's browser."""
    connection = http.client.HTTPConnection(edge.removeprefix("http://"), timeout=30)
    connection.request(method, "/")
    answer = connection.getresponse()
    answer.read()
    connection.close()
    assert answer.status == 301 and answer.headers["location"].endswith("/console/"), answer.headers


def test_other_methods_at_the_root_stay_an_unknown_path(edge: str) -> None:
    status, body, _ = _call(edge + "/", "POST")
    assert status == 404 and body["details"][0]["reason"] == "UNKNOWN_PATH", body
