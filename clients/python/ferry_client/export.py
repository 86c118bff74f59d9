"""``ferry predictions --format jsonl|csv``: filters from the command line, records as lines."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

from google.protobuf.json_format import MessageToDict

from ferry.predictions.v1 import prediction_pb2
from ferry_client.client import needs_ascii

SOURCES = {
    "sync": prediction_pb2.PREDICTION_SOURCE_SYNC,
    "job": prediction_pb2.PREDICTION_SOURCE_JOB_ITEM,
    "oip": prediction_pb2.PREDICTION_SOURCE_OIP,
}
STATES = {
    "succeeded": prediction_pb2.PREDICTION_STATE_SUCCEEDED,
    "failed": prediction_pb2.PREDICTION_STATE_FAILED,
}

#: One CSV row per prediction: its identity, the top class, where the time went, and any error.
CSV_COLUMNS = (
    "name", "create_time", "model", "state", "source", "job", "item_index", "input_name", "top_label",
    "top_score", "total_ms", "inference_ms", "batch_size", "error_code", "error_message", "trace_id",
)  # fmt: skip

#: What a spreadsheet reads as a formula when a cell starts with it (OWASP: CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def text_cell(text: str) -> str:
    """A cell of text that came from a user (a zip's file name, a manifest's id, an error quoting
    input): one that would start a formula gets a leading ``'``, so a spreadsheet shows it instead."""
    return f"'{text}" if text.startswith(_FORMULA_STARTS) else text


def filters(args: argparse.Namespace) -> dict[str, Any]:
    """The list_predictions keyword filters of ``ferry predictions``' flags."""
    return {
        "model": args.model,
        "label": args.label,
        "min_score": args.min_score,
        "since": args.since or None,
        "until": args.until or None,
        "source": SOURCES[args.source] if args.source else 0,
        "state": STATES[args.state] if args.state else 0,
    }


def csv_row(prediction: prediction_pb2.Prediction) -> dict[str, Any]:
    """The CSV_COLUMNS of one prediction."""
    top = prediction.classes[0] if prediction.classes else None
    return {
        "name": prediction.name,
        "create_time": prediction.create_time.ToJsonString(),
        "model": prediction.model,
        "state": prediction_pb2.PredictionState.Name(prediction.state),
        "source": prediction_pb2.PredictionSource.Name(prediction.source),
        "job": prediction.job,
        "item_index": prediction.item_index if prediction.job else "",
        "input_name": text_cell(prediction.input_name),
        "top_label": text_cell(top.label) if top else "",
        "top_score": f"{top.score:.6g}" if top else "",
        "total_ms": f"{prediction.timing.total_ms:.3f}",
        "inference_ms": f"{prediction.timing.inference_ms:.3f}",
        "batch_size": prediction.timing.batch_size,
        "error_code": prediction.error.code if prediction.HasField("error") else "",
        "error_message": text_cell(prediction.error.message),
        "trace_id": prediction.trace_id,
    }


def write(records: Iterable[prediction_pb2.Prediction], form: str, out: TextIO) -> int:
    """Writes every record as a JSON line or a CSV row (with a header); returns how many."""
    count = 0
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS) if form == "csv" else None
    if writer is not None:
        writer.writeheader()
    for prediction in records:
        if writer is not None:
            writer.writerow(csv_row(prediction))
        else:
            fields = MessageToDict(prediction, preserving_proto_field_name=True)
            out.write(json.dumps(fields, ensure_ascii=needs_ascii(out)) + "\n")
        count += 1
    return count
