"""Runs a group of job items through inference in one Predict call and says what became of each."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from ferry.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import limits
from services.common.errors import status_to_proto
from services.jobs.retry import is_transient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What inference said about one item: its result, or the error that stopped it."""

    result: inference_service_pb2.PredictResult | None = None
    error: status_pb2.Status | None = None

    @property
    def transient(self) -> bool:
        """Whether the item failed in a way another attempt may fix."""
        return self.error is not None and is_transient(self.error)


def _failed(count: int, code: grpc.StatusCode, message: str, reason: str) -> list[Outcome]:
    return [Outcome(error=status_to_proto(code, message, reason))] * count


def _status_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The call's google.rpc.Status with its details when inference sent them, else code + message."""
    status: status_pb2.Status | None = rpc_status.from_call(err)  # type: ignore[arg-type]
    if status is None:
        status = status_to_proto(err.code(), err.details() or err.code().name, "INFERENCE_ERROR")
    return status


def _outcome(result: inference_service_pb2.PredictResult) -> Outcome:
    if result.HasField("error") and result.error.code != grpc.StatusCode.OK.value[0]:
        return Outcome(error=result.error)
    return Outcome(result=result)


@dataclass(frozen=True)
class _Call:
    """What every Predict call made for one group of items shares."""

    model: str
    top_k: int
    priority: types_pb2.Priority
    deadline: float
    """``time.monotonic()`` after which no call is made."""


class Predictor:
    """Calls InferenceService.Predict with a deadline; never raises for a failed call."""

    def __init__(self, stub: inference_service_pb2_grpc.InferenceServiceStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    async def predict(
        self,
        model: str,
        top_k: int,
        inputs: Sequence[types_pb2.Input],
        priority: types_pb2.Priority = types_pb2.PRIORITY_UNSPECIFIED,
    ) -> list[Outcome]:
        """Predicts ``inputs`` with ``model``; returns one Outcome per input, in order.

        All calls made for the group (there can be several, see below) share one deadline of
        ``timeout_s``. Calls wait for inference to be ready within it (``wait_for_ready``): a
        call made while inference restarts or the channel reconnects waits for it instead of
        failing at once and spending a retry. ``priority`` is the job's, passed to inference with
        ``job_item`` set (its queues put a waiting caller of the same priority first).
        """
        deadline = time.monotonic() + self._timeout_s
        return await self._call(_Call(model, top_k, priority, deadline), list(inputs))

    async def _call(self, call: _Call, inputs: list[types_pb2.Input]) -> list[Outcome]:
        model, top_k, deadline = call.model, call.top_k, call.deadline
        if len(inputs) > limits.MAX_INPUTS_PER_REQUEST:
            chunks = [
                inputs[i : i + limits.MAX_INPUTS_PER_REQUEST]
                for i in range(0, len(inputs), limits.MAX_INPUTS_PER_REQUEST)
            ]
            parts = await asyncio.gather(*(self._call(call, c) for c in chunks))
            return [outcome for part in parts for outcome in part]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            message = f"inference did not answer within {self._timeout_s:.1f}s"
            return _failed(len(inputs), grpc.StatusCode.DEADLINE_EXCEEDED, message, "INFERENCE_TIMEOUT")
        request = inference_service_pb2.PredictRequest(
            model=model, inputs=inputs, top_k=top_k, priority=call.priority, job_item=True
        )
        try:
            response = await self._stub.Predict(request, timeout=remaining, wait_for_ready=True)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.INVALID_ARGUMENT and len(inputs) > 1:
                # Items only share a request to be batched; one bad input must not fail the
                # others, so each one is asked again on its own.
                parts = await asyncio.gather(*(self._call(call, [i]) for i in inputs))
                return [outcome for part in parts for outcome in part]
            return [Outcome(error=_status_of(err))] * len(inputs)
        except Exception as err:  # a bug or a closed channel: retry it like a crashed server
            log.exception("inference call for model %s failed unexpectedly", model)
            return _failed(len(inputs), grpc.StatusCode.INTERNAL, repr(err), "INFERENCE_CALL_FAILED")
        if len(response.results) != len(inputs):
            message = f"inference answered {len(response.results)} results for {len(inputs)} inputs"
            return _failed(len(inputs), grpc.StatusCode.INTERNAL, message, "INFERENCE_BAD_RESPONSE")
        return [_outcome(result) for result in response.results]
