"""Run-notebook jobs on real NATS and Postgres: gateway's checks, then the job queue records and
queues the job as a NotebookRun, the runner's notebook worker executes notebooks/report.ipynb with
papermill, store's ingest counts the cells, and the executed notebook comes back from the result
store (GetJobNotebook's path).

Only Envoy and the gRPC servicer layers are left out (tests/e2e/test_notebook_jobs.py has them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from nats.js import JetStreamContext

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common import messaging
from services.common.downstream import Backend
from services.common.errors import FerryError
from services.common.job_states import FINISHED
from services.common.notebooks import parameters_of
from services.common.publisher import Publisher
from services.common.readiness import Readiness
from services.common.result_stores import NatsResults
from services.common.tasks import spawn
from services.gateway import notebook_jobs
from services.gateway.records import Records
from services.jobs.cancellation import CancelledJobs
from services.jobs.notebook_execution import execute
from services.jobs.notebooks import NotebookRunner, notebook_run_of
from services.jobs.settings import JobsSettings
from services.jobs.submission import JobQueue
from services.store.servicer import StoreServicer
from tests.store.conftest import database_url, js, pool, running_ingestor, serving  # noqa: F401
from tests.store.records import eventually

TENANT = f"notebooks-{uuid.uuid4().hex[:6]}"


class Stack:
    """The job queue (store backend, publisher) and a running notebook worker."""

    def __init__(self, queue: JobQueue, backend: Backend, store: Any, jetstream: JetStreamContext) -> None:
        self.queue = queue
        self.backend = backend
        self.store = store
        self.js = jetstream

    async def create(self, notebook: str = "report", **parameters: Any) -> job_pb2.Job:
        request = job_service_pb2.CreateJobRequest(notebook=notebook)
        request.parameters.update(parameters)
        job, run = notebook_jobs.checked(TENANT, request, None)  # the gateway's side
        return await self.queue.submit_notebook(TENANT, job, run)

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
        bucket = await messaging.open_cancelled_bucket(js)
        cancelled = CancelledJobs(bucket, 0.0)
        runner = NotebookRunner(js, cancelled, NatsResults(js), runner_settings, Readiness.started("jobs"))
        await runner.subscribe()
        spawn(exits, runner.run(), "notebook-runner")
        exits.push_async_callback(
            js.delete_consumer, messaging.WORK_STREAM, runner_settings.notebook_consumer
        )
        backend = Backend("store", channel, 10.0)
        store = store_service_pb2_grpc.StoreServiceStub(channel)
        queue = JobQueue(runner_settings, store, backend, js, Publisher(js, 5.0), bucket)
        yield Stack(queue, backend, store, js)


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
    with pytest.raises(FerryError) as refused:
        await stack.create("nope")
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


async def test_a_notebook_not_run_yet_is_refused_naming_how_to_watch_its_job(stack: Stack) -> None:
    job = job_pb2.Job(name=f"jobs/{uuid.uuid4()}", model="models/notebook:report", items_total=1, top_k=5)
    answer = await stack.store.CreateJob(store_service_pb2.CreateJobRequest(tenant=TENANT, job=job))
    with pytest.raises(FerryError) as early:
        await stack.executed(answer.job)
    assert early.value.reason == "JOB_NOT_FINISHED"
    # The job's own name, not the placeholder "GET /v1/{name}:watch" it said.
    assert f"GET /v1/{job.name}:watch" in early.value.message, early.value.message


async def test_a_notebook_job_is_queued_as_a_notebook_run_not_as_a_model(stack: Stack) -> None:
    # A queue whose notebook subject no worker reads, so the work message stays to be looked at.
    subject = messaging.job_items_subject(f"nbidle{uuid.uuid4().hex[:10]}")
    settings = JobsSettings(notebook_subject=subject, metrics_port=0)
    bucket = await messaging.open_cancelled_bucket(stack.js)
    queue = JobQueue(settings, stack.store, stack.backend, stack.js, Publisher(stack.js, 5.0), bucket)
    request = job_service_pb2.CreateJobRequest(notebook="report", request_id=uuid.uuid4().hex)
    request.parameters.update({"count": 2, "text": "kind"})
    job, run = notebook_jobs.checked(TENANT, request, None)

    first = await queue.submit_notebook(TENANT, job, run)
    again = await queue.submit_notebook(TENANT, job, run)  # a retry: the same job, queued once

    assert first.name == again.name == job.name
    assert (first.model, first.items_total) == ("models/notebook:report", 4)  # what users see
    stored = await stack.js.get_last_msg(messaging.WORK_STREAM, subject)
    item = events_pb2.JobItem.FromString(stored.data or b"")
    assert (item.notebook_run.notebook, item.model, item.HasField("input")) == ("report", "", False)
    assert parameters_of(item.notebook_run.parameters) == {"count": 2, "text": "kind"}
    assert (stored.headers or {})["Nats-Msg-Id"] == f"{job.name.removeprefix('jobs/')}:notebook"
    info = await stack.js.stream_info(messaging.WORK_STREAM, subjects_filter=subject)
    assert info.state.subjects == {subject: 1}
    await stack.js.purge_stream(messaging.WORK_STREAM, subject=subject)


def test_a_work_message_queued_before_notebook_runs_still_names_its_notebook() -> None:
    old = events_pb2.JobItem(model="notebook:report", input=types_pb2.Input(payload={"count": 1}))
    assert notebook_run_of(old) == events_pb2.NotebookRun(notebook="report", parameters={"count": 1})
    new = events_pb2.JobItem(notebook_run=events_pb2.NotebookRun(notebook="report"))
    assert notebook_run_of(new).notebook == "report"


#: Parameter names papermill would write into the notebook as code: an injection, keywords, not names.
_NOT_PYTHON_NAMES = ['x = 1\nopen("{marker}", "w").write("ran")\ny', "class", "None", "a b", "1a", "", "a\0"]


@pytest.mark.parametrize("name", _NOT_PYTHON_NAMES)
def test_a_parameter_name_not_a_python_name_is_refused_and_never_runs(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    name = name.replace("{marker}", str(marker))
    request = job_service_pb2.CreateJobRequest(notebook="report")
    request.parameters.update({"count": 1, name: 1})
    with pytest.raises(FerryError) as refused:
        notebook_jobs.checked(TENANT, request, None)  # the gateway's side
    assert (refused.value.reason, refused.value.metadata["field"]) == ("INVALID_NOTEBOOK_JOB", "parameters")
    # The runner's side, for a work message that got past it: the notebook never starts.
    run = execute(JobsSettings(metrics_port=0).notebook_path("report"), {name: 1}, 30.0, lambda cell: None)
    assert run.failure is not None and run.failure.ename == "InvalidParameterName", run
    assert (run.cells_done, marker.exists()) == (0, False)
