"""``ferry restart|stop|start`` report what happened naming only the pids there are (no ``None``)."""

from __future__ import annotations

from devstack.control import expand_groups, outcome
from devstack.supervisor import RestartResult


def test_each_outcome_names_real_pids_only() -> None:
    assert outcome(RestartResult("postgres", True, None, 27193)) == "started, pid 27193, serving"
    assert outcome(RestartResult("gateway", True, 10, 11)) == "pid 10 -> 11, serving"
    assert outcome(RestartResult("nats", True, 12, None)) == "stopped (was pid 12)"
    held = RestartResult("nats", True, 12, None, "stopped (was pid 12); `ferry start nats` resumes it")
    assert outcome(held) == held.message
    assert "None" not in " ".join(outcome(RestartResult("x", True, o, n)) for o, n in ((None, 1), (1, None)))


def test_a_service_name_means_each_of_its_processes_on_a_scaled_stack() -> None:
    scaled = ["postgres", "nats-0", "nats-1", "gateway-0", "gateway-1", "inference-0", "inference-1", "envoy"]
    assert expand_groups(["gateway", "inference", "envoy"], scaled) == [
        "gateway-0",
        "gateway-1",
        "inference-0",
        "inference-1",
        "envoy",
    ]
    # A name that is a process stays itself; an unknown one is left for the caller to refuse.
    assert expand_groups(["inference-1", "nats-1", "jobs"], scaled) == ["inference-1", "nats-1", "jobs"]
    assert expand_groups(["gateway"], ["gateway", "inference"]) == ["gateway"]
