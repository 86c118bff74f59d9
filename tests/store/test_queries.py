"""What users ask of their records, on a real Postgres: filters, paging under inserts, stats, retention."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.predictions.v1 import prediction_pb2
from ferry.store.v1 import store_service_pb2 as pb
from ferry.store.v1 import store_service_pb2_grpc
from ferry.types.v1 import types_pb2
from services.store import codec
from services.store.ingest import write_batch
from services.store.retention import purge
from services.store.service import create_pool
from services.store.settings import StoreSettings
from tests.store.records import error_of, prediction, queued_job

Stub = store_service_pb2_grpc.StoreServiceStub
FAILED = prediction_pb2.PREDICTION_STATE_FAILED


def tenant() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def classified(
    label: str,
    score: float,
    model: str = "efficientnet-lite0",
    total_ms: float = 10.0,
    at: datetime | None = None,
) -> prediction_pb2.Prediction:
    """A succeeded sync prediction whose top class is ``label`` at ``score``."""
    made = prediction()
    made.model = f"models/{model}"
    del made.classes[:]
    made.classes.append(types_pb2.ClassScore(label=label, score=score, index=1))
    made.timing.CopyFrom(types_pb2.Timing(total_ms=total_ms, inference_ms=total_ms / 2, batch_size=2))
    if at is not None:
        made.create_time.FromDatetime(at)
    return made


def stamp(at: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(at)
    return value


async def names(store: Stub, request: pb.ListPredictionsRequest) -> list[str]:
    """Every matching prediction's name, following pages of 2."""
    seen, token = [], ""
    while True:
        request.page_size, request.page_token = 2, token
        answer = await store.ListPredictions(request)
        seen += [p.name for p in answer.predictions]
        token = answer.next_page_token
        if not token:
            return seen


async def test_each_filter_keeps_only_its_predictions(store: Stub, pool: asyncpg.Pool) -> None:
    owner = tenant()
    now = datetime.now(UTC)
    cat = classified("tiger cat", 0.39, at=now - timedelta(hours=2))
    espresso = classified("espresso", 0.95, at=now - timedelta(minutes=5))
    other_model = classified("espresso", 0.9, model="mobilenet-v2", at=now - timedelta(minutes=4))
    failed = prediction(failed=True)
    job = (await store.CreateJob(pb.CreateJobRequest(tenant=owner, job=queued_job(1)))).job
    job_id = uuid.UUID(job.name.removeprefix("jobs/"))
    item = prediction(job_id, 0)
    everything = [cat, espresso, other_model, failed, item]
    await write_batch(pool, [codec.prediction_row(owner, p) for p in everything])

    def listing(**fields: object) -> pb.ListPredictionsRequest:
        return pb.ListPredictionsRequest(tenant=owner, **fields)  # type: ignore[arg-type]

    assert set(await names(store, listing())) == {p.name for p in everything}
    assert set(await names(store, listing(model="mobilenet-v2"))) == {other_model.name}
    assert set(await names(store, listing(label="espresso"))) == {espresso.name, other_model.name, item.name}
    assert set(await names(store, listing(min_score=0.92))) == {espresso.name, item.name}
    assert set(await names(store, listing(label="espresso", model="efficientnet-lite0", min_score=0.92))) == {
        espresso.name,
        item.name,
    }
    in_range = listing(start_time=stamp(now - timedelta(hours=3)), end_time=stamp(now - timedelta(hours=1)))
    assert await names(store, in_range) == [cat.name]
    assert set(await names(store, listing(state=FAILED))) == {failed.name}
    sync = prediction_pb2.PREDICTION_SOURCE_SYNC
    job_item = prediction_pb2.PREDICTION_SOURCE_JOB_ITEM
    assert set(await names(store, listing(source=job_item))) == {item.name}
    assert item.name not in await names(store, listing(source=sync))
    assert not await names(store, listing(source=prediction_pb2.PREDICTION_SOURCE_OIP))
    assert await names(store, listing(job_id=str(job_id), state=FAILED)) == []
    answer = await store.ListPredictions(listing(job_id=str(job_id)))
    assert [(p.name, p.source) for p in answer.predictions] == [(item.name, job_item)]
    assert not await names(store, pb.ListPredictionsRequest(tenant=tenant(), label="espresso"))


