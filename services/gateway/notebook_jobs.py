"""CreateJob with a notebook: record the job (its items are the notebook's code cells), queue it whole.

The jobs runner's notebook worker (services/jobs/notebooks.py) executes it with papermill and
records each code cell as an item; GetJobNotebook returns the executed notebook it stored.
"""

from __future__ import annotations

from collections.abc import Callable

from google.api import httpbody_pb2

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.store.v1 import store_service_pb2, store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.ids import job_id_for_request
from services.common.notebooks import (
    MODEL_PREFIX,
    code_cell_count,
    executed_notebook_name,
    model_of,
)
from services.common.result_stores import ResultStore
from services.common.tracing import current_trace_id
from services.gateway import validation
from services.gateway.downstream import Backend, publishing
from services.gateway.idempotency import Edge, new_id
from services.gateway.publisher import Publisher
from services.gateway.records import Records
from services.gateway.settings import GatewaySettings

#: Content type of an executed notebook over REST.
IPYNB = "application/x-ipynb+json"


def _refuse_model_fields(request: job_service_pb2.CreateJobRequest) -> None:
    for field, given in (("model", request.model), ("inputs", len(request.inputs)), ("top_k", request.top_k)):
        if given:
            raise InvalidArgument(
                f"{field} is set, but a notebook job runs the notebook {request.notebook!r}, not a model;"
                f" leave {field} empty (the notebook's parameters go in parameters)",
                reason="INVALID_NOTEBOOK_JOB",
                metadata={"field": field},
            )


async def create(
    settings: GatewaySettings,
    backend: Backend,
    store: store_service_pb2_grpc.StoreServiceStub,
    publisher: Publisher,
    tenant: str,
    request: job_service_pb2.CreateJobRequest,
    edge: Edge | None,
    same_request: Callable[[job_pb2.Job, job_pb2.Job], None],
) -> job_pb2.Job:
    """Validates, records and queues a notebook job; a repeated ``request_id`` returns the same job.

    Args:
        same_request: refuses a ``request_id`` reused for a different job (job_manager's check).

    Raises:
        FerryError: an unknown notebook, model fields set, or store or JetStream unavailable.
    """
    _refuse_model_fields(request)
    validation.notebook_parameters(request.parameters)
    cells = code_cell_count(settings.notebook_path(request.notebook))
    if cells < 1:
        raise InvalidArgument(
            f"notebook {request.notebook!r} has no code cell to run",
            reason="INVALID_NOTEBOOK_JOB",
            metadata={"field": "notebook"},
        )
    request_id = validation.request_id(request.request_id)
    priority = types_pb2.Priority.Name(
        validation.enum_value(request.priority, types_pb2.Priority, "priority") or types_pb2.PRIORITY_NORMAL
    )
    model = model_of(request.notebook)
    job_id = job_id_for_request(tenant, request_id) if request_id else new_id("job", tenant, edge)
    wanted = job_pb2.Job(
        name=f"jobs/{job_id}",
        model=validation.model_name(model),
        state=job_pb2.JOB_STATE_QUEUED,
        items_total=cells,
        top_k=0,
        request_id=request_id,
        trace_id=current_trace_id(),
        priority=priority,
    )
    answer: store_service_pb2.CreateJobResponse = await backend.call(
        store.CreateJob, store_service_pb2.CreateJobRequest(tenant=tenant, job=wanted)
    )
    job = answer.job
    if not answer.created:
        same_request(job, wanted)
    item = events_pb2.JobItem(
        tenant=tenant,
        job_id=str(job_id),
        item_index=0,
        model=model,
        priority=priority,
        input=types_pb2.Input(payload=request.parameters),
    )
    what = f"notebook job jobs/{job_id} was recorded but could not be queued; retry with the same request_id"
    async with publishing(what):  # the same msg id again for a retry: JetStream drops the copy
        await publisher.publish(settings.notebook_subject, item, f"{job_id}:notebook")
    return job


async def executed_notebook(
    records: Records, results: ResultStore, tenant: str, name: str
) -> job_service_pb2.GetJobNotebookResponse:
    """The executed notebook of the finished notebook job ``name``.

    Raises:
        FerryError: unknown job, a model job (NOT_A_NOTEBOOK_JOB), or one not finished yet.
    """
    job = await records.get_job(tenant, name)
    if not job.model.removeprefix("models/").startswith(MODEL_PREFIX):
        raise FailedPrecondition(
            f"{job.name} runs {job.model}, not a notebook; its results are at GET /v1/{job.name}/results",
            reason="NOT_A_NOTEBOOK_JOB",
            metadata={"name": job.name},
        )
    try:
        notebook = await results.get(executed_notebook_name(job.name.removeprefix("jobs/")))
    except KeyError:
        raise FailedPrecondition(
            f"{job.name} has not finished its notebook yet ({job_pb2.JobState.Name(job.state)}); "
            "watch it (GET /v1/{name}:watch) and ask again",
            reason="JOB_NOT_FINISHED",
            metadata={"name": job.name},
        ) from None
    return job_service_pb2.GetJobNotebookResponse(
        notebook=httpbody_pb2.HttpBody(content_type=IPYNB, data=notebook)
    )
