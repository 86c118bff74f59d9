"""The real Envoy sends large Open Inference Protocol bodies to the upload lane (issue 17).

A 15 MiB JSON body of short strings held a gateway's interpreter 0.35 s whatever thread parsed it
(``json`` holds the GIL), and every other caller of that gateway waited. Envoy now routes a
``/v2/models/{m}[/versions/{v}]/infer`` body of at least ``oip_lane_bytes`` to the lane's gateways,
by its length, after the transcoder has rewritten it (the route is looked up again then). A native
gRPC ``ModelInfer`` of that size goes there too (gRPC parses it whole on the gateway's event loop:
5 million one-byte elements took 0.5 s): once the buffer filter holds it, its route is looked up
again by its length. Two gRPC servers stand in for a gateway and the lane and say which of them
answered; the whole stack's lane is tested in tests/e2e/test_oip_lane.py.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from devstack.envoy import BODY_BYTES_HEADER, EnvoyOptions
from devstack.infra import free_port
from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.oip.v2 import grpc_predict_v2_pb2_grpc as oip_grpc
from ferry.openinference.v1 import open_inference_rest_pb2 as rest
from services.common import limits
from tests.deploy.test_edge_envoy import _wait_until_ready, running_envoy

#: Small, so that bodies on either side of it are quick to send.
LANE_BYTES = 64 * 1024
SERVICE = "ferry.openinference.v1.OpenInferenceRestService"
GRPC_SERVICE = "inference.GRPCInferenceService"


def _answering(who: str) -> tuple[grpc.Server, int]:
    """A gRPC server, SERVING, whose InferModel answers who it is and the body length it got; a
    body with "refuse" in it is INVALID_ARGUMENT, as a gateway refuses a malformed one."""

    def infer(request: rest.InferModelRequest, context: grpc.ServicerContext) -> rest.InferModelResponse:
        if b"refuse" in request.body.data:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"refused by the {who}")
        said = json.dumps({"who": who, "bytes": len(request.body.data), "model": request.model_name})
        return rest.InferModelResponse(
            body=httpbody_pb2.HttpBody(content_type="application/json", data=said.encode())
        )

    unbounded = [("grpc.max_receive_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=unbounded)
    health = HealthServicer()
    health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    handler = grpc.unary_unary_rpc_method_handler(
        infer,
        request_deserializer=rest.InferModelRequest.FromString,
        response_serializer=rest.InferModelResponse.SerializeToString,
    )
    native = grpc.unary_unary_rpc_method_handler(
        lambda request, _: oip.ModelInferResponse(model_name=who, id=str(request.ByteSize())),
        request_deserializer=oip.ModelInferRequest.FromString,
        response_serializer=oip.ModelInferResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(SERVICE, {"InferModel": handler}),
            grpc.method_handlers_generic_handler(GRPC_SERVICE, {"ModelInfer": native}),
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.fixture(scope="module")
def ports() -> Iterator[dict[str, int]]:
    """The stand-in gateway's and lane's ports."""
    servers = {who: _answering(who) for who in ("gateway", "lane")}
    yield {who: port for who, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.stop(None)


def _options(ports: dict[str, int], lane: bool) -> EnvoyOptions:
    return EnvoyOptions(
        listen_port=free_port(),
        admin_port=free_port(),
        gateway_port=ports["gateway"],
        upload_gateway_ports=(ports["lane"],) if lane else (),
        oip_lane_bytes=LANE_BYTES,
    )


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[str]:
    with running_envoy(tmp_path_factory.mktemp("lane-edge"), _options(ports, lane=True)) as url:
        _wait_until_ready(url)
        yield url


def _body(size: int, marker: str = "a") -> bytes:
    """An OIP JSON request of short strings (the kind ``json`` parses holding the GIL), ``size`` bytes."""
    head, tail = b'{"inputs":[{"name":"TEXT","shape":[1],"datatype":"BYTES","data":["', b'"]}]}'
    filler = (marker * size).encode()[: size - len(head) - len(tail)]
    body = head + filler + tail
    assert len(body) == size
    return body


def _infer(
    url: str,
    body: bytes,
    path: str = "/v2/models/m/infer",
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, dict[str, Any]]:
    """POSTs ``body`` (in 16 KiB chunks, without a length, when ``chunked``); status and JSON answer."""
    connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
    try:
        sent = {"content-type": "application/json", **(headers or {})}
        if chunked:
            pieces = [body[i : i + 16384] for i in range(0, len(body), 16384)]
            connection.request("POST", path, body=iter(pieces), headers=sent, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers=sent)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_a_small_body_goes_to_the_gateways(edge: str) -> None:
    assert _infer(edge, _body(1024)) == (200, {"who": "gateway", "bytes": 1024, "model": "m"})
    assert _infer(edge, _body(LANE_BYTES - 1))[1]["who"] == "gateway"


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v2/models/m/versions/1/infer"])
def test_a_body_of_the_lane_size_or_more_goes_to_the_lane(edge: str, path: str) -> None:
    for size in (LANE_BYTES, 4 * LANE_BYTES):
        assert _infer(edge, _body(size), path) == (200, {"who": "lane", "bytes": size, "model": "m"})


def test_a_chunked_body_is_routed_by_its_whole_length(edge: str) -> None:
    # No content-length: Envoy holds the whole body (the buffer filter) and routes it by its length.
    assert _infer(edge, _body(4 * LANE_BYTES), chunked=True)[1]["who"] == "lane"
    assert _infer(edge, _body(1024), chunked=True)[1]["who"] == "gateway"


@pytest.mark.parametrize("claimed", ["1", "", "99999999999999999999", str(4 * LANE_BYTES)])
def test_a_client_cannot_choose_the_lane_by_the_header(edge: str, claimed: str) -> None:
    """The header Envoy routes by is its own: a client's is replaced by the body's real length."""
    assert _infer(edge, _body(4 * LANE_BYTES), headers={BODY_BYTES_HEADER: claimed})[1]["who"] == "lane"
    assert _infer(edge, _body(1024), headers={BODY_BYTES_HEADER: claimed})[1]["who"] == "gateway"


def test_the_lanes_refusal_is_in_the_protocols_error_shape(edge: str) -> None:
    status, answer = _infer(edge, _body(4 * LANE_BYTES, marker="refuse"))
    assert (status, answer) == (400, {"error": "refused by the lane"})
    status, answer = _infer(edge, _body(1024, marker="refuse"))
    assert (status, answer) == (400, {"error": "refused by the gateway"})


def test_without_a_lane_every_body_goes_to_the_gateways(tmp_path: Path, ports: dict[str, int]) -> None:
    with running_envoy(tmp_path, _options(ports, lane=False)) as url:
        _wait_until_ready(url)
        assert _infer(url, _body(4 * LANE_BYTES))[1]["who"] == "gateway"


#: gRPC's frame before a message: a compression flag and the message's length.
_GRPC_FRAME = 5


def _model_infer(url: str, size: int, metadata: tuple[tuple[str, str], ...] = ()) -> tuple[str, int]:
    """A native ModelInfer whose body (the gRPC frame) is ``size`` bytes; who answered, and the
    message's size they got."""
    request = oip.ModelInferRequest(model_name="m", raw_input_contents=[b""])
    for _ in range(2):  # the second time with the length's own bytes counted
        filler = len(request.raw_input_contents[0]) + size - _GRPC_FRAME - request.ByteSize()
        request.raw_input_contents[0] = b"x" * filler
    assert request.ByteSize() + _GRPC_FRAME == size
    unbounded = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(url.removeprefix("http://"), options=unbounded) as channel:
        answer = oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, metadata=metadata, timeout=30)
    return answer.model_name, int(answer.id)


