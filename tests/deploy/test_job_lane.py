"""The job lane in every deployment: compose and the Helm chart run `inference-jobs` as `ferry up`
does (FERRY_INFERENCE_JOB_LANE): the inference program that only the jobs runner calls, with a low
CPU weight, while the gateways keep calling `inference`.

What the lane is for (a bulk job's model compute never delays another tenant's calls) is measured
on the local stack: tests/devstack/test_job_lane.py, benchmarks/bulk.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import yaml

from devstack.replicas import JOB_LANE
from tests.deploy.test_compose import COMPOSE, ROOT
from tests.deploy.test_helm import SECRETS, env_of, find, merged, render
from tests.deploy.test_upload_lane import cpu_millicores

LANE_NAME = f"ferry-{JOB_LANE}"


def compose_services(*args: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    done = subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", *args, "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **env},
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["services"])


def test_compose_runs_the_lane_as_inference_at_a_low_cpu_weight_called_by_the_runner_alone() -> None:
    on = {"FERRY_JOBS_INFERENCE_TARGET": f"{JOB_LANE}:50052"}
    services = compose_services("--profile", "job-lane", **on)
    lane, inference = services[JOB_LANE], services["inference"]
    # The same program, settings (models, NATS for the models loaded at runtime) and healthcheck.
    assert lane["command"] == inference["command"] == ["python", "-m", "services.inference"]
    assert lane["environment"] == inference["environment"] and lane["healthcheck"] == inference["healthcheck"]
    # Its CPU comes after every other container's (Docker's default weight is 1024): nice 19's weight.
    assert "cpu_shares" not in inference and lane["cpu_shares"] == 15
    assert services["jobs"]["environment"]["FERRY_JOBS_INFERENCE_TARGET"] == f"{JOB_LANE}:50052"
    # The gateways call the callers' inference, never the lane.
    for gateway in ("gateway", "gateway-uploads"):
        assert services[gateway]["environment"]["FERRY_GATEWAY_INFERENCE_TARGET"] == "inference:50052"
    assert not lane.get("ports"), "only Envoy publishes a port"
    # Off by default, as `ferry up`'s: no lane, the runner on inference.
    off = compose_services()
    assert JOB_LANE not in off
    assert off["jobs"]["environment"]["FERRY_JOBS_INFERENCE_TARGET"] == "inference:50052"
    # The GPU override puts the lane on the GPU too (another copy of the weights there).
    gpu = compose_services("-f", "docker-compose.gpu.yml", "--profile", "job-lane")
    assert (
        gpu[JOB_LANE]["deploy"] == gpu["inference"]["deploy"]
        and gpu[JOB_LANE]["image"] == gpu["inference"]["image"]
    )


def chart(**extra: Any) -> list[dict[str, Any]]:
    """The chart with the job lane on (off by default, as ``ferry up``'s), and ``extra`` values."""
    return render(merged({"secrets": SECRETS["secrets"], "inferenceJobs": {"enabled": True}}, extra))


def test_chart_runs_the_lane_as_inference_with_a_small_cpu_request_for_the_runner_alone() -> None:
    docs = chart(inference={"models": "efficientnet-lite0,mobilenet-v2", "env": {"FERRY_INFERENCE_X": "1"}})
    service = find(docs, "Service", LANE_NAME)["spec"]
    assert service["clusterIP"] == "None"  # headless: the runner resolves every lane pod
    assert {p["name"]: p["port"] for p in service["ports"]} == {"grpc": 50052, "metrics": 9102}
    pod = find(docs, "Deployment", LANE_NAME)["spec"]["template"]["spec"]
    [lane] = pod["containers"]
    [inference] = find(docs, "Deployment", "ferry-inference")["spec"]["template"]["spec"]["containers"]
    assert lane["command"] == ["python", "-m", "services.inference"]
    # Inference's environment (its models, device, NATS for the models loaded at runtime, env values).
    assert env_of(docs, JOB_LANE) == env_of(docs, "inference")
    assert env_of(docs, JOB_LANE)["FERRY_INFERENCE_MODELS"] == "efficientnet-lite0,mobilenet-v2"
    assert lane["startupProbe"] == inference["startupProbe"]  # it loads the models too
    # A small CPU request: on a busy node its cgroup's CPU weight (from the request) is a small
    # share beside the callers' inference's, so a job's compute takes the CPU the others leave.
    ours, theirs = lane["resources"]["requests"]["cpu"], inference["resources"]["requests"]["cpu"]
    assert cpu_millicores(ours) * 10 <= cpu_millicores(theirs), (ours, theirs)
    assert lane["resources"]["requests"]["memory"] == inference["resources"]["requests"]["memory"]
    assert not [
        d for d in docs if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == LANE_NAME
    ]
    assert find(docs, "PodDisruptionBudget", LANE_NAME)["spec"]["maxUnavailable"] == 1
    # The runner calls the lane; the gateways call inference.
    assert env_of(docs, "jobs")["FERRY_JOBS_INFERENCE_TARGET"] == f"dns:///{LANE_NAME}:50052"
    for gateway in ("gateway", "gateway-uploads"):
        assert env_of(docs, gateway)["FERRY_GATEWAY_INFERENCE_TARGET"] == "dns:///ferry-inference:50052"


def test_networkpolicy_lets_the_runner_and_only_the_runner_reach_the_lane() -> None:
    docs = chart()

    def components(peers: list[dict[str, Any]]) -> set[str]:  # NATS's peers name no component
        return {p["podSelector"]["matchLabels"].get("app.kubernetes.io/component", "") for p in peers}

    lane = find(docs, "NetworkPolicy", LANE_NAME)["spec"]
    [grpc] = [rule for rule in lane["ingress"] if {"protocol": "TCP", "port": 50052} in rule["ports"]]
    assert components(grpc["from"]) == {"jobs"}
    assert lane["egress"] == find(docs, "NetworkPolicy", "ferry-inference")["spec"]["egress"]  # NATS only
    jobs_egress = find(docs, "NetworkPolicy", "ferry-jobs")["spec"]["egress"]
    to_lane = [rule for rule in jobs_egress if "to" in rule and JOB_LANE in components(rule["to"])]
    assert [rule["ports"] for rule in to_lane] == [[{"protocol": "TCP", "port": 50052}]]


def test_lane_off_points_the_runner_at_inference_and_renders_no_lane() -> None:
    docs = chart(inferenceJobs={"enabled": False})
    assert not [d for d in docs if JOB_LANE in d["metadata"]["name"]]
    assert JOB_LANE not in yaml.safe_dump_all(docs)  # no policy names it either
    assert env_of(docs, "jobs")["FERRY_JOBS_INFERENCE_TARGET"] == "dns:///ferry-inference:50052"
    inference = find(docs, "NetworkPolicy", "ferry-inference")["spec"]
    [grpc] = [rule for rule in inference["ingress"] if {"protocol": "TCP", "port": 50052} in rule["ports"]]
    assert "jobs" in {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in grpc["from"]}
