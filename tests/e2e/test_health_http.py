"""Plain-HTTP health on the public port, for load balancers that cannot speak gRPC health."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import pytest

pytestmark = pytest.mark.e2e


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


# Neither request carries an API key: a load balancer has none.
def test_healthz_answers_200_while_envoy_runs(stack: dict[str, Any]) -> None:
    assert status_of(stack["http_url"] + "/healthz") == 200


def test_readyz_answers_200_once_a_gateway_is_serving(stack: dict[str, Any]) -> None:
    assert status_of(stack["http_url"] + "/readyz") == 200