def test_a_small_grpc_model_infer_goes_to_the_gateways(edge: str) -> None:
    assert _model_infer(edge, 1024) == ("gateway", 1024 - _GRPC_FRAME)
    assert _model_infer(edge, LANE_BYTES - 1)[0] == "gateway"


def test_a_grpc_model_infer_of_the_lane_size_or_more_goes_to_the_lane(edge: str) -> None:
    for size in (LANE_BYTES, 4 * LANE_BYTES):
        assert _model_infer(edge, size) == ("lane", size - _GRPC_FRAME)


@pytest.mark.parametrize("claimed", ["1", str(4 * LANE_BYTES)])
def test_a_grpc_client_cannot_choose_the_lane_by_the_header(edge: str, claimed: str) -> None:
    claim = ((BODY_BYTES_HEADER, claimed),)
    assert _model_infer(edge, 4 * LANE_BYTES, claim)[0] == "lane"
    assert _model_infer(edge, 1024, claim)[0] == "gateway"


def test_a_grpc_model_infer_over_the_predict_limit_is_refused_with_the_limit(edge: str) -> None:
    """Not a reset: the call's status names the limit, as every route's 413 does (devstack/edge.py)."""
    with pytest.raises(grpc.RpcError) as caught:
        _model_infer(edge, limits.PREDICT_REQUEST_BYTES + 1024)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "16 MiB (16777216 bytes)" in (error.details() or ""), error


def test_without_a_lane_every_grpc_model_infer_goes_to_the_gateways(
    tmp_path: Path, ports: dict[str, int]
) -> None:
    with running_envoy(tmp_path, _options(ports, lane=False)) as url:
        _wait_until_ready(url)
        assert _model_infer(url, 4 * LANE_BYTES)[0] == "gateway"
