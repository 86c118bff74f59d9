"""The real Envoy with the rendered config and no gateway behind it: what the edge answers by itself.

Bodies it lets through reach a gateway that never answers (504 EDGE_DEADLINE_EXCEEDED once their
grpc-timeout passes), which is how these tests tell "passed the edge" from "refused at the edge"
without the whole stack (tests/e2e/test_edge.py has it).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer
from grpc_status import rpc_status

from devstack.envoy import MAX_CONCURRENT_STREAMS, REQUEST_HEADERS_TIMEOUT_S, EnvoyOptions, render
from devstack.infra import free_port
from services.common.errors import ERROR_DOMAIN

ENVOY = str(Path(sys.executable).parent / "envoy")
PREDICT = "/v1/models/m:predict"


@pytest.fixture(scope="module")
def stalled_gateway() -> Iterator[int]:
    """A port that accepts connections (the kernel does) and never answers: a hung gateway."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


@contextmanager
def running_envoy(folder: Path, options: EnvoyOptions) -> Iterator[str]:
    """Envoy with the rendered config of ``options``, until the block ends; yields its URL."""
    config = folder / "envoy.yaml"
    config.write_text(render(options))
    log = (folder / "envoy.log").open("wb")
    process = subprocess.Popen(
        [ENVOY, "-c", str(config), "--use-dynamic-base-id", "-l", "error"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{options.listen_port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, stalled_gateway: int) -> Iterator[str]:
    options = EnvoyOptions(listen_port=free_port(), admin_port=free_port(), gateway_port=stalled_gateway)
    with running_envoy(tmp_path_factory.mktemp("edge"), options) as url:
        yield url


def post(
    url: str, path: str, body: bytes, deadline: str = "300m", method: str = "POST"
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + path, data=body or None, method=method)
    request.add_header("content-type", "application/json")
    request.add_header("grpc-timeout", deadline)  # Envoy gives up on the stalled gateway then
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


PRIORITIES = "PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW"
STATES = "PREDICTION_STATE_SUCCEEDED, PREDICTION_STATE_FAILED"


@pytest.mark.parametrize(
    ("path", "body", "field", "value", "known"),
    [
        (PREDICT, b'{"priority": "urgent"}', "priority", "urgent", PRIORITIES),
        (PREDICT, b'{"priority": "high"}', "priority", "high", PRIORITIES),
        ("/v1/jobs", b'{"model": "m", "inputs": [], "priority": "7"}', "priority", "7", PRIORITIES),
        ("/v1/predictions?page_size=5&source=web", b"", "source", "web", "PREDICTION_SOURCE_SYNC, "),
        ("/v1/predictions?state=FAILED", b"", "state", "FAILED", STATES),
        ("/v1/jobs/abc/items?state=FAIL%45D", b"", "state", "FAILED", STATES),
    ],
)
def test_an_enum_value_no_enum_has_is_400_naming_the_valid_ones(
    edge: str, path: str, body: bytes, field: str, value: str, known: str
) -> None:
    """The transcoder's own words ('invalid value "urgent" for type type.googleapis.com/
    ferry.types.v1.Priority') did not say which values there are."""
    status, answer = post(edge, path, body, method="POST" if body else "GET")
    assert (status, answer["details"][0]["reason"]) == (400, "INVALID_ENUM"), answer
    assert answer["details"][0]["metadata"]["field"] == field, answer
    assert f'{field} is "{value}"; expected one of {known}' in answer["message"], answer


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (PREDICT, b'{"priority": "PRIORITY_HIGH"}'),
        (PREDICT, b'{"priority": 1}'),  # numbers: the gateway judges them (INVALID_PRIORITY)
        ("/v1/jobs", b'{"model": "m", "inputs": [], "priority": "PRIORITY_LOW"}'),
        ("/v1/predictions?source=PREDICTION_SOURCE_JOB_ITEM&state=2", b""),
        ("/v1/jobs/abc/items?state=PREDICTION_STATE_FAILED", b""),
    ],
)
def test_enum_values_by_name_or_number_pass(edge: str, path: str, body: bytes) -> None:
    assert reason(post(edge, path, body, method="POST" if body else "GET")) == (504, "EDGE_DEADLINE_EXCEEDED")


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


