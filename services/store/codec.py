"""Converts between Postgres rows and Ferry's protos, and encodes opaque page tokens."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg
import grpc
from asyncpg.pgproto.pgproto import UUID as _FastUUID
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from ferry.jobs.v1 import job_pb2
from ferry.models.v1 import model_stats_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import FerryError, InvalidArgument, code_from_number, error_from_status
from services.store.repositories.jobs import STALLED


class PredictionRow(NamedTuple):
    """One row of the predictions table, in column order (ingest writes them column-wise).

    A class is the i-th element of ``class_labels``, ``class_scores`` and ``class_indices``; a
    timing value the proto left at zero is None, as proto3 JSON leaves it out.
    """

    id: uuid.UUID
    tenant: str
    model: str
    job_id: uuid.UUID | None
    item_index: int | None
    state: int
    class_labels: list[str]
    class_scores: list[float]
    class_indices: list[int]
    decode_ms: float | None
    queue_ms: float | None
    inference_ms: float | None
    total_ms: float | None
    batch_size: int | None
    error: bytes | None
    error_code: int | None
    error_message: str | None
    error_reason: str | None
    trace_id: str
    create_time: datetime
    generation: int
    source: int
    outputs: str | None
    model_version: str | None
    input_name: str | None


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _uuid_of(name: str, collection: str) -> uuid.UUID:
    """The id in a resource name; ValueError when it is not a canonical UUID.

    asyncpg's UUID (a uuid.UUID, the type asyncpg reads uuid columns as) parses in C, about ten
    times faster than uuid.UUID: ingest parses one or two per record.
    """
    return _FastUUID(name.removeprefix(f"{collection}/"))


#: What stands for a NUL character (U+0000) in stored text: Postgres text and jsonb cannot hold
#: one, and refusing the row would lose a record a caller was answered for (and leave its job
#: unfinished). A candidate label, a manifest line's id or a JSON model's output can carry one.
NUL_STANDIN = "\ufffd"


def _nul_free(text: str) -> str:
    return text.replace("\x00", NUL_STANDIN) if "\x00" in text else text


def _nul_free_value(value: Any) -> Any:
    if isinstance(value, str):
        return _nul_free(value)
    if isinstance(value, list):
        return [_nul_free_value(v) for v in value]
    if isinstance(value, dict):
        return {_nul_free(k): _nul_free_value(v) for k, v in value.items()}
    return value


def _json(message: Message) -> str:
    value = json_format.MessageToDict(message, preserving_proto_field_name=True)
    text = json.dumps(value)
    # jsonb refuses the escape \u0000; rare, so only then is the value walked (the escape can
    # also be the tail of an escaped backslash, "\\u0000": the walk is right for both).
    return json.dumps(_nul_free_value(value)) if "\\u0000" in text else text


# A row keeps every field of ClassScore and Timing as a column of its own; a new field in either
# message needs a column (a new migration) and a place in prediction_row and prediction_from_row,
# which this check enforces at import.
_CLASS_FIELDS = ("label", "score", "index")
_TIMING_FIELDS = ("decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_size")
if (
    tuple(types_pb2.ClassScore.DESCRIPTOR.fields_by_name) != _CLASS_FIELDS
    or tuple(types_pb2.Timing.DESCRIPTOR.fields_by_name) != _TIMING_FIELDS
):
    raise RuntimeError("ClassScore or Timing changed: give the new field a column in predictions")

_SYNC = prediction_pb2.PREDICTION_SOURCE_SYNC
_JOB_ITEM = prediction_pb2.PREDICTION_SOURCE_JOB_ITEM
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# google.protobuf.Timestamp's valid range (0001-01-01 to 9999-12-31), as Timestamp.ToDatetime checks it.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799


def _create_time(stamp: Timestamp) -> datetime:
    """``stamp.ToDatetime(tzinfo=UTC)`` (to the microsecond, toward zero) at a third of its cost.

    Raises:
        ValueError: the timestamp is out of range.
    """
    seconds, nanos = stamp.seconds, stamp.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos <= 999_999_999):
        raise ValueError(f"timestamp out of range: {seconds} s, {nanos} ns")
    return _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def prediction_row(tenant: str, prediction: prediction_pb2.Prediction, generation: int = 0) -> PredictionRow:
    """The row for a recorded prediction of retry round ``generation`` (0 for a first run).

    Ingest calls this once per record, so it reads each proto field once and builds nothing it
    does not store (see docs/store.md, Throughput).

    Raises:
        ValueError: the prediction's name or job is not a valid resource name, or its time is
            out of range.
    """
    job_id = _uuid_of(prediction.job, "jobs") if prediction.job else None
    stamp = prediction.create_time if prediction.HasField("create_time") else None
    created = _create_time(stamp) if stamp is not None else datetime.now(UTC)
    labels: list[str] = []
    scores: list[float] = []
    indices: list[int] = []
    for c in prediction.classes:  # one pass: iterating a repeated field costs more than reading it
        labels.append(_nul_free(c.label))
        scores.append(c.score)
        indices.append(c.index)
    timing = prediction.timing
    failed = prediction.HasField("error")
    return PredictionRow(
        id=_uuid_of(prediction.name, "predictions"),
        tenant=tenant,
        model=prediction.model.removeprefix("models/"),
        job_id=job_id,
        item_index=prediction.item_index if job_id else None,
        state=int(prediction.state),
        class_labels=labels,
        class_scores=scores,
        class_indices=indices,
        decode_ms=timing.decode_ms or None,
        queue_ms=timing.queue_ms or None,
        inference_ms=timing.inference_ms or None,
        total_ms=timing.total_ms or None,
        batch_size=timing.batch_size or None,
        error=prediction.error.SerializeToString() if failed else None,
        error_code=prediction.error.code if failed else None,
        error_message=_nul_free(prediction.error.message) if failed else None,
        error_reason=error_from_status(prediction.error).reason if failed else None,
        trace_id=prediction.trace_id,
        create_time=created,
        generation=generation,
        source=prediction.source or (_JOB_ITEM if job_id else _SYNC),
        outputs=outputs_json(prediction),
        model_version=prediction.model_version or None,
        input_name=_nul_free(prediction.input_name) or None,
    )


def outputs_json(prediction: prediction_pb2.Prediction) -> str | None:
    """The JSON of the prediction's non-class outputs (embedding, output, tensors, members), or None."""
    if not (
        prediction.embedding or prediction.HasField("output") or prediction.tensors or prediction.members
    ):
        return None
    outputs = prediction_pb2.Prediction(
        embedding=prediction.embedding, tensors=prediction.tensors, members=prediction.members
    )
    if prediction.HasField("output"):
        outputs.output.CopyFrom(prediction.output)
    return _json(outputs)


