"""The chart's scale-out fixes, one test each: KEDA optional, rollouts and drains, stream replicas."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from devstack.envoy import UPLOAD_LANE
from tests.deploy.settings_env import unknown_names
from tests.deploy.test_helm import BIN, CHART, SECRETS, SERVICES, env_of, find, merged, render


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
    assert unknown_names("gateway", env_of(docs, UPLOAD_LANE)) == [], UPLOAD_LANE


def egress_extra(docs: list[dict[str, Any]], component: str) -> list[dict[str, Any]]:
    found = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == f"ferry-{component}-egress-extra"
    ]
    return [rule for doc in found for rule in doc["spec"]["egress"]]


def test_dns_rule_reaches_nodelocal_dnscache_and_can_open_port_53() -> None:
    shared = find(plain(), "NetworkPolicy", "ferry-egress-shared")["spec"]["egress"][0]
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in shared["to"]
    anywhere = find(plain(networkPolicy={"dnsPeers": []}), "NetworkPolicy", "ferry-egress-shared")
    rule = anywhere["spec"]["egress"][0]
    assert "to" not in rule and {"protocol": "UDP", "port": 53} in rule["ports"]


def test_egress_presets_open_each_documented_flow_and_nothing_by_default(tmp_path: Path) -> None:
    assert not [d for d in plain() if d["metadata"]["name"].endswith("-egress-extra")]
    docs = plain(networkPolicy={"allow": {"imageUrls": True, "s3": True}})
    policies = [d for d in docs if d["metadata"]["name"].endswith("-egress-extra")]
    files = []
    for doc in policies:
        path = tmp_path / f"{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.37.0", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    gateway_ports = {p["port"] for rule in egress_extra(docs, "gateway") for p in rule["ports"]}
    assert gateway_ports == {80, 443}
    # jobs: a manifest's image URLs (80, 443) and S3 (443)
    assert [p["port"] for rule in egress_extra(docs, "jobs") for p in rule["ports"]] == [80, 443, 443]
    assert egress_extra(docs, "inference") == [] and egress_extra(docs, "store") == []


def test_extra_egress_and_external_postgres_peers() -> None:
    minio = {"to": [{"podSelector": {"matchLabels": {"app": "minio"}}}], "ports": [{"port": 9000}]}
    docs = plain(
        networkPolicy={"extraEgress": {"jobs": [minio]}},
        postgres={"networkPeers": [{"ipBlock": {"cidr": "10.20.0.5/32"}}]},
    )
    assert egress_extra(docs, "jobs") == [minio]
    store = find(docs, "NetworkPolicy", "ferry-store")["spec"]["egress"]
    assert {"ipBlock": {"cidr": "10.20.0.5/32"}} in [peer for rule in store for peer in rule.get("to", [])]


def test_service_monitors_keep_the_labels_the_rules_and_dashboards_query() -> None:
    docs = plain(monitoring={"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    # The upload lane's gateways are targets of the gateways' job, as `ferry up` scrapes them.
    for component, job in [*((c, c) for c in SERVICES), (UPLOAD_LANE, "gateway")]:
        monitor = find(docs, "ServiceMonitor", f"ferry-{component}")
        assert monitor["metadata"]["labels"]["release"] == "kps"
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] == "metrics"
        # The metrics' own `service` label survives (not renamed exported_service) ...
        assert endpoint["honorLabels"] is True
        # ... and the job is ferry-<service> as deploy/prometheus/rules.yml expects.
        assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": f"ferry-{job}"}]
        service = find(docs, "Service", f"ferry-{component}")
        # A ServiceMonitor selects Services by their own labels.
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not [d for d in plain() if d["kind"] in ("ServiceMonitor", "PrometheusRule")]


def test_prometheus_rule_is_the_rules_file_the_suite_tests() -> None:
    committed = CHART.parent.parent / "prometheus" / "rules.yml"
    assert (CHART / "files" / "prometheus-rules.yml").read_text() == committed.read_text()
    rule = find(plain(monitoring={"prometheusRule": {"enabled": True}}), "PrometheusRule", "ferry")
    assert rule["spec"] == yaml.safe_load(committed.read_text())


def test_tls_on_the_public_listener_from_a_secret(tmp_path: Path) -> None:
    from tests.deploy.test_helm import envoy_validates

    docs = plain(envoy={"tls": {"secretName": "ferry-tls"}})
    config = find(docs, "ConfigMap", "ferry-envoy")
    [chain] = yaml.safe_load(config["data"]["envoy.yaml"])["static_resources"]["listeners"][0][
        "filter_chains"
    ]
    assert chain["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    pod = find(docs, "Deployment", "ferry-envoy")["spec"]["template"]["spec"]
    assert {"name": "tls", "secret": {"secretName": "ferry-tls"}} in pod["volumes"]
    [envoy] = pod["containers"]
    assert envoy["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # The real Envoy loads it with a certificate where the Secret would be mounted.
    (tmp_path / "tls").mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ferry",
            "-keyout",
            str(tmp_path / "tls" / "tls.key"),
            "-out",
            str(tmp_path / "tls" / "tls.crt"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    done = envoy_validates(docs, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    plain_chain = yaml.safe_load(find(plain(), "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"])
    assert "transport_socket" not in plain_chain["static_resources"]["listeners"][0]["filter_chains"][0]


def test_values_schema_refuses_what_would_break_in_the_cluster() -> None:
    import pytest

    from tests.deploy.test_helm import helm_python

    for wrong in (
        {"jobs": {"keda": {"enabled": "yes"}}},
        {"nats": {"streamReplicas": 0}},
        {"inference": {"pdb": {"minAvailable": 1, "maxUnavailable": 1}}},
        {"networkPolicy": {"allow": {"imageUrl": True}}},
        {"gateway": {"grpcPort": "50051"}},
        {"gatewayUploads": {"enabled": "yes"}},
        {"envoy": {"concurrency": -1}},
    ):
        with pytest.raises(helm_python.HelmError):
            plain(**wrong)


def test_envoy_memory_fits_its_body_buffers_under_the_overload_manager() -> None:
    from devstack.envoy import ENVOY_HEAP_BYTES

    docs = plain()
    config = yaml.safe_load(find(docs, "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"])
    [monitor] = config["overload_manager"]["resource_monitors"]
    heap = monitor["typed_config"]["max_heap_size_bytes"]
    assert heap == ENVOY_HEAP_BYTES  # the default holds BUFFERED_BODIES bodies of the largest size
    actions = {a["name"] for a in config["overload_manager"]["actions"]}
    assert "envoy.overload_actions.stop_accepting_requests" in actions
    [envoy] = find(docs, "Deployment", "ferry-envoy")["spec"]["template"]["spec"]["containers"]
    limit = envoy["resources"]["limits"]["memory"]
    assert limit.endswith("Gi") and heap < int(limit[:-2]) * 2**30, "the heap must stay below the limit"


def _envoy_args(docs: list[dict[str, Any]]) -> list[str]:
    [envoy] = find(docs, "Deployment", "ferry-envoy")["spec"]["template"]["spec"]["containers"]
    return list(envoy["args"])


def test_envoy_runs_one_worker_per_cpu_of_its_limit() -> None:
    """Envoy's default, a worker per node core, throttled to the pod's CPU limit, leaves workers idle."""

    def workers(**envoy: Any) -> str | None:
        args = _envoy_args(plain(envoy=envoy))
        return args[args.index("--concurrency") + 1] if "--concurrency" in args else None

    limit = yaml.safe_load((CHART / "values.yaml").read_text())["envoy"]["resources"]["limits"]["cpu"]
    assert workers() == str(limit) == "1"
    assert workers(resources={"limits": {"cpu": "2500m"}}) == "3"  # rounded up
    assert workers(resources={"limits": {"cpu": "250m"}}) == "1"  # at least one
    assert workers(resources={"limits": {"cpu": 2}}) == "2"
    assert workers(resources={"limits": {"cpu": "1.5"}}) == "2"
    assert workers(concurrency=4) == "4"  # said outright, it wins
    assert workers(resources={"limits": {"cpu": None}}) is None  # no limit: Envoy's own default
