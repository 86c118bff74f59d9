"""The prediction record of one job item: deterministic id, so a redelivery rewrites nothing."""

from __future__ import annotations

import uuid

from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from services.common.ids import item_record_id
from services.common.tracing import current_trace_id
from services.jobs.predictor import Outcome


def record_id(job_id: uuid.UUID, item_index: int) -> str:
    """The record id of item ``item_index`` of ``job_id``; also its Nats-Msg-Id."""
    return str(item_record_id(job_id, item_index))


def prediction_record(
    item: events_pb2.JobItem, job_id: uuid.UUID, outcome: Outcome
) -> prediction_pb2.Prediction:
    """Builds the Prediction of ``item``: SUCCEEDED with classes and timing, or FAILED with the error.

    Call it inside the item's span: the record carries the current trace id.
    """
    prediction = prediction_pb2.Prediction(
        name=f"predictions/{record_id(job_id, item.item_index)}",
        model=f"models/{item.model}",
        job=f"jobs/{job_id}",
        item_index=item.item_index,
        trace_id=current_trace_id(),
    )
    if outcome.error is None and outcome.result is not None:
        prediction.state = prediction_pb2.PREDICTION_STATE_SUCCEEDED
        prediction.classes.extend(outcome.result.classes)
        prediction.timing.CopyFrom(outcome.result.timing)
    else:
        prediction.state = prediction_pb2.PREDICTION_STATE_FAILED
        if outcome.error is not None:
            prediction.error.CopyFrom(outcome.error)
    prediction.create_time.GetCurrentTime()
    return prediction
