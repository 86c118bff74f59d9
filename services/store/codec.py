"""Converts between Postgres rows and Ferry's protos, and encodes opaque page tokens."""

from __future__ import annotations

import json
import math
import struct
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

import asyncpg
import grpc
from google.protobuf import json_format
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2

from ferry.jobs.v1 import job_pb2
from ferry.models.v1 import model_stats_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.common.errors import FerryError, InvalidArgument, code_from_number, error_from_status


class PredictionRow(NamedTuple):
    """One row of the predictions table, in column order (ingest writes them column-wise)."""

    id: uuid.UUID
    tenant: str
    model: str
    job_id: uuid.UUID | None
    item_index: int | None
    state: int
    classes: str
    timing: str
    error: bytes | None
    error_code: int | None
    error_message: str | None
    error_reason: str | None
    trace_id: str
    create_time: datetime
    generation: int
    source: int
    outputs: str | None


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _uuid_of(name: str, collection: str) -> uuid.UUID:
    return uuid.UUID(name.removeprefix(f"{collection}/"))


def _json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True))


# Ingest converts every record's classes and timing to JSON; json_format does it at ~20,000
# records/s, which alone would cap ingest below its target. These write the same JSON directly
# (proto3 JSON: zero values left out, float32 scores at their shortest exact form); a new field in
# either message must be added here, which this check enforces at import.
_CLASS_FIELDS = ("label", "score", "index")
_TIMING_FIELDS = ("decode_ms", "queue_ms", "inference_ms", "total_ms", "batch_size")
if (
    tuple(types_pb2.ClassScore.DESCRIPTOR.fields_by_name) != _CLASS_FIELDS
    or tuple(types_pb2.Timing.DESCRIPTOR.fields_by_name) != _TIMING_FIELDS
):
    raise RuntimeError("ClassScore or Timing changed: update codec's fast JSON conversion")


# The text is written directly, character for character what json.dumps of those dicts writes
# (its separators, its string escaping, float.__repr__): building the dicts and calling json.dumps
# was the largest single cost of a record in store's process (see docs/store.md, Throughput).
_json_string = json.encoder.encode_basestring_ascii  # json.dumps' own (C) escaping
_FLOAT32 = struct.Struct("<f")
_SIGNIFICANT_DIGITS = tuple(f".{digits}g" for digits in range(6, 10))  # 9 always give a float32 back


def shortest_float32(value: float) -> float:
    """``type_checkers.ToShortestFloat`` (json_format's form of a float32), with less overhead.

    The fewest significant digits, from 6 up, that give back the same float32; a test compares the
    two on many values.
    """
    pack, unpack = _FLOAT32.pack, _FLOAT32.unpack
    for digits in _SIGNIFICANT_DIGITS:
        rounded = float(format(value, digits))
        if unpack(pack(rounded))[0] == value:
            return rounded
    return type_checkers.ToShortestFloat(value)  # not a float32 (cannot come from a proto field)


def classes_json(classes: Iterable[types_pb2.ClassScore]) -> str:
    """The JSON of a prediction's classes, as json_format.MessageToDict would write it."""
    items = []
    for c in classes:
        label, score, index = c.label, c.score, c.index
        fields = []
        if label:
            fields.append(f'"label": {_json_string(label)}')
        if score:
            if not math.isfinite(score):  # NaN and infinities are strings in proto3 JSON
                return json.dumps(
                    [json_format.MessageToDict(x, preserving_proto_field_name=True) for x in classes]
                )
            fields.append(f'"score": {float.__repr__(shortest_float32(score))}')
        if index:
            fields.append(f'"index": {index}')
        items.append("{" + ", ".join(fields) + "}")
    return "[" + ", ".join(items) + "]"


def timing_json(timing: types_pb2.Timing) -> str:
    """The JSON of a prediction's timing, as json_format.MessageToDict would write it."""
    fields = []
    for name in _TIMING_FIELDS:
        value = getattr(timing, name)
        if value:
            if not math.isfinite(value):
                return _json(timing)  # NaN and infinities are strings in proto3 JSON
            fields.append(f'"{name}": {value!r}')
    return "{" + ", ".join(fields) + "}"


_SYNC = prediction_pb2.PREDICTION_SOURCE_SYNC
_JOB_ITEM = prediction_pb2.PREDICTION_SOURCE_JOB_ITEM


def prediction_row(tenant: str, prediction: prediction_pb2.Prediction, generation: int = 0) -> PredictionRow:
    """The row for a recorded prediction of retry round ``generation`` (0 for a first run).

    Raises:
        ValueError: the prediction's name or job is not a valid resource name, or its time is
            out of range.
    """
    job_id = _uuid_of(prediction.job, "jobs") if prediction.job else None
    created = (
        prediction.create_time.ToDatetime(tzinfo=UTC)  # ValueError when out of range
        if prediction.HasField("create_time")
        else datetime.now(UTC)
    )
    failed = prediction.HasField("error")
    return PredictionRow(
        id=_uuid_of(prediction.name, "predictions"),
        tenant=tenant,
        model=prediction.model.removeprefix("models/"),
        job_id=job_id,
        item_index=prediction.item_index if job_id else None,
        state=int(prediction.state),
        classes=classes_json(prediction.classes),
        timing=timing_json(prediction.timing),
        error=prediction.error.SerializeToString() if failed else None,
        error_code=prediction.error.code if failed else None,
        error_message=prediction.error.message if failed else None,
        error_reason=error_from_status(prediction.error).reason if failed else None,
        trace_id=prediction.trace_id,
        create_time=created,
        generation=generation,
        source=prediction.source or (_JOB_ITEM if job_id else _SYNC),
        outputs=outputs_json(prediction),
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


def prediction_from_row(row: asyncpg.Record) -> prediction_pb2.Prediction:
    """The Prediction resource of a row."""
    prediction = prediction_pb2.Prediction(
        name=f"predictions/{row['id']}",
        model=f"models/{row['model']}",
        state=row["state"],
        classes=[json_format.ParseDict(c, types_pb2.ClassScore()) for c in json.loads(row["classes"])],
        timing=json_format.ParseDict(json.loads(row["timing"]), types_pb2.Timing()),
        trace_id=row["trace_id"],
        create_time=_timestamp(row["create_time"]),
        source=row["source"],
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
    failed, total = row["items_failed"], row["items_total"]
    last = f"{reason}: {row['last_error_message']}" if row["last_error_message"] else reason
    error = FerryError(
        f"{failed} of {total} items failed (the last with {last}); list them with"
        f" GET /v1/predictions?job={name} and run them again with POST /v1/{name}:retry",
        "ITEMS_FAILED",
        {"items_failed": str(failed), "items_total": str(total), "last_reason": reason},
    )
    error.code = code_from_number(row["last_error_code"] or grpc.StatusCode.UNKNOWN.value[0])
    return error.to_status()


def parse_id(value: str, what: str) -> uuid.UUID:
    """Parses a resource id sent by the gateway.

    Raises:
        InvalidArgument: not a UUID.
    """
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(f"{what} id {value!r} is not a UUID", reason="INVALID_RESOURCE_NAME") from None
