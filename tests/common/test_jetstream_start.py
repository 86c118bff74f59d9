"""A service's start waits out JetStream's leader elections instead of exiting on the first timeout."""

from __future__ import annotations

import logging

import nats.errors
import nats.js.errors
import pytest

from services.common.messaging import until_jetstream_answers


class Flaky:
    """Answers ``errors`` in turn, then "ok"; counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_each_way_jetstream_says_not_yet_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    request = Flaky(
        nats.errors.TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.js.errors.ServiceUnavailableError(
            code=503, err_code=10008, description="JetStream system temporarily unavailable"
        ),
    )
    with caplog.at_level(logging.WARNING):
        assert await until_jetstream_answers(request, "the bucket b", budget_s=10) == "ok"
    assert request.calls == 4
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 3 and all("the bucket b" in line for line in said), said


async def test_gives_up_with_the_last_error_after_its_budget() -> None:
    request = Flaky(*[nats.errors.TimeoutError() for _ in range(100)])
    with pytest.raises(nats.errors.TimeoutError):
        await until_jetstream_answers(request, "the streams", budget_s=0.6)
    # 0.25 s, then 0.5 s would pass the budget: two tries, not a hundred.
    assert request.calls == 2


async def test_any_other_error_is_raised_at_once() -> None:
    request = Flaky(
        nats.js.errors.BadRequestError(code=400, description="bad config"), nats.errors.TimeoutError()
    )
    with pytest.raises(nats.js.errors.BadRequestError):
        await until_jetstream_answers(request, "the streams", budget_s=10)
    assert request.calls == 1
