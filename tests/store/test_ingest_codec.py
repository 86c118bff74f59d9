"""Through real Postgres, a prediction's classes and timing come back as the JSON rows of before did.

Until migration 0008 a row kept classes and timing as json_format's JSON (float32 scores at their
shortest form) and the API parsed them back; now they are typed columns. These check, on many
float32 values, that the API's answer did not change by a bit.
"""

from __future__ import annotations

import math
import random
import struct
import uuid

import asyncpg
import pytest
from google.protobuf.json_format import MessageToDict, ParseDict

from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from services.store import codec
from services.store.ingest import write_batch
from services.store.repositories import predictions


def _float32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def _scores() -> list[float]:
    rng = random.Random(9)
    scores = [_float32(rng.random()) for _ in range(20_000)]  # softmax-like
    scores += [_float32(rng.random() ** 8) for _ in range(5_000)]  # tiny scores
    bits = (struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0] for _ in range(20_000))
    scores += list(bits)  # any float32, NaN and infinities included
    scores += [_float32(x) for x in (1e-45, 1.17549435e-38, 3.4e38, 0.1, 1.0, 123456.789, 0.0)]
    # The few largest float32 (above 3.4028234e38) were written as JSON that ParseDict refused
    # ("Float value too large"): the JSON rows could not answer them at all, so none to compare.
    return [s for s in scores if not abs(s) > 3.4028234e38 or abs(s) == math.inf]


def _bits(prediction: prediction_pb2.Prediction) -> tuple[bytes, bytes]:
    return b"".join(c.SerializeToString() for c in prediction.classes), prediction.timing.SerializeToString()


@pytest.mark.parametrize("chunk", [None, predictions.SMALL_BATCH], ids=["copy", "one-statement"])
async def test_classes_and_timing_read_back_as_the_json_rows_answered(
    pool: asyncpg.Pool, chunk: int | None
) -> None:
    # Both write paths: COPY through the staging table, and small batches' INSERT … VALUES.
    tenant = f"codec-{chunk}"
    scores = _scores()
    made = []
    for first in range(0, len(scores), 5):
        prediction = prediction_pb2.Prediction(
            name=f"predictions/{uuid.uuid4()}",
            model="models/m",
            state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
            classes=[
                types_pb2.ClassScore(label=f'class "{n}" \\ é ☕' if n % 3 else "", score=score, index=n % 4)
                for n, score in enumerate(scores[first : first + 5], start=first)
            ],
            timing=types_pb2.Timing(
                decode_ms=first / 7,
                queue_ms=0.0,
                inference_ms=1e-7 * first,
                total_ms=float("inf"),
                batch_size=4,
            ),
        )
        made.append(prediction)
    rows_to_write = [codec.prediction_row(tenant, p) for p in made]
    step = chunk or len(rows_to_write)
    for first in range(0, len(rows_to_write), step):
        await write_batch(pool, rows_to_write[first : first + step])
    rows = await pool.fetch("SELECT * FROM predictions WHERE tenant = $1", tenant)
    read = {p.name: _bits(p) for p in map(codec.prediction_from_row, rows)}
    # What the API answered when a row held MessageToDict's JSON and was parsed back with ParseDict.
    before = {p.name: _bits(ParseDict(MessageToDict(p), prediction_pb2.Prediction())) for p in made}
    assert len(read) == len(made)
    assert read == before


async def test_a_record_whose_caller_text_holds_nul_is_stored_not_dropped(pool: asyncpg.Pool) -> None:
    # A candidate label "\0x" once made Postgres refuse the record: the caller's prediction was
    # answered but never stored, and a job item's record dropped so that its job never ended.
    # Backslash-u0000 spelled out in a string (an escaped backslash) must come back unchanged.
    failed = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}",
        model="models/m",
        state=prediction_pb2.PREDICTION_STATE_FAILED,
        input_name="photo\x00.jpg",
        error={"code": 3, "message": "item 0: label \x00 refused"},
    )
    labelled = prediction_pb2.Prediction(
        name=f"predictions/{uuid.uuid4()}",
        model="models/m",
        state=prediction_pb2.PREDICTION_STATE_SUCCEEDED,
        classes=[types_pb2.ClassScore(label="\x00x", score=0.5, index=0)],
    )
    labelled.output.update({"k\x00": ["v\x00", "\\u0000"]})
    for chunk in ([failed], [labelled]):  # one at a time: a refused one would fail its batch
        await write_batch(pool, [codec.prediction_row("nul", p) for p in chunk])
    rows = await pool.fetch("SELECT * FROM predictions WHERE tenant = 'nul' ORDER BY state")
    read = {p.name: p for p in map(codec.prediction_from_row, rows)}
    standin = codec.NUL_STANDIN
    assert read[failed.name].input_name == f"photo{standin}.jpg"
    assert read[failed.name].error.message == failed.error.message  # kept whole in the status bytes
    assert [c.label for c in read[labelled.name].classes] == [f"{standin}x"]
    assert dict(read[labelled.name].output) == {f"k{standin}": [f"v{standin}", "\\u0000"]}