async def test_paging_is_stable_while_rows_arrive(store: Stub, pool: asyncpg.Pool) -> None:
    owner = tenant()
    first = [classified("tabby", 0.5) for _ in range(5)]
    await write_batch(pool, [codec.prediction_row(owner, p) for p in first])
    seen, token = [], ""
    while True:
        answer = await store.ListPredictions(
            pb.ListPredictionsRequest(tenant=owner, label="tabby", page_size=2, page_token=token)
        )
        seen += [p.name for p in answer.predictions]
        # Newer rows land between pages: they belong above page one and must not shift the rest.
        await write_batch(pool, [codec.prediction_row(owner, classified("tabby", 0.5))])
        token = answer.next_page_token
        if not token:
            break
    assert seen == [p.name for p in reversed(first)]


async def test_a_bad_min_score_is_invalid_argument(store: Stub) -> None:
    call = store.ListPredictions(pb.ListPredictionsRequest(tenant=tenant(), min_score=1.5))
    error = await error_of(call)
    assert (error.code(), "min_score" in (error.details() or "")) == (grpc.StatusCode.INVALID_ARGUMENT, True)


async def test_model_stats_count_rank_and_tally_in_the_window(store: Stub, pool: asyncpg.Pool) -> None:
    owner = tenant()
    now = datetime.now(UTC)
    recent = [
        classified("espresso", 0.9, total_ms=float(ms), at=now - timedelta(minutes=1)) for ms in range(1, 101)
    ]
    recent += [classified("tiger cat", 0.4, at=now - timedelta(minutes=2)) for _ in range(3)]
    failed = prediction(failed=True)
    old = classified("tabby", 0.5, at=now - timedelta(days=2))
    elsewhere = classified("espresso", 0.9, model="mobilenet-v2")
    await write_batch(pool, [codec.prediction_row(owner, p) for p in [*recent, failed, old, elsewhere]])
    await write_batch(pool, [codec.prediction_row(tenant(), classified("espresso", 0.9))])  # another tenant

    request = pb.GetModelStatsRequest(
        tenant=owner,
        model="efficientnet-lite0",
        start_time=stamp(now - timedelta(hours=1)),
        end_time=stamp(now + timedelta(minutes=1)),
    )
    stats = (await store.GetModelStats(request)).stats
    assert (stats.request_count, stats.error_count) == (104, 1)
    total = stats.total_latency
    assert 0 < total.p50_ms <= total.p95_ms <= total.p99_ms <= 100
    assert 0 < stats.inference_latency.p50_ms <= stats.inference_latency.p99_ms
    assert stats.batch_size_mean == 2.0
    assert [(c.label, c.count) for c in stats.top_labels] == [("espresso", 100), ("tiger cat", 3)]


async def test_retention_deletes_old_rows_and_keeps_new_ones(pool: asyncpg.Pool) -> None:
    owner = tenant()
    now = datetime.now(UTC)
    old = [classified("tabby", 0.5, at=now - timedelta(days=40, minutes=i)) for i in range(7)]
    new = [classified("tabby", 0.5, at=now - timedelta(days=29)), classified("tabby", 0.5)]
    await write_batch(pool, [codec.prediction_row(owner, p) for p in [*old, *new]])

    deleted = await purge(pool, days=30, batch_size=3)

    left = {
        f"predictions/{r['id']}"
        for r in await pool.fetch("SELECT id FROM predictions WHERE tenant = $1", owner)
    }
    assert deleted >= len(old)  # other tests' rows are all recent; only these are 40 days old
    assert left == {p.name for p in new}


async def test_every_pooled_connection_has_the_statement_timeout(database_url: str) -> None:
    settings = StoreSettings(database_url=database_url, statement_timeout_ms=1234, pool_max_size=2)
    pool = await create_pool(settings)
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            shown = [await c.fetchval("SHOW statement_timeout") for c in (first, second)]
    finally:
        await pool.close()
    assert shown == ["1234ms", "1234ms"]
