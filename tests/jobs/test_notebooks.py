"""Run-notebook jobs on real NATS and Postgres: gateway's CreateJob path records and queues the job,
the runner's notebook worker executes notebooks/report.ipynb with papermill, store's ingest counts
the cells, and the executed notebook comes back from the result store (GetJobNotebook's path).

Only Envoy and the gRPC servicer layer are left out (a handler that calls ``JobManager.notebook``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from nats.js import JetStreamContext

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from services.common import messaging
from services.common.errors import FerryError
from services.common.readiness import Readiness
from services.common.result_stores import NatsResults
from services.common.tasks import spawn
from services.gateway import notebook_jobs
from services.gateway.downstream import Backend
from services.gateway.job_manager import FINISHED, _check_same_request
from services.gateway.publisher import Publisher
from services.gateway.records import Records
from services.gateway.settings import GatewaySettings
from services.jobs.cancellation import CancelledJobs
from services.jobs.notebooks import NotebookRunner
from services.jobs.settings import JobsSettings
from services.store.servicer import StoreServicer
from tests.store.conftest import database_url, js, pool, running_ingestor, serving  # noqa: F401
from tests.store.records import eventually

TENANT = f"notebooks-{uuid.uuid4().hex[:6]}"


class Stack:
    """Gateway's side (settings, store backend, publisher) and a running notebook worker."""

    def __init__(
        self, gateway: GatewaySettings, backend: Backend, store: Any, jetstream: JetStreamContext
    ) -> None:
        self.gateway = gateway
        self.backend = backend
        self.store = store
        self.js = jetstream

    async def create(self, **parameters: Any) -> job_pb2.Job:
        request = job_service_pb2.CreateJobRequest(notebook="report")
        request.parameters.update(parameters)
        publisher = Publisher(self.js, 5.0)
        return await notebook_jobs.create(
            self.gateway, self.backend, self.store, publisher, TENANT, request, None, _check_same_request
        )

    async def finished(self, job: job_pb2.Job) -> job_pb2.Job:
        records = Records(self.store, self.backend)
        found = await eventually(lambda: records.get_job(TENANT, job.name), lambda j: j.state in FINISHED)
        assert found.state in FINISHED, found
        return found

    async def executed(self, job: job_pb2.Job) -> dict[str, Any]:
        records = Records(self.store, self.backend)
        answer = await notebook_jobs.executed_notebook(records, NatsResults(self.js), TENANT, job.name)
        assert answer.notebook.content_type == notebook_jobs.IPYNB
        document: dict[str, Any] = json.loads(answer.notebook.data)
        return document


@pytest_asyncio.fixture(scope="module")
async def stack(js: JetStreamContext, pool: asyncpg.Pool) -> AsyncIterator[Stack]:  # noqa: F811
    tag = uuid.uuid4().hex[:10]
    subject = messaging.job_items_subject(f"nbtest{tag}")
    servicer = StoreServicer()
    servicer.bind(pool)
    runner_settings = JobsSettings(
        notebook_subject=subject, notebook_consumer=f"nbtest-{tag}", metrics_port=0, cancel_cache_s=0.0
    )
    async with AsyncExitStack() as exits:
        channel = await exits.enter_async_context(
            serving(lambda s: store_service_pb2_grpc.add_StoreServiceServicer_to_server(servicer, s))
        )
        await exits.enter_async_context(running_ingestor(js, pool))
        cancelled = CancelledJobs(await messaging.open_cancelled_bucket(js), 0.0)
        runner = NotebookRunner(js, cancelled, NatsResults(js), runner_settings, Readiness.started("jobs"))
        await runner.subscribe()
        spawn(exits, runner.run(), "notebook-runner")
        exits.push_async_callback(
            js.delete_consumer, messaging.WORK_STREAM, runner_settings.notebook_consumer
        )
        gateway = GatewaySettings(notebook_subject=subject)
        yield Stack(
            gateway, Backend("store", channel, 10.0), store_service_pb2_grpc.StoreServiceStub(channel), js
        )


def outputs_text(document: dict[str, Any]) -> str:
    """Every stream output and error of every code cell, joined."""
    parts: list[str] = []
    for cell in document["cells"]:
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            parts.append("".join(text) if isinstance(text, list) else text)
            if output.get("output_type") == "error":
                parts.append(f"{output['ename']}: {output['evalue']}")
    return "\n".join(parts)


async def test_a_notebook_job_runs_with_its_parameters_and_keeps_the_executed_notebook(stack: Stack) -> None:
    job = await stack.create(count=4, text="ferry")
    assert (job.model, job.items_total, job.state) == ("models/notebook:report", 4, job_pb2.JOB_STATE_QUEUED)

    done = await stack.finished(job)

    assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done
    assert (done.items_succeeded, done.items_failed) == (4, 0)
    executed = outputs_text(await stack.executed(job))
    assert "4 words: ferry-0, ferry-1, ferry-2, ferry-3; sum of squares 14" in executed


async def test_a_failing_cell_fails_the_job_with_the_cells_error(stack: Stack) -> None:
    job = await stack.create(count=-2)

    done = await stack.finished(job)

    assert done.state == job_pb2.JOB_STATE_FAILED, done
    # The parameters cell ran; the check in code cell 1 raised, so it and the cells after it failed.
    assert (done.items_succeeded, done.items_failed) == (1, 3)
    assert "code cell 1 raised ValueError: count must be at least 0, got -2" in done.error.message
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in done.error.details)
    assert info.metadata["last_reason"] == "NOTEBOOK_CELL_FAILED"
    executed = outputs_text(await stack.executed(job))
    assert "ValueError: count must be at least 0, got -2" in executed


async def test_an_unknown_notebook_is_refused_and_a_model_job_has_no_notebook(stack: Stack) -> None:
    request = job_service_pb2.CreateJobRequest(notebook="nope")
    with pytest.raises(FerryError) as refused:
        await notebook_jobs.create(
            stack.gateway,
            stack.backend,
            stack.store,
            Publisher(stack.js, 5.0),
            TENANT,
            request,
            None,
            _check_same_request,
        )
    assert refused.value.reason == "NOTEBOOK_NOT_FOUND"
    answer = await stack.store.CreateJob(
        store_service_pb2.CreateJobRequest(
            tenant=TENANT,
            job=job_pb2.Job(
                name=f"jobs/{uuid.uuid4()}", model="models/efficientnet-lite0", items_total=1, top_k=5
            ),
        )
    )
    with pytest.raises(FerryError) as wrong:
        await stack.executed(answer.job)
    assert wrong.value.reason == "NOT_A_NOTEBOOK_JOB"
