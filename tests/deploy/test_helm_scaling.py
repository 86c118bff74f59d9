"""The chart's scale-out fixes, one test each: KEDA optional, rollouts and drains, stream replicas."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy.settings_env import unknown_names
from tests.deploy.test_helm import CHART, SECRETS, SERVICES, env_of, find, merged, render


def plain(**extra: Any) -> list[dict[str, Any]]:
    """The default values as a user gives them (``jobs.keda.enabled`` left at ``auto``)."""
    secrets = {"secrets": SECRETS["secrets"]}
    return render(merged(secrets, extra))


def test_without_kedas_api_the_chart_installs_with_fixed_runners() -> None:
    """auto (the default) on a cluster without KEDA's CRDs: no ScaledObject, `replicas` runners."""
    docs = plain(jobs={"replicas": 2})
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert find(docs, "Deployment", "ferry-jobs")["spec"]["replicas"] == 2


def test_keda_true_renders_the_scaled_object_without_asking_the_cluster() -> None:
    docs = plain(jobs={"keda": {"enabled": True}})
    assert find(docs, "ScaledObject", "ferry-jobs")
    assert "replicas" not in find(docs, "Deployment", "ferry-jobs")["spec"]


def test_inference_at_one_replica_lets_a_node_drain() -> None:
    """A PDB of minAvailable 1 over an HPA minimum of 1 would block every drain."""
    pdb = find(plain(), "PodDisruptionBudget", "ferry-inference")["spec"]
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb


def test_gpu_profile_rolls_without_a_spare_gpu() -> None:
    gpu = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
    docs = render(merged(gpu, {"secrets": SECRETS["secrets"]}))
    rolling = find(docs, "Deployment", "ferry-inference")["spec"]["strategy"]["rollingUpdate"]
    assert rolling == {"maxUnavailable": 1, "maxSurge": 0}
    # The other services keep surging first: no capacity dip.
    gateway = find(docs, "Deployment", "ferry-gateway")["spec"]["strategy"]["rollingUpdate"]
    assert gateway == {"maxUnavailable": 0, "maxSurge": 1}


def test_stream_replicas_reach_every_nats_client() -> None:
    docs = plain(nats={"streamReplicas": 3, "url": "nats://a:4222,nats://b:4222,nats://c:4222"})
    for component in ("gateway", "jobs", "store"):
        env = env_of(docs, component)
        assert env[f"FERRY_{component.upper()}_NATS_STREAM_REPLICAS"] == "3"


def test_envoys_upstream_port_is_the_gateways_port_value() -> None:
    docs = plain(gateway={"grpcPort": 50151})
    config = find(docs, "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"]
    assert "port_value: 50151" in config and "port_value: 50051" not in config


def test_every_variable_the_chart_sets_is_a_settings_field() -> None:
    docs = plain()
    for component in SERVICES:
        assert unknown_names(component, env_of(docs, component)) == [], component
