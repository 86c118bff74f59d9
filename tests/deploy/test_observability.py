"""Alert rules pass promtool's checks and unit tests; rules and dashboards name only real metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.promql import (
    DASHBOARDS,
    EXTERNAL,
    RULES,
    dashboard_expressions,
    exported_names,
    metric_names,
    rule_expressions,
)

PROMETHEUS_DIR = RULES.parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is missing: `make test` installs it (apt-get install prometheus) when run as root",
)


def promtool(*argv: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *argv], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120)


@needs_promtool
def test_rules_pass_promtool_check() -> None:
    done = promtool("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_scrape_config_is_valid() -> None:
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in rules for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    assert alerts - tested == set()


def test_the_metric_name_reader_sees_through_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (service, le) (rate(ferry_grpc_request_seconds_bucket"
        '{service="gateway", code=~"A|B"}[5m]))) > 2 and on() absent(up{job="x"} == 1)'
        " / sum(rate(ferry_jobs_items_total[$__rate_interval]))"
    )
    assert metric_names(expr) == {"ferry_grpc_request_seconds_bucket", "up", "ferry_jobs_items_total"}


def test_there_are_dashboards_and_each_is_grafana_json() -> None:
    assert [path.name for path in DASHBOARDS] == ["ferry-overview.json"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["panels"]
        assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.parametrize("source", [RULES, *DASHBOARDS], ids=lambda path: Path(path).name)
def test_every_metric_named_is_exported_by_a_service_or_a_known_exporter(source: Path) -> None:
    exprs = rule_expressions() if source == RULES else dashboard_expressions(source)
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used, f"no metric found in {source.name}"
    unknown = used - exported_names() - EXTERNAL.keys()
    assert unknown == set(), f"{source.name} names metrics nothing exports: {sorted(unknown)}"