def test_a_job_over_its_limit_is_413_pointing_at_uploads(edge: str) -> None:
    """A 45 MB CreateJob of three photos (a new user's first big job): 413 naming the limit and the
    way a job of many images goes instead, a zip upload the job names."""
    status, answer = post(edge, "/v1/jobs", b'{"model": "m", "pad": "' + b"x" * (33 * 1024 * 1024) + b'"}')
    assert (status, answer["details"][0]["reason"]) == (413, "REQUEST_TOO_LARGE")
    assert "32 MiB (33554432 bytes)" in answer["message"], answer
    assert "POST the zip to /v1/uploads" in answer["message"] and '"manifest"' in answer["message"], answer


def test_unready_edge_says_why(edge: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{edge}/readyz", timeout=10)
    answer = json.loads(caught.value.read())
    assert caught.value.code == 503 and "no gateway is ready" in answer["message"]


def _grpc_refusal(edge: str, metadata: list[tuple[str, str]]) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """A native gRPC call's code, message and ErrorInfo (reason and metadata) with ``metadata``."""
    with grpc.insecure_channel(edge.removeprefix("http://")) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            channel.unary_unary("/ferry.models.v1.ModelService/ListModels")(b"", timeout=5, metadata=metadata)
    call = refused.value
    assert isinstance(call, grpc.Call)
    status = rpc_status.from_call(call)
    info = error_details_pb2.ErrorInfo()
    if status is None or not status.details or not status.details[0].Unpack(info):
        return call.code(), call.details() or "", {}
    return call.code(), status.message, {"reason": info.reason, "domain": info.domain, **info.metadata}


@pytest.mark.parametrize(
    ("metadata", "limit"),
    [
        # 150 small entries: Envoy's HTTP/2 codec reset the stream at 100 (INTERNAL, "RST_STREAM").
        ([(f"x-k{i}", "v") for i in range(150)], {"max_count": "100"}),
        ([(f"x-k{i}", "v") for i in range(900)], {"max_count": "100"}),
        # One 9,000-byte value: past the 8 KiB of headers, reset the same way.
        ([("x-big", "v" * 9_000)], {"max_bytes": "8192"}),
    ],
    ids=["150-entries", "900-entries", "9000-bytes"],
)
def test_a_grpc_call_with_too_many_or_too_large_metadata_gets_a_status_naming_the_limit(
    edge: str, metadata: list[tuple[str, str]], limit: dict[str, str]
) -> None:
    code, message, info = _grpc_refusal(edge, metadata)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, message)
    assert info == {"reason": "HEADERS_TOO_LARGE", "domain": ERROR_DOMAIN, "source": "envoy", **limit}
    assert "services/common/limits.py REQUEST_HEADERS_" in message


def test_a_grpc_call_with_metadata_under_the_limits_passes_the_edge(edge: str) -> None:
    code, message, _ = _grpc_refusal(edge, [(f"x-k{i}", "v" * 60) for i in range(80)])
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED, (code, message)  # the stalled gateway's


