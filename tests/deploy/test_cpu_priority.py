"""CPU priority where teams deploy: compose and the chart give the front door the precedence
`ferry up` gives it with niceness, and carry the settings that keep a bulk job to some cores.

Compose says it with `cpu_shares` (the kernel's weight of the niceness `ferry up` uses); the chart
with CPU requests, which Kubernetes turns into the containers' CPU weights (docs/scaling.md, *CPU
priority*). What the settings buy is measured on the local stack (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from devstack.envoy import UPLOAD_LANE
from devstack.replicas import JOB_LANE
from devstack.settings import StackSettings
from devstack.stack import UPLOAD_NICENESS
from services.inference.settings import InferenceSettings
from services.jobs.settings import JobsSettings
from tests.deploy.test_helm import (
    PROFILES,
    SECRETS,
    container,
    env_of,
    find,
    helm_python,
    merged,
    profile_values,
    render,
)
from tests.deploy.test_job_lane import compose_services
from tests.deploy.test_upload_lane import cpu_millicores

JOB_CORES = {"inference": "FERRY_INFERENCE_JOB_CPUS", "jobs": "FERRY_JOBS_CPUS"}
#: What one Envoy used answering a 400-client flood's 429s (docs/benchmarks.md, *Overload*,
#: sessions 3-4: 0.24-0.44 core): its request must cover it, or inference's burst takes it.
ENVOY_FLOOD_MILLICORES = 440


def chart(**extra: Any) -> list[dict[str, Any]]:
    return render(merged({"secrets": SECRETS["secrets"]}, extra))


# --- a bulk job's cores -------------------------------------------------------------------------


def test_compose_passes_the_job_cores_from_the_shell_and_leaves_them_off_by_default() -> None:
    off = compose_services("--profile", "job-lane")
    for service, name in (*JOB_CORES.items(), ("inference-jobs", JOB_CORES["inference"])):
        assert off[service]["environment"][name] == "", f"{service}: {name} is on by default"
    on = compose_services("--profile", "job-lane", FERRY_INFERENCE_JOB_CPUS="last", FERRY_JOBS_CPUS="4-7")
    assert on["inference"]["environment"]["FERRY_INFERENCE_JOB_CPUS"] == "last"
    assert on["inference-jobs"]["environment"]["FERRY_INFERENCE_JOB_CPUS"] == "last"  # the lane too
    assert on["jobs"]["environment"]["FERRY_JOBS_CPUS"] == "4-7"


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_chart_sets_no_job_cores_by_default(profile: str) -> None:
    docs = render(profile_values(profile))
    for component, name in JOB_CORES.items():
        assert name not in env_of(docs, component)


def test_the_charts_job_cores_reach_inference_the_job_lane_and_jobs_as_env() -> None:
    docs = chart(inference={"jobCpus": "last"}, jobs={"cpus": "2-3"}, inferenceJobs={"enabled": True})
    assert env_of(docs, "inference")["FERRY_INFERENCE_JOB_CPUS"] == "last"
    assert env_of(docs, "inference-jobs")["FERRY_INFERENCE_JOB_CPUS"] == "last"  # inference's values
    assert env_of(docs, "jobs")["FERRY_JOBS_CPUS"] == "2-3"
    own = chart(inference={"jobCpus": "last"}, inferenceJobs={"enabled": True, "jobCpus": "0,2"})
    assert env_of(own, "inference-jobs")["FERRY_INFERENCE_JOB_CPUS"] == "0,2"
    assert env_of(own, "inference")["FERRY_INFERENCE_JOB_CPUS"] == "last"
    # The names are the services' own settings.
    assert InferenceSettings.model_fields["job_cpus"] and JobsSettings.model_fields["cpus"]
    # `--set jobs.cpus=0` arrives as a number: core 0, not "unset".
    assert env_of(chart(jobs={"cpus": 0}), "jobs")["FERRY_JOBS_CPUS"] == "0"


@pytest.mark.parametrize(
    "wrong", [{"inference": {"jobCpus": "first"}}, {"jobs": {"cpus": "1;2"}}, {"jobs": {"cpus": -1}}]
)
def test_the_values_schema_refuses_a_malformed_core_list(wrong: dict[str, Any]) -> None:
    with pytest.raises(helm_python.HelmError, match=r"(?i)cpus"):
        chart(**wrong)


# --- the front door's CPU ---------------------------------------------------------------------


def requested(docs: list[dict[str, Any]], component: str) -> int:
    return cpu_millicores(container(docs, component)["resources"]["requests"]["cpu"])


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_front_doors_requests_cover_its_use_beside_a_busy_inference(profile: str) -> None:
    """A container's CPU weight follows its request, and under contention it gets at least its
    request: Envoy's covers what one Envoy used refusing a flood (100m, a tenth of inference's
    default request, did not); the gateway's HPA adds gateways before their use passes theirs."""
    docs = render(profile_values(profile))
    envoy = requested(docs, "envoy")
    assert envoy >= ENVOY_FLOOD_MILLICORES, f"Envoy requests {envoy}m"
    if profile == "default":  # half an inference pod's weight (it was a tenth)
        assert envoy * 2 >= requested(docs, "inference")
    [metric] = find(docs, "HorizontalPodAutoscaler", "ferry-gateway")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] < 100


def test_the_cpu_profiles_inference_never_borrows_past_its_request() -> None:
    """values-cpu.yaml: inference's limit is its request, so it never takes CPU the front door
    requested, whatever the weights (its 4 CPUs weigh 8x Envoy's 500m)."""
    resources = container(render(profile_values("cpu")), "inference")["resources"]
    assert cpu_millicores(resources["limits"]["cpu"]) == cpu_millicores(resources["requests"]["cpu"])


# --- compose: the niceness `ferry up` uses, as container weights ----------------------------------

#: The kernel's weight of each nice value, -20 to 19 (kernel/sched/core.c, ``sched_prio_to_weight``);
#: Docker's ``cpu_shares`` is the container's cgroup weight on the same scale (default 1024).
NICE_WEIGHTS = (
    *(88761, 71755, 56483, 46273, 36291, 29154, 23254, 18705, 14949, 11916),  # -20 .. -11
    *(9548, 7620, 6100, 4904, 3906, 3121, 2501, 1991, 1586, 1277),  # -10 .. -1
    *(1024, 820, 655, 526, 423, 335, 272, 215, 172, 137),  # 0 .. 9
    *(110, 87, 70, 56, 45, 36, 29, 23, 18, 15),  # 10 .. 19
)


def weight(niceness: int) -> int:
    return NICE_WEIGHTS[niceness + 20]


def test_composes_cpu_shares_are_the_weights_of_ferry_ups_niceness() -> None:
    """Each container that `ferry up` starts at a niceness of its own runs at that niceness's
    weight; the rest at Docker's default (1024, nice 0)."""
    defaults = {name: field.default for name, field in StackSettings.model_fields.items()}
    expected = {
        "envoy": weight(defaults["envoy_niceness"]),
        "gateway": weight(defaults["gateway_niceness"]),
        UPLOAD_LANE: weight(UPLOAD_NICENESS),
        JOB_LANE: weight(defaults["inference_job_lane_niceness"]),
    }
    services = compose_services("--profile", "job-lane")
    for name, spec in services.items():
        assert spec.get("cpu_shares", weight(0)) == expected.get(name, weight(0)), name
    assert expected["envoy"] == 9548 and expected["gateway"] > weight(0)  # today's defaults: -10