def _number(value: float | None) -> float:
    """A stored score or time as the API answers it: 0 for none, and any NaN as the one NaN.

    Rows once held JSON, where every NaN was the string "NaN"; a NaN's payload bits stay out of
    answers as they did then.
    """
    if value is None:
        return 0.0
    return value if value == value else math.nan


def prediction_from_row(row: asyncpg.Record) -> prediction_pb2.Prediction:
    """The Prediction resource of a row."""
    prediction = prediction_pb2.Prediction(
        name=f"predictions/{row['id']}",
        model=f"models/{row['model']}",
        state=row["state"],
        classes=[
            types_pb2.ClassScore(label=label, score=_number(score), index=index)
            for label, score, index in zip(
                row["class_labels"], row["class_scores"], row["class_indices"], strict=True
            )
        ],
        timing=types_pb2.Timing(
            decode_ms=_number(row["decode_ms"]),
            queue_ms=_number(row["queue_ms"]),
            inference_ms=_number(row["inference_ms"]),
            total_ms=_number(row["total_ms"]),
            batch_size=row["batch_size"] or 0,
        ),
        trace_id=row["trace_id"],
        create_time=_timestamp(row["create_time"]),
        source=row["source"],
        model_version=row.get("model_version") or "",
        input_name=row.get("input_name") or "",
    )
    if row["job_id"] is not None:
        prediction.job = f"jobs/{row['job_id']}"
        prediction.item_index = row["item_index"]
    if row["error"] is not None:
        prediction.error.CopyFrom(status_pb2.Status.FromString(row["error"]))
    if row.get("outputs") is not None:
        prediction.MergeFrom(json_format.ParseDict(json.loads(row["outputs"]), prediction_pb2.Prediction()))
    return prediction


