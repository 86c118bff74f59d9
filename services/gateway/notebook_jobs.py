"""CreateJob with a notebook: the gateway's checks before the job queue records and queues it.

The job queue (services/jobs/submission.py) finds the registered notebook, records the job (its
items are the notebook's code cells) and queues it whole as a ``NotebookRun``; the jobs runner's
notebook worker (services/jobs/notebooks.py) executes it with papermill and records each code
cell as an item; GetJobNotebook returns the executed notebook it stored.
"""

from __future__ import annotations

from google.api import httpbody_pb2

from ferry.events.v1 import events_pb2
from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.types.v1 import types_pb2
from services.common import validation
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.ids import job_id_for_request
from services.common.notebooks import MODEL_PREFIX, executed_notebook_name
from services.common.result_stores import ResultStore
from services.common.tracing import current_trace_id
from services.gateway.idempotency import Edge, new_id
from services.gateway.records import Records

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


def checked(
    tenant: str, request: job_service_pb2.CreateJobRequest, edge: Edge | None
) -> tuple[job_pb2.Job, events_pb2.NotebookRun]:
    """Checks a notebook job's request: the job to record (its id from the tenant and request_id)
    and the run to queue. The job queue finds the notebook and counts its cells.

    Raises:
        InvalidArgument: model fields set, parameters too large or deep, a bad request_id or priority.
    """
    _refuse_model_fields(request)
    parameters = validation.notebook_parameters(request.parameters)
    request_id = validation.request_id(request.request_id)
    priority = types_pb2.Priority.Name(
        validation.enum_value(request.priority, types_pb2.Priority, "priority") or types_pb2.PRIORITY_NORMAL
    )
    job_id = job_id_for_request(tenant, request_id) if request_id else new_id("job", tenant, edge)
    job = job_pb2.Job(
        name=f"jobs/{job_id}", request_id=request_id, trace_id=current_trace_id(), priority=priority
    )
    return job, events_pb2.NotebookRun(notebook=request.notebook, parameters=parameters)


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
            f"watch it (GET /v1/{job.name}:watch, `ferry watch {job.name}`) and ask again",
            reason="JOB_NOT_FINISHED",
            metadata={"name": job.name},
        ) from None
    return job_service_pb2.GetJobNotebookResponse(
        notebook=httpbody_pb2.HttpBody(content_type=IPYNB, data=notebook)
    )