@pytest.mark.parametrize(("count", "size", "limit"), [(150, 1, "max_count"), (1, 9_000, "max_bytes")])
def test_a_rest_call_with_too_many_or_too_large_headers_is_400_naming_the_limit(
    edge: str, count: int, size: int, limit: str
) -> None:
    request = urllib.request.Request(f"{edge}/v1/models")
    for i in range(count):
        request.add_header(f"x-k{i}", "v" * size)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    answer = json.loads(refused.value.read())
    assert refused.value.code == 400 and answer["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert answer["details"][0]["reason"] == "HEADERS_TOO_LARGE" and limit in answer["details"][0]["metadata"]
    assert "services/common/limits.py REQUEST_HEADERS_" in answer["message"]


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_rest_body_is_415_naming_the_header(edge: str, encoding: str) -> None:
    # It used to reach the transcoder: 400 "Encountered non UTF-8 code points" and the gzip bytes.
    body = gzip.compress(b'{"text": {"content": "hello"}}')
    request = urllib.request.Request(edge + "/v1/models/m:predict", data=body, method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("content-encoding", encoding)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    answer = json.loads(refused.value.read())
    assert refused.value.code == 415 and answer["details"][0]["reason"] == "UNSUPPORTED_CONTENT_ENCODING"
    assert "send it without Content-Encoding" in answer["message"]


def test_identity_encoding_and_grpc_compression_pass_the_edge(edge: str) -> None:
    request = urllib.request.Request(edge + PREDICT, data=b"{}", method="POST")
    request.add_header("content-type", "application/json")
    request.add_header("content-encoding", "identity")
    request.add_header("grpc-timeout", "300m")
    with pytest.raises(urllib.error.HTTPError) as passed:
        urllib.request.urlopen(request, timeout=10)
    assert passed.value.code == 504  # the stalled gateway's: it passed the edge
    with grpc.insecure_channel(edge.removeprefix("http://"), compression=grpc.Compression.Gzip) as channel:
        with pytest.raises(grpc.RpcError) as waited:
            channel.unary_unary("/ferry.models.v1.ModelService/ListModels")(b"", timeout=1)
    assert waited.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


def test_an_http_1_0_request_is_answered_not_426(edge: str) -> None:
    # ApacheBench and some load balancers' probes speak HTTP/1.0: Envoy answered 426 Upgrade Required.
    port = int(edge.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        answer = b""
        while chunk := connection.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200"), answer[:200]


def _wait_until_ready(url: str) -> None:
    """Waits until Envoy's health checks find the gateway (its /readyz answers 200)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/readyz", timeout=2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the gateway never became healthy to Envoy"
            time.sleep(0.2)


def _raw_answer(edge: str, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Sends ``request`` as it is over a new connection; the status line, headers and body."""
    port = int(edge.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += connection.recv(4096)  # a held request times out here (socket.timeout)
        head, body = answer.split(b"\r\n\r\n", 1)
        status, *lines = head.decode().split("\r\n")
        headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
        while len(body) < int(headers.get("content-length", 0)):
            body += connection.recv(4096)
    return status.encode(), headers, body


@pytest.mark.parametrize("target", [b"example.com:443", b"127.0.0.1:50051"])
def test_a_connect_request_is_405_at_once_not_held(edge: str, target: bytes) -> None:
    # A CONNECT (a proxy's tunnel) has no path: no route matched it, and the buffer and Lua filters
    # waited for the end of a body that never comes, holding the connection until Envoy's timeouts.
    status, headers, body = _raw_answer(edge, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target))
    assert status.startswith(b"HTTP/1.1 405"), (status, body)
    assert headers["allow"] == "GET, HEAD, POST"
    error = json.loads(body)
    assert error["details"][0]["reason"] == "METHOD_NOT_ALLOWED", error
    assert "CONNECT is not served" in error["message"], error


def test_a_request_whose_headers_never_end_is_dropped_not_held(edge: str) -> None:
    # A client that sends the start of a request and then nothing (slowloris) held a connection and
    # its buffers until Envoy's 5-minute stream idle timeout; the headers now have REQUEST_HEADERS_TIMEOUT_S.
    port = int(edge.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_HEADERS_TIMEOUT_S + 20) as connection:
        started = time.monotonic()
        connection.sendall(b"GET /v1/models HTTP/1.1\r\nHost: ferry\r\nx-slow: ")
        answer = b""
        while chunk := connection.recv(4096):  # until Envoy closes the connection
            answer += chunk
        held_s = time.monotonic() - started
    assert held_s < REQUEST_HEADERS_TIMEOUT_S + 15, held_s
    # Envoy's 408 in the gateway's terms (devstack/edge.py: EDGE_DEADLINE_EXCEEDED), saying why.
    assert b"EDGE_DEADLINE_EXCEEDED" in answer and b"request header timeout" in answer, answer


@contextmanager
def stand_in_gateway(methods: dict[str, Callable[[bytes, grpc.ServicerContext], bytes]]) -> Iterator[int]:
    """A gRPC server as the gateway, SERVING, whose ModelService answers ``methods`` (by name, each
    a handler of raw bytes) until the block ends; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    health = HealthServicer()
    health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    handlers = {name: grpc.unary_unary_rpc_method_handler(method) for name, method in methods.items()}
    service = grpc.method_handlers_generic_handler("ferry.models.v1.ModelService", handlers)
    server.add_generic_rpc_handlers([service])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def answering_gateway() -> Iterator[int]:
    """A gRPC server as the gateway, SERVING, whose ListModels answers an empty message."""
    with stand_in_gateway({"ListModels": lambda request, context: b""}) as port:
        yield port


def test_a_grpc_call_without_te_trailers_is_answered_not_unavailable(
    tmp_path: Path, answering_gateway: int
) -> None:
    """A gRPC server resets a call that lacks ``te: trailers`` (curl over HTTP/1.1 leaves it out):
    Envoy retried it and answered UNAVAILABLE, "upstream connect error ... remote reset", which a
    client retries for ever. The edge adds the header to every call it forwards."""
    options = EnvoyOptions(listen_port=free_port(), admin_port=free_port(), gateway_port=answering_gateway)
    with running_envoy(tmp_path, options) as url:
        _wait_until_ready(url)
        with socket.create_connection(("127.0.0.1", options.listen_port), timeout=10) as connection:
            connection.sendall(
                b"POST /ferry.models.v1.ModelService/ListModels HTTP/1.1\r\nHost: a\r\n"
                b"content-type: application/grpc\r\ncontent-length: 5\r\n\r\n\0\0\0\0\0"
            )
            answer = b""
            while not answer.endswith(b"\r\n0\r\n\r\n") and b"grpc-status" not in answer:
                chunk = connection.recv(4096)
                if not chunk:
                    break
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"grpc-status" not in answer, answer[:300]
    assert b"\r\n5\r\n\0\0\0\0\0\r\n" in answer, answer[:300]  # the gateway's message


def _decode_frames(text: bytes) -> bytes:
    """gRPC-Web text: each frame base64-encoded on its own, padding and all, then concatenated."""
    return b"".join(base64.b64decode(chunk) for chunk in re.findall(rb"[^=]+=*", text))


@pytest.mark.parametrize(
    ("content_type", "encode", "decode"),
    [
        ("application/grpc-web+proto", lambda body: body, lambda body: body),
        ("application/grpc-web-text", base64.b64encode, _decode_frames),
    ],
    ids=["binary", "text"],
)
def test_a_grpc_web_call_is_served_with_its_status_in_the_body(
    tmp_path: Path,
    answering_gateway: int,
    content_type: str,
    encode: Callable[[bytes], bytes],
    decode: Callable[[bytes], bytes],
) -> None:
    """A browser's gRPC-Web call (what grpc-web and Connect clients send) was a plain-text 404: no
    route took its content type. The edge turns it into gRPC and the answer back: the message
    frame, then a trailer frame (flag 0x80) carrying grpc-status."""
    options = EnvoyOptions(listen_port=free_port(), admin_port=free_port(), gateway_port=answering_gateway)
    with running_envoy(tmp_path, options) as url:
        _wait_until_ready(url)
        connection = http.client.HTTPConnection(f"127.0.0.1:{options.listen_port}", timeout=10)
        connection.request(
            "POST",
            "/ferry.models.v1.ModelService/ListModels",
            body=encode(b"\0\0\0\0\0"),
            headers={"content-type": content_type, "accept": content_type, "x-grpc-web": "1"},
        )
        answer = connection.getresponse()
        body = decode(answer.read())
        connection.close()
    assert answer.status == 200 and answer.headers["content-type"].startswith(content_type), answer.headers
    assert body.startswith(b"\0\0\0\0\0\x80"), body  # the empty ListModelsResponse, then the trailers
    assert b"grpc-status:0" in body, body


@pytest.mark.parametrize(
    "body",
    [b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"[{" * 40 + bytes(range(256)), b"[1, 2]", b'"x"', b" \n null"],
    ids=["jpeg", "array", "string", "null"],
)
def test_a_body_that_is_not_a_json_object_is_400_saying_so(edge: str, body: bytes) -> None:
    # A JPEG posted as it is was answered NESTING_TOO_DEEP, "flatten the payload": its bytes
    # held more "[" and "{" than 32 levels.
    status, answer = post(edge, PREDICT, body)
    assert (status, answer["details"][0]["reason"]) == (400, "MALFORMED_REQUEST"), answer
    assert answer["message"].startswith("the request body is not a JSON object"), answer


BOUND = 2
"""The gateway's in-flight bound the overload tests render Envoy with: two calls fill it."""
HOLD_S = 8
"""How long the calls that fill the bound are held: the blocks run in well under a second, and
the last test waits until every holder, its own and the earlier tests', has ended."""


@pytest.fixture(scope="module")
def bounded_edge(tmp_path_factory: pytest.TempPathFactory, stalled_gateway: int) -> Iterator[tuple[str, str]]:
    """Envoy sized for one gateway whose in-flight bound is BOUND; yields its URL and admin URL."""
    admin = free_port()
    options = EnvoyOptions(
        listen_port=free_port(), admin_port=admin, gateway_port=stalled_gateway, gateway_max_inflight=BOUND
    )
    with running_envoy(tmp_path_factory.mktemp("bounded-edge"), options) as url:
        yield url, f"http://127.0.0.1:{admin}"


def _active_calls(admin: str) -> int:
    """Unary calls Envoy has in flight to the gateway cluster (its own counter)."""
    with urllib.request.urlopen(f"{admin}/stats?filter=^cluster\\.gateway\\.upstream_rq_active$") as answer:
        return int(answer.read().decode().rsplit(":", 1)[1])


@contextmanager
def bound_full(url: str, admin: str) -> Iterator[None]:
    """BOUND calls the stalled gateway holds (for HOLD_S at most) while the block runs."""
    holders = [
        threading.Thread(target=post, args=(url, "/v1/jobs/x:cancel", b"{}", f"{HOLD_S}S"), daemon=True)
        for _ in range(BOUND)
    ]
    for holder in holders:
        holder.start()
    deadline = time.monotonic() + 10
    while _active_calls(admin) < BOUND:
        assert time.monotonic() < deadline, "the holding calls never reached the gateway cluster"
        time.sleep(0.05)
    yield


def test_a_rest_call_over_the_bound_is_429_overloaded_from_the_edge(bounded_edge: tuple[str, str]) -> None:
    url, admin = bounded_edge
    with bound_full(url, admin):
        request = urllib.request.Request(url + PREDICT, data=b"{}", method="POST")
        request.add_header("content-type", "application/json")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        answer = json.loads(refused.value.read())
        # A stream does not count against the unary calls' bound: it reaches the (stalled) gateway.
        assert reason(post(url, "/v1/jobs/x:watch", b"", method="GET")) == (504, "EDGE_DEADLINE_EXCEEDED")
    assert (refused.value.code, answer["code"]) == (429, grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]), answer
    assert refused.value.headers["retry-after"] == "1"
    info, retry = answer["details"]
    assert (info["reason"], info["domain"], info["metadata"]["source"]) == (
        "OVERLOADED",
        ERROR_DOMAIN,
        "envoy",
    )
    assert retry == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": "1s"}
    assert "limit of calls in flight (FERRY_GATEWAY_MAX_INFLIGHT each)" in answer["message"]


def test_a_grpc_call_over_the_bound_is_resource_exhausted_overloaded_from_the_edge(
    bounded_edge: tuple[str, str],
) -> None:
    url, admin = bounded_edge
    with bound_full(url, admin), grpc.insecure_channel(url.removeprefix("http://")) as channel:
        predict = channel.unary_unary("/ferry.models.v1.ModelService/Predict")
        with pytest.raises(grpc.RpcError) as refused:
            predict(b"", timeout=10)
    call = refused.value
    assert isinstance(call, grpc.Call)
    assert call.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(call)
    assert status is not None and "FERRY_GATEWAY_MAX_INFLIGHT" in status.message
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(retry)
    assert (info.reason, info.domain, info.metadata["source"]) == ("OVERLOADED", ERROR_DOMAIN, "envoy")
    assert retry.retry_delay.seconds == 1
    assert ("retry-after", "1") in (call.trailing_metadata() or ())


def test_calls_pass_again_once_the_bound_has_room(bounded_edge: tuple[str, str]) -> None:
    url, admin = bounded_edge
    with bound_full(url, admin):
        pass
    deadline = time.monotonic() + 30
    while _active_calls(admin):  # the holders' own deadline ends them
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert reason(post(url, PREDICT, b"{}")) == (504, "EDGE_DEADLINE_EXCEEDED")


def _downstream_active(admin: str) -> int:
    """Client calls Envoy has in flight on its public listener (its own counter)."""
    with urllib.request.urlopen(f"{admin}/stats?filter=^http\\.public\\.downstream_rq_active$") as answer:
        return int(answer.read().decode().rsplit(":", 1)[1])


def test_one_connection_carries_at_most_max_concurrent_streams_calls(bounded_edge: tuple[str, str]) -> None:
    """A client multiplexing more calls than that on one HTTP/2 connection has the rest wait in its
    own stack, not in Envoy, where a worker would read and answer them all before other clients."""
    url, admin = bounded_edge
    extra = 20
    with grpc.insecure_channel(url.removeprefix("http://")) as channel:
        watch = channel.unary_stream("/ferry.jobs.v1.JobService/WatchJob")  # a stream: not bounded at 2
        calls = [watch(b"", timeout=30) for _ in range(MAX_CONCURRENT_STREAMS + extra)]
        deadline = time.monotonic() + 10
        while _downstream_active(admin) < MAX_CONCURRENT_STREAMS:
            assert time.monotonic() < deadline, "the calls never reached Envoy"
            time.sleep(0.05)
        time.sleep(0.5)  # the extra calls would have arrived by now
        assert _downstream_active(admin) == MAX_CONCURRENT_STREAMS
        # A second connection has its own streams.
        with grpc.insecure_channel(
            url.removeprefix("http://"), options=[("grpc.use_local_subchannel_pool", 1)]
        ) as other:
            more = [
                other.unary_stream("/ferry.jobs.v1.JobService/WatchJob")(b"", timeout=30)
                for _ in range(extra)
            ]
            deadline = time.monotonic() + 10
            while _downstream_active(admin) < MAX_CONCURRENT_STREAMS + extra:
                assert time.monotonic() < deadline, "a second connection's calls waited for the first's"
                time.sleep(0.05)
            for call in (*calls, *more):
                call.cancel()


@pytest.fixture(scope="module")
def holding_gateway() -> Iterator[int]:
    """A gRPC server as the gateway, SERVING, whose GetModel never answers: a hung call."""
    released = threading.Event()
    with stand_in_gateway({"GetModel": lambda request, context: released.wait(60) and b""}) as port:
        yield port
        released.set()


def test_a_hung_call_without_a_deadline_ends_at_the_route_timeout(
    tmp_path: Path, holding_gateway: int
) -> None:
    """A REST call (no grpc-timeout) and a gRPC call without a deadline, to a gateway that holds
    them: Envoy ends both at the route's timeout (here 1 s). They were held until the client gave
    up: with grpc_timeout_header_max set, Envoy applied the route's timeout to no gRPC upstream call."""
    options = EnvoyOptions(
        listen_port=free_port(), admin_port=free_port(), gateway_port=holding_gateway, upstream_timeout_s=1
    )
    with running_envoy(tmp_path, options) as url:
        _wait_until_ready(url)
        started = time.monotonic()
        try:
            urllib.request.urlopen(f"{url}/v1/models/m", timeout=20)
            raise AssertionError("a hung call was answered 200")
        except urllib.error.HTTPError as err:
            status, answer = err.code, json.loads(err.read())
        # Envoy's own answer (EDGE_DEADLINE_EXCEEDED) or, under load, the upstream's: Envoy passes
        # the route's bound on as grpc-timeout, and the gRPC server may end the call a moment first.
        reasons = [detail["reason"] for detail in answer["details"]]
        assert (status, answer["code"]) == (504, 4) and reasons in (["EDGE_DEADLINE_EXCEEDED"], []), answer
        assert time.monotonic() - started < 15
        # A REST body that stops short of its Content-Length (a slowloris that needs no trickle)
        # ends at the same bound: it used to hold the stream until the 5-minute idle timeout.
        started = time.monotonic()
        status, _, body = _raw_answer(
            url,
            b"POST /v1/models/m:predict HTTP/1.1\r\nHost: ferry\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"inputs"',
        )
        assert status.startswith(b"HTTP/1.1 504") and b"EDGE_DEADLINE_EXCEEDED" in body, (status, body)
        assert time.monotonic() - started < 15
        with grpc.insecure_channel(f"127.0.0.1:{options.listen_port}") as channel:
            call = channel.unary_unary("/ferry.models.v1.ModelService/GetModel")
            future = call.future(b"")
            try:
                future.result(timeout=20)
            except grpc.FutureTimeoutError:
                future.cancel()
                raise AssertionError("a gRPC call without a deadline was held 20 s") from None
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED, err
