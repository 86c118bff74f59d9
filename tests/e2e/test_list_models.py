"""``ListModels`` pages through Envoy: every page together is the whole sorted catalog."""

from __future__ import annotations

import pytest

from tests.e2e.rest import Rest

pytestmark = pytest.mark.e2e


def test_pages_of_two_add_up_to_the_whole_catalog(rest: Rest) -> None:
    status, whole = rest.get("/v1/models")
    assert status == 200, whole
    names = [model["name"] for model in whole["models"]]
    assert len(names) >= 3, "the session stack serves several models"
    assert whole["next_page_token"] == ""

    paged: list[str] = []
    token = ""
    while True:
        query = f"?page_size=2&page_token={token}" if token else "?page_size=2"
        status, page = rest.get(f"/v1/models{query}")
        assert status == 200, page
        assert len(page["models"]) <= 2
        paged += [model["name"] for model in page["models"]]
        token = page["next_page_token"]
        if not token:
            break
    assert paged == names == sorted(names)


def test_a_made_up_page_token_is_refused(rest: Rest) -> None:
    status, body = rest.get("/v1/models?page_token=bm90LWEtdG9rZW4")
    assert status == 400, body
    assert body["details"][0]["reason"] == "INVALID_PAGE_TOKEN"


def test_a_page_size_over_the_maximum_is_refused(rest: Rest) -> None:
    status, body = rest.get("/v1/models?page_size=5000")
    assert status == 400, body
    assert body["details"][0]["reason"] == "INVALID_PAGE_SIZE"
