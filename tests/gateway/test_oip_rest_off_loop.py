"""A large Open Inference Protocol REST body is read off the gateway's event loop.

Session 10's attack pass: a 16 MiB JSON TENSOR took the loop 1.3-2 s, and every other tenant's call
on that gateway waited. The handler is called here as gRPC calls it; the body is refused at its
last element, so the whole body is read and nothing past the reading (inference, records) runs.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from google.api import httpbody_pb2

from ferry.openinference.v1 import open_inference_rest_pb2 as rest
from services.common import nesting
from services.common.errors import InvalidArgument
from services.gateway import oip_rest
from services.gateway.components import ComponentsSlot
from services.gateway.servicers.oip_rest import OpenInferenceRestServicer
from services.gateway.settings import GatewaySettings

#: 200,000 numbers (about 1 MB of JSON), the last element not one.
_NUMBERS = [0.25] * 199_999 + ["x"]
_BODY = json.dumps(
    {"inputs": [{"name": "TENSOR", "shape": [1, len(_NUMBERS)], "datatype": "FP32", "data": [_NUMBERS]}]}
).encode()


class _Context:
    """What the handler reads of a call's context: its metadata (no length header here)."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def _ticks_while_read(off_loop_bytes: int) -> tuple[int, InvalidArgument]:
    """How many times the event loop ran something else while the handler read ``_BODY``."""
    slot = ComponentsSlot()
    settings = GatewaySettings(oip_rest_off_loop_bytes=off_loop_bytes)
    slot.fill(SimpleNamespace(settings=settings))  # type: ignore[arg-type]  # the body fails before any other component
    request = rest.InferModelRequest(model_name="efficientnet-lite0", body=httpbody_pb2.HttpBody(data=_BODY))
    call = asyncio.ensure_future(OpenInferenceRestServicer(slot).InferModel(request, _Context()))  # type: ignore[arg-type]
    ticks = 0
    while not call.done():
        await asyncio.sleep(0)
        ticks += 1
    with pytest.raises(InvalidArgument) as refused:
        call.result()
    return ticks - 1, refused.value  # the last tick is the one that saw it end


async def test_a_large_body_is_read_on_a_thread_while_the_loop_serves_others() -> None:
    ticks, refused = await _ticks_while_read(off_loop_bytes=256 * 1024)
    assert "input 'TENSOR' is FP32: its data must be numbers" in refused.message
    assert ticks > 0  # on the loop, the handler read the whole body in one step: 0
    # The refusal comes back without the worker's frames, which held the parsed body: raised
    # across the thread, they stayed in cycles that only a full collection frees, and the upload
    # lane grew by 230 MB for each refused 15 MiB body (docs/benchmarks.md, session 12).
    frames, tb = set(), refused.__traceback__
    while tb is not None:
        frames.add(tb.tb_frame.f_code)
        tb = tb.tb_next
    assert oip_rest.infer_request.__code__ not in frames


async def test_a_small_body_is_read_on_the_loop() -> None:
    ticks, refused = await _ticks_while_read(off_loop_bytes=len(_BODY))
    assert "its data must be numbers" in refused.message
    assert ticks == 0


@pytest.mark.parametrize(
    "value",
    [
        [[0.1, 2, -3.5e-7, 1e300], [True, False, 0]],
        {"a": [1, 2.5, {"b": 12345678901234567890}], "c": "d", "e": None},
        123,
    ],
)
def test_a_yielding_parse_reads_what_json_reads(value: object) -> None:
    text = json.dumps(value)
    assert nesting.loads(text, yielding=True) == json.loads(text)
    assert json.dumps(nesting.loads(text, yielding=True)) == text  # floats to the bit, ints as ints


def test_numbers_of_irregular_nesting_are_read_in_row_major_order() -> None:
    body = json.dumps(
        {"inputs": [{"name": "T", "shape": [5], "datatype": "FP32", "data": [[1, [2, 3]], 4, [[5]]]}]}
    ).encode()
    parsed = oip_rest.infer_request(body, None, "m", "")
    assert list(parsed.request.inputs[0].contents.fp32_contents) == [1, 2, 3, 4, 5]
