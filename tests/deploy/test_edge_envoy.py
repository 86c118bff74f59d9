"""The real Envoy with the rendered config and no gateway behind it: what the edge answers by itself.

Bodies it lets through reach a gateway that never answers (504 EDGE_DEADLINE_EXCEEDED once their
grpc-timeout passes), which is how these tests tell "passed the edge" from "refused at the edge"
without the whole stack (tests/e2e/test_edge.py has it).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.envoy import EnvoyOptions, render
from devstack.infra import free_port

ENVOY = str(Path(sys.executable).parent / "envoy")
PREDICT = "/v1/models/m:predict"


@pytest.fixture(scope="module")
def stalled_gateway() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never answers: a hung gateway."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, stalled_gateway: int) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("edge")
    port, admin = free_port(), free_port()
    config = folder / "envoy.yaml"
    config.write_text(render(EnvoyOptions(listen_port=port, admin_port=admin, gateway_port=stalled_gateway)))
    log = (folder / "envoy.log").open("wb")
    process = subprocess.Popen(
        [ENVOY, "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(30)
    log.close()


def post(url: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + path, data=body, method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("grpc-timeout", "300m")  # Envoy gives up on the stalled gateway after 0.3 s
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def reason(answer: tuple[int, dict[str, Any]]) -> tuple[int, str]:
    status, body = answer
    return status, body["details"][0]["reason"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"topk": 3}', "topk"),
        ('{"image": {"content": "aGk=", "url": "x"}}', "image.url"),
        ('{"top_k": 1, "image": {"content": "aGk="}, "extra": {"a": [1, {"b": 2}]}}', "extra"),
    ],
)
def test_unknown_fields_are_refused_by_name(edge: str, body: str, field: str) -> None:
    status, answer = post(edge, PREDICT, body.encode())
    assert (status, answer["details"][0]["reason"]) == (400, "UNKNOWN_FIELD"), answer
    assert answer["details"][0]["metadata"]["field"] == field
    assert f'"{field}"' in answer["message"] and "its fields are:" in answer["message"]


def test_unknown_fields_inside_lists_of_messages_are_named_by_path(edge: str) -> None:
    body = b'{"model": "m", "inputs": [{"image": {"content": "aGk="}}, {"image": {"contnt": "aGk="}}]}'
    status, answer = post(edge, "/v1/jobs", body)
    assert (status, answer["details"][0]["metadata"]["field"]) == (400, "inputs.image.contnt"), answer


@pytest.mark.parametrize(
    "body",
    [
        b'{"top_k": 3, "topK": 3, "image": {"content": "aGk="}}',  # proto and JSON names
        b'{"request_id": "a \\"topk\\": 1, \\\\", "image": {"content": "aGk="}}',  # keys inside strings
        b'{"payload": {"anything": {"goes": [1, 2, {"here": true}]}}}',  # a Struct is free-form
        b'{"payload": ' + b'{"a": ' * 30 + b"1" + b"}" * 30 + b"}",  # nested 31 deep: within the limit
        b"",
    ],
)
def test_known_fields_and_free_form_values_pass(edge: str, body: bytes) -> None:
    assert reason(post(edge, PREDICT, body)) == (504, "EDGE_DEADLINE_EXCEEDED")


def test_a_timeout_at_the_edge_is_504_in_the_gateway_shape(edge: str) -> None:
    status, answer = post(edge, "/v1/jobs/x:cancel", b"{}")
    assert (status, answer["code"], answer["details"][0]["reason"]) == (504, 4, "EDGE_DEADLINE_EXCEEDED"), (
        answer
    )
    assert answer["message"], answer


def test_malformed_json_is_left_to_the_transcoder(edge: str) -> None:
    assert reason(post(edge, PREDICT, b'{"image": {"content": ')) == (400, "MALFORMED_REQUEST")


def test_bodies_over_the_route_limit_are_413_naming_it(edge: str) -> None:
    status, answer = post(edge, "/v1/jobs/x:cancel", b'{"pad": "' + b"x" * (1024 * 1024) + b'"}')
    assert (status, answer["details"][0]["reason"]) == (413, "REQUEST_TOO_LARGE")
    assert "1 MiB (1048576 bytes)" in answer["message"]


def test_unready_edge_says_why(edge: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{edge}/readyz", timeout=10)
    answer = json.loads(caught.value.read())
    assert caught.value.code == 503 and "no gateway is ready" in answer["message"]
