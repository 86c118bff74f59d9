"""The notebook worker: runs notebook jobs (items with a ``notebook_run``) one at a time with papermill.

A notebook job is one work message on its own subject (``notebook_subject``), queued by the job
queue (``submission.JobQueue.submit_notebook``), so it never waits
behind, or holds up, model items. Its items are the notebook's code cells: each cell that
finishes is recorded SUCCEEDED as it finishes (the job's progress), and when a cell fails, that
cell and every one after it are recorded FAILED with the cell's error (NOTEBOOK_CELL_FAILED),
which store counts as a failed job. The executed notebook is stored in the result store first,
so a job that reads as finished always has it (``GetJobNotebook``). The message is acked last:
a runner that dies mid-notebook leaves it to another, which runs the notebook again and records
under the same ids (JetStream and store drop the copies).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

import grpc
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from ferry.events.v1 import events_pb2
from ferry.inference.v1 import inference_service_pb2
from services.common import messaging
from services.common.errors import FerryError, NotFound
from services.common.notebooks import (
    MODEL_PREFIX,
    code_cell_count,
    executed_notebook_name,
    model_of,
    parameters_of,
)
from services.common.readiness import Readiness
from services.common.result_stores import ResultStore
from services.jobs.cancellation import CancelledJobs
from services.jobs.heartbeat import Heartbeat
from services.jobs.notebook_execution import CellFailure, Execution, execute
from services.jobs.predictor import Outcome
from services.jobs.records import publish_record
from services.jobs.runner import decode_item
from services.jobs.settings import JobsSettings

log = logging.getLogger(__name__)

# A runner without the notebook a job names waits this long before another try (a config fix).
_MISSING_NOTEBOOK_RETRY_S = 30.0
_CELL_DONE = Outcome(result=inference_service_pb2.PredictResult())


def cell_error(failure: CellFailure, notebook: str) -> FerryError:
    """The error every item from the failed cell on carries (and so the job's error)."""
    error = FerryError(
        f"notebook {notebook!r}: {failure.describe()}; the executed notebook (GET /v1/jobs/<id>/notebook)"
        " shows the traceback",
        "NOTEBOOK_CELL_FAILED",
        {"cell_index": str(failure.cell), "ename": failure.ename, "evalue": failure.evalue[:1000]},
    )
    error.code = grpc.StatusCode.ABORTED
    return error


class NotebookRunner:
    """Takes notebook jobs from their durable consumer and runs them until cancelled.

    Args:
        js: JetStream.
        cancelled: tells which jobs were cancelled (their notebooks are not started).
        results: where executed notebooks are kept.
        settings: the runner's settings (registry, subject, consumer, cell timeout).
        readiness: the service's readiness; while not serving, no new notebook is taken.
    """

    def __init__(
        self,
        js: JetStreamContext,
        cancelled: CancelledJobs,
        results: ResultStore,
        settings: JobsSettings,
        readiness: Readiness,
    ) -> None:
        self._js = js
        self._cancelled = cancelled
        self._results = results
        self._s = settings
        self._heartbeat = Heartbeat(settings.ack_wait_s)
        config = ConsumerConfig(
            durable_name=settings.notebook_consumer,
            description="Ferry jobs runner: notebook jobs -> papermill -> cell records",
            filter_subject=settings.notebook_subject,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=-1,
        )
        self._consumer = messaging.PullConsumer(js, messaging.WORK_STREAM, config, "notebook jobs", readiness)

    async def subscribe(self) -> None:
        """Creates (or updates) the durable consumer and subscribes to it."""
        await self._consumer.subscribe()

    async def run(self) -> None:
        """Runs notebook jobs one at a time until cancelled; one cut short is handed back."""
        await self._consumer.take_each(self._take, self._s.fetch_timeout_s, beside=self._heartbeat.run)

    async def _take(self, msg: Msg) -> None:
        try:
            item, job_id = decode_item(msg.data)
        except ValueError as err:
            log.warning("terminating malformed notebook job message: %s", err)
            with contextlib.suppress(NatsError):
                await msg.term()
            return
        if await self._cancelled.is_cancelled(job_id):
            await msg.ack()
            return
        run = notebook_run_of(item)
        name = run.notebook
        try:
            path = self._s.notebook_path(name)
            cells = code_cell_count(path)
        except NotFound as err:
            log.error("job %s: %s; trying again in %.0fs", job_id, err.message, _MISSING_NOTEBOOK_RETRY_S)
            await msg.nak(delay=_MISSING_NOTEBOOK_RETRY_S)
            return
        # Cut short (shutting down) or broken: handed back, another runner runs the notebook again.
        async with self._heartbeat.claimed(msg):
            await self._run(item, job_id, run, path, cells)
        await msg.ack()

    async def _run(
        self,
        work: events_pb2.JobItem,
        job_id: uuid.UUID,
        notebook: events_pb2.NotebookRun,
        path: Path,
        cells: int,
    ) -> None:
        """Executes the notebook, stores it, then records the cells not yet recorded."""
        loop = asyncio.get_running_loop()
        name = notebook.notebook
        parameters = parameters_of(notebook.parameters)
        # The cells' records name the notebook as their model, as the job does ("models/notebook:report").
        item = events_pb2.JobItem(
            tenant=work.tenant,
            job_id=work.job_id,
            model=model_of(name),
            generation=work.generation,
            priority=work.priority,
        )
        log.info("job %s: running notebook %s (%d code cells)", job_id, name, cells)

        def cell_done(cell: int) -> None:  # papermill's thread: record progress on the loop
            if cell == cells - 1:
                return  # the last record ends the job: it waits until the notebook is stored
            future = asyncio.run_coroutine_threadsafe(self._record(item, job_id, cell, _CELL_DONE), loop)
            try:
                future.result(timeout=self._s.publish_timeout_s * 2)
            except Exception:  # progress only: every cell is recorded again at the end
                log.warning("job %s: could not record cell %d yet", job_id, cell, exc_info=True)

        run: Execution = await asyncio.to_thread(
            execute, path, parameters, self._s.notebook_cell_timeout_s, cell_done
        )
        await self._results.put(executed_notebook_name(str(job_id)), run.notebook)
        for cell in range(min(run.cells_done, cells)):
            await self._record(item, job_id, cell, _CELL_DONE)
        if run.failure is not None:
            log.info("job %s: notebook %s failed: %s", job_id, name, run.failure.describe())
            failed = Outcome(error=cell_error(run.failure, name).to_status())
            for cell in range(run.cells_done, cells):
                await self._record(item, job_id, cell, failed)

    async def _record(self, item: events_pb2.JobItem, job_id: uuid.UUID, cell: int, outcome: Outcome) -> None:
        one = events_pb2.JobItem()
        one.CopyFrom(item)
        one.item_index = cell
        await publish_record(self._js, one, job_id, outcome, self._s.publish_timeout_s)


def notebook_run_of(item: events_pb2.JobItem) -> events_pb2.NotebookRun:
    """The notebook and parameters a notebook job's work message names.

    Messages queued before notebook runs became their own item kind named the notebook in
    ``model`` (``notebook:<name>``) and carried the parameters as the input's payload: they still
    run after an upgrade.
    """
    if item.HasField("notebook_run"):
        return item.notebook_run
    return events_pb2.NotebookRun(
        notebook=item.model.removeprefix(MODEL_PREFIX), parameters=item.input.payload
    )
