"""A request_id is remembered by every gateway: two gateway processes of the scaled stack (3 NATS
nodes) see one claim, so the same id with other inputs on the other gateway is refused."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.types.v1 import types_pb2
from tests.faults.harness import FaultStack


def predict(
    stack: FaultStack, gateway: str, image: bytes, request_id: str
) -> model_service_pb2.PredictResponse:
    """One Predict straight to ``gateway``'s own port, past Envoy's balancing."""
    port = stack.endpoints["services"][gateway]["grpc_port"]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer: model_service_pb2.PredictResponse = model_service_pb2_grpc.ModelServiceStub(channel).Predict(
            model_service_pb2.PredictRequest(
                model="models/efficientnet-lite0", image=types_pb2.Image(content=image), request_id=request_id
            ),
            metadata=(("authorization", f"Bearer {stack.rest.api_key}"),),
            timeout=60,
        )
    return answer


def test_two_gateways_share_what_a_request_id_was_sent_with(
    scaled_stack: FaultStack, photos: list[bytes]
) -> None:
    cat, coffee = photos
    request_id = f"two-gateways-{uuid.uuid4()}"
    first = predict(scaled_stack, "gateway-0", cat, request_id)
    # The client's retry lands on the other gateway: the same prediction.
    assert predict(scaled_stack, "gateway-1", cat, request_id).prediction.name == first.prediction.name
    with pytest.raises(grpc.RpcError) as refused:
        predict(scaled_stack, "gateway-1", coffee, request_id)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info) and info.reason == "REQUEST_ID_REUSED"
