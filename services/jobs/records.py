"""What a job item leaves behind: its prediction record and, when it failed, a dead letter.

Both are published with deterministic ids (the job id, the item index and the item's retry
generation), so a redelivery republishes the same ids and JetStream drops the copies.
"""

from __future__ import annotations

import uuid

from google.rpc import status_pb2
from nats.js import JetStreamContext

from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from services.common import messaging
from services.common.answers import copy_answer
from services.common.errors import error_from_status
from services.common.ids import item_record_id
from services.common.tracing import current_trace_id
from services.jobs.predictor import Outcome


def record_id(job_id: uuid.UUID, item_index: int) -> str:
    """The record id of item ``item_index`` of ``job_id`` (its Nats-Msg-Id in generation 0)."""
    return str(item_record_id(job_id, item_index))


def prediction_record(
    item: events_pb2.JobItem, job_id: uuid.UUID, outcome: Outcome
) -> prediction_pb2.Prediction:
    """Builds the Prediction of ``item``: SUCCEEDED with the model's answer (classes, embedding, JSON
    output, tensors) and timing, or FAILED with the error.

    Call it inside the item's span: the record carries the current trace id.
    """
    prediction = prediction_pb2.Prediction(
        name=f"predictions/{record_id(job_id, item.item_index)}",
        model=f"models/{item.model}",
        job=f"jobs/{job_id}",
        item_index=item.item_index,
        trace_id=current_trace_id(),
        input_name=item.input_name,  # which photo or line: the job's results name it
    )
    if outcome.error is None and outcome.result is not None:
        prediction.state = prediction_pb2.PREDICTION_STATE_SUCCEEDED
        copy_answer(prediction, outcome.result)
    else:
        prediction.state = prediction_pb2.PREDICTION_STATE_FAILED
        if outcome.error is not None:
            prediction.error.CopyFrom(outcome.error)
    prediction.create_time.GetCurrentTime()
    return prediction


async def publish_record(
    js: JetStreamContext, item: events_pb2.JobItem, job_id: uuid.UUID, outcome: Outcome, timeout_s: float
) -> None:
    """Publishes the item's PredictionRecorded and waits until FERRY_EVENTS stored it.

    The Nats-Msg-Id carries the generation: a re-queued item (RetryJob) must not be dropped as
    a duplicate of its first run's record, while every redelivery within one run must be.
    """
    event = events_pb2.PredictionRecorded(
        tenant=item.tenant,
        prediction=prediction_record(item, job_id, outcome),
        generation=item.generation,
    )
    msg_id = messaging.with_generation(record_id(job_id, item.item_index), item.generation)
    await messaging.publish(js, messaging.PREDICTIONS_SUBJECT, event, msg_id=msg_id, timeout_s=timeout_s)


async def publish_dead_letter(
    js: JetStreamContext,
    item: events_pb2.JobItem,
    job_id: uuid.UUID,
    error: status_pb2.Status,
    timeout_s: float,
) -> None:
    """Keeps a failed item, input included, on its dead-letter subject for RetryJob to re-queue."""
    reason = error_from_status(error).reason
    await messaging.publish(
        js,
        messaging.dead_letter_subject(str(job_id), item.item_index),
        item,
        msg_id=messaging.with_generation(f"{job_id}:{item.item_index}:dead", item.generation),
        timeout_s=timeout_s,
        headers={messaging.DEAD_LETTER_REASON_HEADER: reason},
    )
