"""Metric names used by the alert rules and dashboards, and the names Ferry's services export."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana").glob("*.json"))

#: Every module that registers Ferry's metrics with prometheus_client's default registry.
METRICS_MODULES = (
    "services.common.metrics",
    "services.inference.metrics",
    "services.jobs.metrics",
    "services.store.metrics",
)

#: Names that no Ferry service exports, and who does.
EXTERNAL = {
    "up": "Prometheus itself, one per scrape target",
    # prometheus-nats-exporter -jsz=all, collector/jsz.go (BuildFQName("jetstream", ...)).
    "jetstream_consumer_num_pending": "prometheus-nats-exporter -jsz=all",
    "jetstream_consumer_num_ack_pending": "prometheus-nats-exporter -jsz=all",
    "jetstream_stream_total_messages": "prometheus-nats-exporter -jsz=all",
}

_KEYWORDS = frozenset(
    "and or unless by without on ignoring group_left group_right bool offset inf nan".split()
)
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum"),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    text = re.sub(r"label_values\(([^,)]*),[^)]*\)", r"(\1)", text)  # Grafana: (metric, label)
    found = re.findall(r"(?<![\w.$])([A-Za-z_:][\w:]*)(?![\w(])(?!\s*\()", text)
    return {name for name in found if name.lower() not in _KEYWORDS}


def rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard_expressions(path: Path) -> list[str]:
    dashboard = json.loads(path.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def exported_names() -> set[str]:
    """Sample names prometheus_client exposes for every registered family, suffixes included."""
    for module in METRICS_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names