def model_stats(row: asyncpg.Record, labels: list[asyncpg.Record]) -> model_stats_pb2.ModelStats:
    """ModelStats from queries.model_stats' row and top labels (model, window and times unset)."""

    def percentiles(values: list[float | None] | None) -> model_stats_pb2.LatencyPercentiles:
        p50, p95, p99 = (v or 0.0 for v in values) if values else (0.0, 0.0, 0.0)
        return model_stats_pb2.LatencyPercentiles(p50_ms=p50, p95_ms=p95, p99_ms=p99)

    return model_stats_pb2.ModelStats(
        request_count=row["requests"],
        error_count=row["errors"],
        total_latency=percentiles(row["total_ms"]),
        inference_latency=percentiles(row["inference_ms"]),
        batch_size_mean=row["batch_size_mean"] or 0.0,
        top_labels=[model_stats_pb2.LabelCount(label=r["label"], count=r["count"]) for r in labels],
    )


def job_from_row(row: asyncpg.Record) -> job_pb2.Job:
    """The Job resource of a row."""
    job = job_pb2.Job(
        name=f"jobs/{row['id']}",
        model=f"models/{row['model']}",
        state=row["state"],
        items_total=row["items_total"],
        items_succeeded=row["items_succeeded"],
        items_failed=row["items_failed"],
        top_k=row["top_k"],
        request_id=row["request_id"],
        trace_id=row["trace_id"],
        create_time=_timestamp(row["create_time"]),
        update_time=_timestamp(row["update_time"]),
        retry_count=row["retry_count"],
        priority=row["priority"],
    )
    if row["state"] in _FINISHED_WITH_FAILURES:
        job.error.CopyFrom(_job_error(row))
    return job


_FINISHED_WITH_FAILURES = (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_PARTIALLY_SUCCEEDED)


def _job_error(row: asyncpg.Record) -> status_pb2.Status:
    """Why a finished job has failed items, and what to do about it.

    Built on read from the counters and the last failed item, so it can never disagree with them.
    Its code is that item's (a job of unreadable images reads INVALID_ARGUMENT, not "a job failed").
    """
    name = f"jobs/{row['id']}"
    reason = row["last_error_reason"] or "UNKNOWN"
    # The job as a whole stopped, whatever its items did: stalled, or failed while its manifest
    # was expanded (no item was queued: the error names the manifest's line and its reason).
    if reason == STALLED or row["items_total"] == 0:
        stalled = FerryError(row["last_error_message"] or reason, reason)
        stalled.code = code_from_number(row["last_error_code"] or grpc.StatusCode.UNKNOWN.value[0])
        return stalled.to_status()
    failed, total = row["items_failed"], row["items_total"]
    last = f"{reason}: {row['last_error_message']}" if row["last_error_message"] else reason
    error = FerryError(
        f"{failed} of {total} items failed (the last with {last}); list them with"
        f" GET /v1/{name}/items?state=PREDICTION_STATE_FAILED and run them again with POST /v1/{name}:retry",
        "ITEMS_FAILED",
        {"items_failed": str(failed), "items_total": str(total), "last_reason": reason},
    )
    error.code = code_from_number(row["last_error_code"] or grpc.StatusCode.UNKNOWN.value[0])
    return error.to_status()


def keyset_position(position: dict[str, Any]) -> tuple[datetime, uuid.UUID] | None:
    """The (create_time, id) a newest-first listing continues after, from its decoded page token
    (None: the first page). A token is the caller's to send back, so anything edited in it (an id
    that is no UUID or not a string) is the caller's error, never store's.

    Raises:
        InvalidArgument: INVALID_PAGE_TOKEN, saying to pass the previous page's token unchanged.
    """
    if not position:
        return None
    try:
        # In UTC: a time Postgres cannot hold ('0001-01-01T00:00:00+14:00' is in year 0) fails
        # here, not in the query (a 500).
        after = datetime.fromisoformat(position["t"])
        after = (after if after.tzinfo else after.replace(tzinfo=UTC)).astimezone(UTC)
        return after, uuid.UUID(position["id"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise InvalidArgument(
            "page_token is not valid; pass the next_page_token of the previous page unchanged",
            reason="INVALID_PAGE_TOKEN",
        ) from None


def parse_id(value: str, what: str) -> uuid.UUID:
    """Parses a resource id sent by the gateway.

    Raises:
        InvalidArgument: not a UUID.
    """
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{what} id {value!r} is not a UUID", reason="INVALID_RESOURCE_NAME") from None
