"""Items queued for a model that then failed to load end at once, with the model's reason.

The real inference service serves efficientnet-lite0 beside a model whose notebook cannot be read
(state FAILED, every call UNAVAILABLE MODEL_FAILED); the runner is the real one on real JetStream.
Before, such an item was retried for the whole retry budget (5 minutes by default) and only then
failed with RETRIES_EXHAUSTED; a passing UNAVAILABLE still keeps the backoff (tests/jobs/test_delivery.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from skimage import data as skimage_data

from ferry.events.v1 import events_pb2
from ferry.predictions.v1 import prediction_pb2
from services.common.errors import FailedPrecondition, FerryError, Unavailable, status_to_proto
from services.jobs.retry import is_transient
from tests.e2e.expectations import ESPRESSO
from tests.jobs.conftest import Harness
from tests.jobs.inference_process import real_inference_process
from tests.jobs.test_delivery import by_name, error_info, name_of
from tests.jobs.test_real_inference import jpeg

MODELS_FILE = """
[models.efficientnet-lite0]
version = "1"

[models.broken]
version = "1"
entry_point = "notebook"
notebook = "does-not-exist.ipynb"
"""


@pytest.fixture(scope="module")
async def inference_with_a_failed_model(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Real inference whose model ``broken`` failed to load; yields its target."""
    root = tmp_path_factory.mktemp("failed-model")
    models_file = root / "models.toml"
    models_file.write_text(MODELS_FILE)
    async with real_inference_process(
        Path(root), models="efficientnet-lite0,broken", models_file=models_file
    ) as target:
        yield target


async def test_items_of_a_failed_model_fail_at_once_with_its_reason_and_a_dead_letter(
    harness: Harness, inference_with_a_failed_model: str
) -> None:
    # A budget and backoff that would keep a retried item alive far past this test's wait.
    harness.configure(
        inference_target=inference_with_a_failed_model,
        inference_timeout_s=60.0,
        ack_wait_s=60.0,
        backoff_base_s=5.0,
        backoff_max_s=30.0,
        retry_budget_s=300.0,
    )
    job = uuid.uuid4()
    coffee = jpeg(skimage_data.coffee())
    await harness.publish_item(job, 0, coffee, model="broken")
    await harness.publish_item(job, 1, coffee, model="efficientnet-lite0")
    await harness.publish_item(job, 2, coffee, model="broken")
    started = time.monotonic()
    await harness.start_runner()
    info = await harness.wait_drained(await harness.work_stream_last_seq())
    print(f"\nthree items settled {time.monotonic() - started:.1f}s after the runner started")

    assert info.num_redelivered == 0  # one attempt each: none was put back for a retry
    records = by_name(await harness.records(job))
    assert set(records) == {name_of(job, i) for i in range(3)}
    ok = records[name_of(job, 1)]
    assert ok.state == prediction_pb2.PREDICTION_STATE_SUCCEEDED
    assert ok.classes[0].index == ESPRESSO
    for index in (0, 2):
        record = records[name_of(job, index)]
        assert record.state == prediction_pb2.PREDICTION_STATE_FAILED
        assert record.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
        info_ = error_info(record)
        assert (info_.reason, dict(info_.metadata)) == ("MODEL_FAILED", {"model": "broken"})
        assert "'broken' failed to load" in record.error.message
        assert "does-not-exist.ipynb" in record.error.message
        dead = await harness.dead_letter(job, index)
        assert dead.headers is not None and dead.headers["Ferry-Error-Reason"] == "MODEL_FAILED"
        item = events_pb2.JobItem.FromString(dead.data or b"")
        assert (item.item_index, item.model, item.input.image.content) == (index, "broken", coffee)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        # Final: waiting does not change them (an admin must fix the model, or it does not exist).
        (Unavailable("model 'broken' failed to load: ...", "MODEL_FAILED"), False),
        (FailedPrecondition("model 'm' is not loaded", "MODEL_NOT_LOADED"), False),
        # Passing: a restart, a load in progress, a replica stopping, an outage without a reason.
        (Unavailable("inference is starting", "NOT_READY"), True),
        (Unavailable("model 'm' is still loading", "MODEL_LOADING"), True),
        (Unavailable("inference is shutting down", "SHUTTING_DOWN"), True),
    ],
)
def test_a_model_failure_is_final_and_a_passing_outage_is_retried(error: FerryError, transient: bool) -> None:
    assert is_transient(error.to_status()) is transient


def test_an_unavailable_without_a_reason_and_a_missing_model_are_classed_by_code() -> None:
    bare = status_to_proto(grpc.StatusCode.UNAVAILABLE, "connection refused", "")
    del bare.details[:]
    assert is_transient(bare)
    assert not is_transient(status_to_proto(grpc.StatusCode.NOT_FOUND, "no model 'x'", "MODEL_NOT_FOUND"))
