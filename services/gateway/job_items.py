"""ListJobItems: a job's records in item order, failed ones with their dead letters.

The records come from store (its job listing pages by item index); whether a failed item is
dead-lettered is read from ``FERRY_DEAD`` itself, one lookup per failed item on the page, so the
answer says what RetryJob will actually find, not what it should.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from ferry.jobs.v1 import job_service_pb2
from ferry.predictions.v1 import prediction_pb2, prediction_service_pb2
from services.common import messaging, validation
from services.gateway.records import Records

# Dead-letter lookups of one page at a time: bounded, so a page of 1,000 failures stays polite.
_LOOKUPS_AT_ONCE = 32


async def list_job_items(
    records: Records, js: JetStreamContext, tenant: str, request: job_service_pb2.ListJobItemsRequest
) -> job_service_pb2.ListJobItemsResponse:
    """A page of the job ``request.parent``'s recorded items, optionally of one state.

    Raises:
        FerryError: a bad name, state or page token, an unknown job (NOT_FOUND), or store down.
    """
    validation.enum_value(request.state, prediction_pb2.PredictionState, "state")
    await records.get_job(tenant, request.parent)  # NOT_FOUND for a job that is not the caller's
    page = await records.list_predictions(
        tenant,
        prediction_service_pb2.ListPredictionsRequest(
            job=request.parent,
            state=request.state,
            page_size=request.page_size,
            page_token=request.page_token,
        ),
    )
    slots = asyncio.Semaphore(_LOOKUPS_AT_ONCE)

    async def item(prediction: prediction_pb2.Prediction) -> job_service_pb2.JobItem:
        found = job_service_pb2.JobItem(index=prediction.item_index, prediction=prediction)
        if prediction.state == prediction_pb2.PREDICTION_STATE_FAILED:
            async with slots:
                reason = await dead_letter_reason(js, request.parent, prediction.item_index)
            found.dead_lettered = reason is not None
            found.dead_letter_reason = reason or ""
        return found

    items = await asyncio.gather(*(item(p) for p in page.predictions))
    return job_service_pb2.ListJobItemsResponse(items=items, next_page_token=page.next_page_token)


async def dead_letter_reason(js: JetStreamContext, job: str, index: int) -> str | None:
    """The reason kept with item ``index``'s dead letter, or None when it has none (expired)."""
    subject = messaging.dead_letter_subject(job.removeprefix("jobs/"), index)
    try:
        msg = await js.get_last_msg(messaging.DEAD_STREAM, subject)
    except NotFoundError:
        return None
    reason: str = (msg.headers or {}).get(messaging.DEAD_LETTER_REASON_HEADER, "")
    return reason
