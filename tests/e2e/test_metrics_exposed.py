"""Every metric the alert rules and dashboards name is served by the running stack's /metrics."""

from __future__ import annotations

import re
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.promql import (
    DASHBOARDS,
    EXTERNAL,
    dashboard_expressions,
    metric_names,
    rule_expressions,
)

pytestmark = pytest.mark.e2e

_HISTOGRAM_SAMPLES = ("_bucket", "_count", "_sum")


def scrape(url: str) -> set[str]:
    """Metric families and sample names in one /metrics answer."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    families = set(re.findall(r"^# TYPE (\S+) (\S+)", text, flags=re.M))
    names = {name for name, _ in families}
    # A labelled family with no sample yet shows only as "# TYPE name type" (a counter's name
    # already ends in _total there): add a histogram's sample names.
    names.update(
        f"{name}{suffix}" for name, kind in families if kind == "histogram" for suffix in _HISTOGRAM_SAMPLES
    )
    names.update(re.findall(r"^([A-Za-z_:][\w:]*)[{ ]", text, flags=re.M))
    return names


def test_rules_and_dashboards_name_only_metrics_the_services_serve(stack: dict[str, Any]) -> None:
    host = urlsplit(stack["http_url"]).hostname
    served: set[str] = set()
    for name, ports in stack["services"].items():
        names = scrape(f"http://{host}:{ports['metrics_port']}/metrics")
        assert "ferry_grpc_requests_total" in names, f"{name} serves no gRPC metrics"
        served |= names
    exprs = rule_expressions() + [e for path in DASHBOARDS for e in dashboard_expressions(path)]
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used - served - EXTERNAL.keys() == set()
