"""The gateway service: the public API on the shared runtime."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from contextlib import AsyncExitStack

import grpc

from ferry.admin.v1 import key_service_pb2, key_service_pb2_grpc
from ferry.inference.v1 import inference_service_pb2_grpc
from ferry.jobqueue.v1 import job_queue_service_pb2, job_queue_service_pb2_grpc
from ferry.jobs.v1 import job_service_pb2, job_service_pb2_grpc
from ferry.models.v1 import model_service_pb2, model_service_pb2_grpc
from ferry.oip.v2 import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from ferry.openinference.v1 import open_inference_rest_pb2, open_inference_rest_pb2_grpc
from ferry.predictions.v1 import prediction_service_pb2, prediction_service_pb2_grpc
from ferry.store.v1 import store_service_pb2_grpc
from services.common import messaging, time_slice
from services.common.channels import open_channel
from services.common.downstream import Backend
from services.common.interceptors import Prescan
from services.common.publisher import Publisher
from services.common.readiness import Readiness
from services.gateway import oip_wire
from services.gateway.auth import Authenticator
from services.gateway.catalog import followed_catalog
from services.gateway.components import Components, ComponentsSlot
from services.gateway.interceptors import AdmissionInterceptor
from services.gateway.job_manager import JobManager, JobQueueClient
from services.gateway.keys import KeyAdmin
from services.gateway.model_admin import ModelAdmin
from services.gateway.open_inference import OpenInference
from services.gateway.peers import LiveGateways
from services.gateway.predictor import Predictor
from services.gateway.readiness import wait_serving
from services.gateway.record_batches import RecordBatcher
from services.gateway.records import Records
from services.gateway.request_ids import RequestIds
from services.gateway.servicers import oip_repository
from services.gateway.servicers.jobs import JobServicer
from services.gateway.servicers.keys import KeyServicer
from services.gateway.servicers.models import ModelServicer
from services.gateway.servicers.oip_rest import OpenInferenceRestServicer
from services.gateway.servicers.open_inference import OpenInferenceServicer
from services.gateway.servicers.predictions import PredictionServicer
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

#: The jobs service's job queue: the health name its replicas are balanced by.
JOB_QUEUE_SERVICE = job_queue_service_pb2.DESCRIPTOR.services_by_name["JobQueueService"].full_name

SERVICE_NAMES = (
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name,
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    key_service_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name,
    open_inference_rest_pb2.DESCRIPTOR.services_by_name["OpenInferenceRestService"].full_name,
)
#: The Open Inference Protocol's native gRPC inference call, as gRPC names the method.
MODEL_INFER = f"/{SERVICE_NAMES[3]}/ModelInfer"
#: A job's results, streamed from its result file, as gRPC names the method.
GET_JOB_RESULTS = f"/{SERVICE_NAMES[2]}/GetJobResults"


class GatewayService:
    """Serves ModelService, PredictionService and JobService (see ``FerryService``)."""

    name = "gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._slot = ComponentsSlot()
        self._admission = AdmissionInterceptor(self._slot, self.settings)

    def service_names(self) -> Sequence[str]:
        """The public gRPC services."""
        return SERVICE_NAMES

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """Authentication, scopes and admission control, once for every public call."""
        return [self._admission]

    def request_checks(self) -> Mapping[str, Prescan]:
        """Requests refused before they are parsed: a native gRPC ModelInfer of millions of BYTES
        elements (``oip_wire``), which upb would take seconds and hundreds of MB to parse."""
        return {MODEL_INFER: oip_wire.too_many_bytes_elements}

    def serialized_responses(self) -> Collection[str]:
        """Methods whose handlers yield their responses already serialized: GetJobResults sends the
        messages of a job's result file as stored (``job_results``), unparsed."""
        return (GET_JOB_RESULTS,)

    def register(self, server: grpc.aio.Server) -> None:
        """Adds the three public servicers to ``server``."""
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self._slot), server)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self._slot), server
        )
        job_service_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(self._slot), server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            OpenInferenceServicer(self._slot), server
        )
        key_service_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(self._slot), server)
        open_inference_rest_pb2_grpc.add_OpenInferenceRestServiceServicer_to_server(
            OpenInferenceRestServicer(self._slot), server
        )
        oip_repository.add_to_server(self._slot, server)  # after the protocol's own methods

    async def start(self, stack: AsyncExitStack, readiness: Readiness) -> None:
        """Connects to inference, store, jobs and NATS; returns once inference and store are SERVING.

        Jobs is not waited for: only job writes need it, and they answer UNAVAILABLE until it serves.
        """
        s = self.settings
        if s.time_slice_us and not time_slice.shorten_process(os.getpid(), s.time_slice_us):
            log.warning("gateway: the kernel refused a %d us time slice: its own kept", s.time_slice_us)
        inference_channel = open_channel(s.inference_target, s.max_message_bytes)
        stack.push_async_callback(inference_channel.close)
        store_channel = open_channel(s.store_target, s.max_message_bytes)
        stack.push_async_callback(store_channel.close)
        # The queue's own health, not the jobs service's overall one: jobs can be submitted while
        # the runners wait for inference.
        jobs_channel = open_channel(s.jobs_target, s.max_message_bytes, health_service=JOB_QUEUE_SERVICE)
        stack.push_async_callback(jobs_channel.close)

        nc, js = await messaging.connect(s.nats_url, "ferry-gateway", stack)
        await messaging.ensure_streams(js, s.nats_stream_replicas, s.nats_duplicate_window_s)
        log.info("connected to NATS at %s (max payload %d bytes)", s.nats_url, nc.max_payload)
        limits = self._admission.limits
        gateways = LiveGateways(nc, announce=s.shares_rate_limits, on_suspect=limits.suspect)
        await gateways.start(stack)
        limits.gateways = gateways.count
        self._admission.streams.gateways = gateways.count
        self._admission.tell_suspect = gateways.tell_suspect

        await asyncio.gather(
            wait_serving(inference_channel, "inference", s.inference_target, s.startup_timeout_s),
            wait_serving(store_channel, "store", s.store_target, s.startup_timeout_s),
        )

        inference = inference_service_pb2_grpc.InferenceServiceStub(inference_channel)
        store = store_service_pb2_grpc.StoreServiceStub(store_channel)
        inference_backend = Backend(
            "inference", inference_channel, s.inference_timeout_s, own_unavailable=True
        )
        store_backend = Backend("store", store_channel, s.store_timeout_s)
        catalog = followed_catalog(
            stack,
            inference_channel,
            inference_backend,
            s.catalog_ttl_s,
            s.inference_target,
            s.max_message_bytes,
        )
        publisher = Publisher(js, s.publish_timeout_s)
        records = RecordBatcher(
            publisher, s.record_batch_max_records, nc.max_payload * 3 // 4, s.record_batches_in_flight
        )
        stack.push_async_callback(records.close)  # before the drain: closed first, drained after
        # Shared by every replica: a request_id claimed on one is seen by all (request_ids.py).
        request_ids = await RequestIds.open(
            js, s.request_id_ttl_s, s.nats_stream_replicas, s.publish_timeout_s
        )
        predictor = Predictor(s, inference, inference_backend, catalog, records, request_ids)
        queue = JobQueueClient(
            job_queue_service_pb2_grpc.JobQueueServiceStub(jobs_channel),
            Backend("jobs", jobs_channel, s.jobs_timeout_s, own_unavailable=True),
            s.max_message_bytes,
            Backend("jobs", jobs_channel, s.results_timeout_s, own_unavailable=True),
        )
        auth = Authenticator(store, store_backend, s.auth_cache_ttl_s, s.auth_stale_ttl_s)
        self._slot.fill(
            Components(
                auth=auth,
                catalog=catalog,
                predictor=predictor,
                jobs=JobManager(s, store, store_backend, catalog, nc, js, queue, request_ids),
                records=Records(store, store_backend),
                open_inference=OpenInference(s, catalog, predictor),
                keys=KeyAdmin(store, store_backend, auth),
                models=ModelAdmin(
                    inference,
                    Backend("inference", inference_channel, s.model_load_timeout_s, own_unavailable=True),
                    catalog,
                ),
                settings=s,
            )
        )
