"""``OpenInferenceRestService`` handlers: the Open Inference Protocol's REST binding on /v2.

Envoy routes each /v2 path here with the body raw (see the proto); each handler converts at the
edge (``oip_rest``) and calls the same ``OpenInference`` as the gRPC binding, behind the same
admission (keys, scopes, limits) and recording. Errors are raised as for any call; Envoy rewrites
their JSON into the protocol's ``{"error": "..."}`` on /v2 paths (``devstack/oip_rest_edge.py``).
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import grpc
from google.api import httpbody_pb2

from ferry.oip.v2 import grpc_predict_v2_pb2 as oip
from ferry.openinference.v1 import open_inference_rest_pb2 as rest
from ferry.openinference.v1 import open_inference_rest_pb2_grpc as rest_grpc
from services.common.errors import FerryError, NotFound, Unavailable
from services.gateway import identity, oip_rest
from services.gateway.components import ComponentsSlot
from services.gateway.idempotency import Edge
from services.gateway.open_inference import SERVER_NAME, SERVER_VERSION
from services.gateway.servicers.oip_repository import index

Context = grpc.aio.ServicerContext[object, object]
_P = ParamSpec("_P")
_T = TypeVar("_T")
#: The protocol's extensions this binding speaks (Triton's names).
EXTENSIONS = ["binary_tensor_data", "model_repository"]


def _json(document: object) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=oip_rest.JSON_TYPE, data=oip_rest.json_bytes(document))


def _header(context: Context, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


def _not_ready(what: str) -> Unavailable:
    return Unavailable(f"{what} is not ready", reason="OIP_NOT_READY")


class OpenInferenceRestServicer(rest_grpc.OpenInferenceRestServiceServicer):
    """Serves tritonclient.http, KServe's REST clients and curl; every call needs the caller's key."""

    def __init__(self, slot: ComponentsSlot) -> None:
        self._slot = slot
        # One large body read or written at a time: under the GIL a second thread converts no
        # faster, and each holds about ten times its body in Python objects meanwhile.
        self._large = asyncio.Semaphore(1)

    async def GetServerHealth(
        self, request: rest.GetServerHealthRequest, context: Context
    ) -> rest.GetServerHealthResponse:
        if request.probe == "live":
            return rest.GetServerHealthResponse(body=_json({"live": True}))  # answering is being live
        if request.probe != "ready":
            raise NotFound(
                f"no health probe {request.probe!r}: GET /v2/health/live or /v2/health/ready",
                reason="UNKNOWN_PATH",
            )
        if not await self._slot.get().open_inference.server_ready():
            raise _not_ready("the server (no model is ready)")
        return rest.GetServerHealthResponse(body=_json({"ready": True}))

    async def GetServerMetadata(
        self, request: rest.GetServerMetadataRequest, context: Context
    ) -> rest.GetServerMetadataResponse:
        document = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}
        return rest.GetServerMetadataResponse(body=_json(document))

    async def GetModelMetadata(
        self, request: rest.GetModelMetadataRequest, context: Context
    ) -> rest.GetModelMetadataResponse:
        found = await self._slot.get().open_inference.model_metadata(
            request.model_name, request.model_version
        )
        return rest.GetModelMetadataResponse(body=_json(oip_rest.metadata_document(found)))

    async def GetModelReady(
        self, request: rest.GetModelReadyRequest, context: Context
    ) -> rest.GetModelReadyResponse:
        ready = await self._slot.get().open_inference.model_ready(request.model_name, request.model_version)
        if not ready:
            raise _not_ready(f"model {request.model_name!r}")
        return rest.GetModelReadyResponse(body=_json({"name": request.model_name, "ready": True}))

    async def InferModel(self, request: rest.InferModelRequest, context: Context) -> rest.InferModelResponse:
        c = self._slot.get()
        off_loop = c.settings.oip_rest_off_loop_bytes
        parsed = await self._maybe_off_loop(
            len(request.body.data) > off_loop,
            oip_rest.infer_request,
            request.body.data,
            _header(context, oip_rest.HEADER_LENGTH),
            request.model_name,
            request.model_version,
        )
        answer: oip.ModelInferResponse = await c.open_inference.infer(
            identity.tenant(), parsed.request, Edge.of(context.invocation_metadata())
        )
        written = await self._maybe_off_loop(
            answer.ByteSize() > off_loop, oip_rest.infer_answer, answer, parsed
        )
        if written.header_length is not None:
            await context.send_initial_metadata(((oip_rest.HEADER_LENGTH, str(written.header_length)),))
        return rest.InferModelResponse(
            body=httpbody_pb2.HttpBody(content_type=written.content_type, data=written.body)
        )

    async def _maybe_off_loop(
        self, large: bool, work: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """``work`` on a worker thread when ``large``, else here: a big JSON body's parse and
        conversion would hold the event loop, and every other caller of this gateway, for seconds;
        a small one is quicker done than handed to a thread."""
        if not large:
            return work(*args, **kwargs)

        def apart() -> _T | FerryError:
            # A refusal is returned, not raised, across the thread: raised, it would carry the
            # worker's frames, and in them the parsed body (2.7 million strings of a 15 MiB body
            # are about 230 MB), into the futures that hand it to the event loop. Those form
            # cycles with frames old enough that only a full collection frees them, rarely: the
            # upload lane grew by that much a body (73 MB to 1.3 GB over six; docs/benchmarks.md,
            # session 12). After a refusal a full collection frees what such cycles still hold
            # (a refusal of a large body is rare, and the collection costs milliseconds); a body
            # that is served leaves none.
            try:
                return work(*args, **kwargs)
            except FerryError as err:
                err.__traceback__ = None
                refused = err
            gc.collect()
            return refused

        async with self._large:
            outcome = await asyncio.to_thread(apart)
        if isinstance(outcome, FerryError):
            raise outcome
        return outcome

    async def RepositoryIndex(
        self, request: rest.RepositoryIndexRequest, context: Context
    ) -> rest.RepositoryIndexResponse:
        document = oip_rest.optional_object(request.body.data)
        ready = document.get("ready", False) is True
        entries = [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in await index(self._slot.get().models, ready)
        ]
        return rest.RepositoryIndexResponse(body=_json(entries))

    async def RepositoryModelLoad(
        self, request: rest.RepositoryModelLoadRequest, context: Context
    ) -> rest.RepositoryModelLoadResponse:
        oip_rest.optional_object(request.body.data)
        await self._slot.get().models.load(request.model_name, field="model_name")
        return rest.RepositoryModelLoadResponse(body=_json({}))

    async def RepositoryModelUnload(
        self, request: rest.RepositoryModelUnloadRequest, context: Context
    ) -> rest.RepositoryModelUnloadResponse:
        oip_rest.optional_object(request.body.data)
        await self._slot.get().models.unload(request.model_name, field="model_name")
        return rest.RepositoryModelUnloadResponse(body=_json({}))
