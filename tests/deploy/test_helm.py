"""The Helm chart renders, lints and validates offline for every profile (no cluster, no helm binary).

Rendering and linting use helm-python-sdk (Helm v4 embedded); every rendered manifest goes through
``kubernetes-validate --strict`` (Kubernetes' own OpenAPI schemas, unknown fields rejected) and
KEDA's ScaledObject through a JSON Schema of KEDA's documented fields (deploy/schemas/).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import pytest
import yaml

from devstack import refusal_hold
from devstack.console import console_files as console_names
from devstack.envoy import CHART_FILES, CONTAINER_CONSOLE_DIR, UPLOAD_LANE, chart_configs, container_options
from devstack.envoy import render as render_envoy
from services.common.messaging import WORK_STREAM
from services.gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.jobs.service import QUEUE_SERVICE
from services.jobs.settings import JobsSettings
from services.store.settings import StoreSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "ferry"
KEDA_SCHEMA = ROOT / "deploy" / "schemas" / "keda-scaledobject.schema.json"
BIN = Path(sys.executable).parent
PROFILES = {"default": None, "cpu": "values-cpu.yaml", "gpu": "values-gpu.yaml"}
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas bundled.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
SECRETS = {
    "secrets": {"databaseUrl": "postgresql://ferry:secret@postgres:5432/ferry", "devApiKey": "dev-key"},
    # Offline rendering knows no cluster's APIs: as on a cluster with KEDA installed.
    "jobs": {"keda": {"enabled": True}},
}
SETTINGS = {
    "gateway": GatewaySettings,
    "inference": InferenceSettings,
    "jobs": JobsSettings,
    "store": StoreSettings,
}
SERVICES = tuple(SETTINGS)
#: Every Deployment of the default values: the services, the upload lane (the gateway program) and
#: Envoy (the job lane is off by default: tests/deploy/test_job_lane.py).
DEPLOYED = (*SERVICES, UPLOAD_LANE, "envoy")


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def profile_values(profile: str, **extra: Any) -> dict[str, Any]:
    file = PROFILES[profile]
    values = yaml.safe_load((CHART / file).read_text()) if file else {}
    return merged(merged(values, SECRETS), extra)


def render_text(values: dict[str, Any]) -> dict[str, str]:
    """Helm's output: template path -> rendered YAML (NOTES.txt left out)."""
    chart = helm_python.Chart.load(CHART)
    try:
        rendered = chart.render(values, name="ferry", namespace="ferry", is_install=True)
    finally:
        chart.close()
    return {path: text for path, text in sorted(rendered.items()) if path.endswith(".yaml")}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [doc for text in render_text(values).values() for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=list(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def manifests(profile: str) -> list[dict[str, Any]]:
    return render(profile_values(profile))


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    deployment = find(docs, "Deployment", f"ferry-{component}")
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env_of(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(docs, component)["env"]}


# --- rendering, linting, schemas -------------------------------------------------------------


def test_chart_lints_clean_for_every_profile(profile: str) -> None:
    report = helm_python.lint(CHART, profile_values(profile), strict=True, namespace="ferry")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == [], problems


def test_every_manifest_passes_kubernetes_validate_strict(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    files = []
    for i, doc in enumerate(d for d in manifests if d["apiVersion"] != "keda.sh/v1alpha1"):
        path = tmp_path / f"{i:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        files.append(str(path))
    assert len(files) >= 20
    for version in KUBE_VERSIONS:
        done = subprocess.run(
            [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", version, *files],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"Kubernetes {version}:\n{done.stdout}{done.stderr}"


def keda_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft7Validator(json.loads(KEDA_SCHEMA.read_text()))


def test_scaled_object_matches_kedas_documented_fields(manifests: list[dict[str, Any]]) -> None:
    scaled = find(manifests, "ScaledObject", "ferry-jobs")
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in keda_validator().iter_errors(scaled)]
    assert errors == []


def test_the_keda_schema_check_catches_a_misspelled_field() -> None:
    scaled = find(render(profile_values("default")), "ScaledObject", "ferry-jobs")
    scaled["spec"]["maxReplicas"] = 3  # KEDA calls it maxReplicaCount
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 64  # metadata values are strings
    assert len(list(keda_validator().iter_errors(scaled))) == 2


def test_rendered_yaml_passes_yamllint(profile: str, tmp_path: Path) -> None:
    files = []
    for path, text in render_text(profile_values(profile)).items():
        out = tmp_path / Path(path).name
        out.write_text(text.lstrip("\n"))  # `helm template` prints "---" and a "# Source" line there
        files.append(str(out))
    config = (
        "{extends: default, rules: {document-start: disable,"
        " line-length: {max: 160, allow-non-breakable-inline-mappings: true},"
        " indentation: {indent-sequences: whatever}}}"
    )
    done = subprocess.run(
        [str(BIN / "yamllint"), "-d", config, *files], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_install_without_a_database_url_fails_with_advice() -> None:
    with pytest.raises(helm_python.HelmError, match=r"secrets\.databaseUrl is required"):
        render({})
    existing = render({"secrets": {"existingSecret": "ferry-prod"}})
    assert not [d for d in existing if d["kind"] == "Secret"]
    assert env_of(existing, "store")["FERRY_STORE_DATABASE_URL"]["secretKeyRef"]["name"] == "ferry-prod"


# --- what the chart promises -------------------------------------------------------------------


def test_env_vars_are_the_services_real_settings(manifests: list[dict[str, Any]]) -> None:
    for component, settings in SETTINGS.items():
        prefix = f"FERRY_{component.upper()}_"
        names = {n for n in env_of(manifests, component) if n.startswith(prefix)}
        fields = {prefix + field.upper() for field in settings.model_fields}
        assert names and names <= fields, f"{component}: {sorted(names - fields)} are no settings"
        assert env_of(manifests, component)["FERRY_LOG_FORMAT"] == "json"


def test_the_services_accept_the_rendered_environment(manifests: list[dict[str, Any]]) -> None:
    for component, settings in SETTINGS.items():
        env = {k: v for k, v in env_of(manifests, component).items() if isinstance(v, str)}
        if component == "store":
            env["FERRY_STORE_DATABASE_URL"] = SECRETS["secrets"]["databaseUrl"]
        with _environ(env):
            loaded = settings()
        assert loaded.grpc_host == "0.0.0.0"
    gateway = env_of(manifests, "gateway")
    assert gateway["FERRY_GATEWAY_INFERENCE_TARGET"] == "dns:///ferry-inference:50052"
    assert gateway["FERRY_GATEWAY_STORE_TARGET"] == "dns:///ferry-store:50053"


def test_one_results_url_reaches_the_jobs_that_write_result_files_and_the_gateways_that_read_them() -> None:
    assert "FERRY_JOBS_RESULTS_URL" not in env_of(render(profile_values("default")), "jobs")  # NATS's
    docs = render(profile_values("default", results={"url": "s3://ferry-results/prod"}))
    assert env_of(docs, "jobs")["FERRY_JOBS_RESULTS_URL"] == "s3://ferry-results/prod"
    for gateway in ("gateway", "gateway-uploads"):
        assert env_of(docs, gateway)["FERRY_GATEWAY_RESULTS_URL"] == "s3://ferry-results/prod"


class _environ:
    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.saved = env, dict(os.environ)

    def __enter__(self) -> None:
        os.environ.update(self.env)

    def __exit__(self, *exc: object) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def test_pods_run_non_root_on_a_read_only_root_with_a_writable_tmp(manifests: list[dict[str, Any]]) -> None:
    deployments = [d for d in manifests if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} == {f"ferry-{c}" for c in DEPLOYED}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes["tmp"]
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert c["resources"]["requests"] and c["resources"]["limits"]


def test_services_are_probed_with_grpc_health_and_inference_gets_time_to_load(
    manifests: list[dict[str, Any]],
) -> None:
    for component in SERVICES:
        c = container(manifests, component)
        port = SETTINGS[component]().grpc_port if component != "store" else StoreSettings().grpc_port
        # jobs: the job queue's health (NATS only), not the runners' (inference too): the gateway
        # must reach the queue while inference restarts (services/common/readiness.py).
        queue = {"service": QUEUE_SERVICE} if component == "jobs" else {}
        assert c["readinessProbe"]["grpc"] == {"port": port, **queue}
        assert c["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    startup = container(manifests, "inference")["startupProbe"]
    assert startup["grpc"] == {"port": 50052}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    envoy = container(manifests, "envoy")
    assert envoy["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert envoy["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_gpu_profile_puts_one_gpu_per_inference_pod_on_gpu_nodes() -> None:
    docs = render(profile_values("gpu"))
    inference = container(docs, "inference")
    assert inference["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert env_of(docs, "inference")["FERRY_INFERENCE_DEVICE"] == "cuda"
    assert inference["image"].endswith("-cuda")
    pod = find(docs, "Deployment", "ferry-inference")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # Only inference asks for a GPU.
    others = [container(docs, c) for c in ("gateway", "jobs", "store", "envoy")]
    assert not [c for c in others if "nvidia.com/gpu" in str(c["resources"])]


def test_cpu_profile_asks_for_no_gpu() -> None:
    docs = render(profile_values("cpu"))
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)
    env = env_of(docs, "inference")
    assert env["FERRY_INFERENCE_DEVICE"] == "cpu" and env["FERRY_INFERENCE_TORCH_THREADS"] == "4"
    assert "nodeSelector" not in find(docs, "Deployment", "ferry-inference")["spec"]["template"]["spec"]


def test_gateway_and_inference_autoscale_and_every_part_has_a_disruption_budget(
    manifests: list[dict[str, Any]],
) -> None:
    hpas = {d["spec"]["scaleTargetRef"]["name"] for d in manifests if d["kind"] == "HorizontalPodAutoscaler"}
    assert hpas == {"ferry-gateway", f"ferry-{UPLOAD_LANE}", "ferry-inference"}
    pdbs = {d["metadata"]["name"] for d in manifests if d["kind"] == "PodDisruptionBudget"}
    assert pdbs == {f"ferry-{c}" for c in DEPLOYED}
    for name in ("ferry-gateway", f"ferry-{UPLOAD_LANE}", "ferry-inference", "ferry-jobs"):
        assert "replicas" not in find(manifests, "Deployment", name)["spec"], "the autoscaler owns it"
    assert find(manifests, "Deployment", "ferry-store")["spec"]["replicas"] == 2


def test_job_runners_scale_on_the_work_consumers_backlog(manifests: list[dict[str, Any]]) -> None:
    scaled = find(manifests, "ScaledObject", "ferry-jobs")
    assert scaled["spec"]["scaleTargetRef"] == {"name": "ferry-jobs"}
    triggers = scaled["spec"]["triggers"]
    lanes = [consumer for _, consumer, _ in JobsSettings().lanes()]  # one consumer per priority
    assert [t["metadata"]["consumer"] for t in triggers] == lanes
    for trigger in triggers:
        assert trigger["type"] == "nats-jetstream"
        assert trigger["metadata"]["stream"] == WORK_STREAM
        assert trigger["metadata"]["natsServerMonitoringEndpoint"] == "nats:8222"


def test_without_keda_the_runners_have_a_fixed_count() -> None:
    docs = render(profile_values("default", jobs={"keda": {"enabled": False}, "replicas": 3}))
    assert not [d for d in docs if d["kind"] == "ScaledObject"]
    assert find(docs, "Deployment", "ferry-jobs")["spec"]["replicas"] == 3


def test_only_envoy_is_exposed(manifests: list[dict[str, Any]]) -> None:
    services = {d["metadata"]["name"]: d["spec"] for d in manifests if d["kind"] == "Service"}
    assert services.pop("ferry-envoy")["type"] == "LoadBalancer"
    assert all(spec["clusterIP"] == "None" for spec in services.values())  # headless, in-cluster


def _policy(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return find(docs, "NetworkPolicy", f"ferry-{component}")["spec"]


def _callers(policy: dict[str, Any], port: int) -> list[Any]:
    return [
        rule.get("from")
        for rule in policy.get("ingress", [])
        if {"protocol": "TCP", "port": port} in rule["ports"]
    ]


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {p["port"] for rule in policy.get("egress", []) for p in rule["ports"]}


def test_network_policies_let_in_only_what_each_part_needs(manifests: list[dict[str, Any]]) -> None:
    deny = find(manifests, "NetworkPolicy", "ferry-default-deny")["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    # Envoy's public port is open to all; nothing else is open without a `from`.
    assert _callers(_policy(manifests, "envoy"), 8080) == [None]
    for component in SERVICES:
        for rule in _policy(manifests, component)["ingress"]:
            assert rule.get("from"), f"{component} has an ingress rule open to everyone"

    def components(peers: list[Any]) -> set[str]:
        return {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers}

    # The upload lane is a gateway: Envoy is its only caller, and it calls what a gateway calls.
    gateways = {"gateway", UPLOAD_LANE}
    for gateway in gateways:
        assert components(*_callers(_policy(manifests, gateway), 50051)) == {"envoy"}
    assert components(*_callers(_policy(manifests, "inference"), 50052)) == gateways | {"jobs"}
    # jobs records jobs in store; the gateway calls the job queue jobs serves.
    assert components(*_callers(_policy(manifests, "store"), 50053)) == gateways | {"jobs"}
    assert components(*_callers(_policy(manifests, "jobs"), 50054)) == gateways
    [to_gateways] = _policy(manifests, "envoy")["egress"]
    assert components(to_gateways["to"]) == gateways and to_gateways["ports"] == [
        {"protocol": "TCP", "port": 50051}
    ]
    # Only store reaches Postgres; only the services reach NATS (Envoy does not; inference keeps
    # the models loaded at runtime there, KV ferry_models).
    ports = {c: _egress_ports(_policy(manifests, c)) for c in DEPLOYED}
    assert [c for c, p in ports.items() if 5432 in p] == ["store"]
    assert sorted(c for c, p in ports.items() if 4222 in p) == sorted([*SERVICES, UPLOAD_LANE])


def test_dependencies_in_the_namespace_can_be_guarded_too() -> None:
    docs = render(profile_values("default", networkPolicy={"guardDependencies": {"enabled": True}}))
    postgres = find(docs, "NetworkPolicy", "ferry-postgres-clients")["spec"]
    [rule] = postgres["ingress"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]] == ["store"]
    nats = find(docs, "NetworkPolicy", "ferry-nats-clients")["spec"]
    clients = nats["ingress"][0]["from"]
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in clients) == sorted(
        [*SERVICES, UPLOAD_LANE]
    )


def envoy_validates(docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Runs the real ``envoy --mode validate`` on the rendered Envoy config, its files beside it."""
    config = find(docs, "ConfigMap", "ferry-envoy")
    text = config["data"]["envoy.yaml"]
    for name in ("ferry.pb", "openapi.json"):
        (tmp_path / name).write_bytes(base64.b64decode(config["binaryData"][name]))
        text = text.replace(f"/etc/envoy/{name}", str(tmp_path / name))
    (tmp_path / "console").mkdir(exist_ok=True)
    for name, content in find(docs, "ConfigMap", "ferry-envoy-console")["binaryData"].items():
        (tmp_path / "console" / name).write_bytes(base64.b64decode(content))
    text = text.replace(CONTAINER_CONSOLE_DIR, str(tmp_path / "console"))
    text = text.replace("/etc/envoy/tls", str(tmp_path / "tls"))
    (tmp_path / "envoy.yaml").write_text(text)
    return subprocess.run(
        [
            str(BIN / "envoy"),
            "--mode",
            "validate",
            "-c",
            str(tmp_path / "envoy.yaml"),
            "--use-dynamic-base-id",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def expected_envoy(**changes: Any) -> str:
    """The chart's Envoy config of the default values as devstack/envoy.py renders it, with
    ``changes`` to its options."""
    gateway = yaml.safe_load((CHART / "values.yaml").read_text())["gateway"]
    options = container_options(
        admin_host="127.0.0.1", gateway_host="ferry-gateway", upload_gateway_host=f"ferry-{UPLOAD_LANE}"
    )
    # Envoy's bound on unary calls: each gateway's, for as many gateways as the HPA may run.
    bound = gateway["maxInflight"] * gateway["hpa"]["maxReplicas"]
    return render_envoy(dataclasses.replace(options, gateway_max_inflight=bound, **changes))


def test_envoy_config_is_the_devstack_render_and_the_real_envoy_accepts_it(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    config = find(manifests, "ConfigMap", "ferry-envoy")
    text = config["data"]["envoy.yaml"]
    # The same config (the chart's has a TLS hook in the listener's filter chain, empty here).
    assert yaml.safe_load(text) == yaml.safe_load(expected_envoy())
    assert set(chart_configs()) == {"envoy.yaml", "envoy-traced.yaml"}
    pb = base64.b64decode(config["binaryData"]["ferry.pb"])
    assert pb == (ROOT / "deploy" / "envoy" / "ferry.pb").read_bytes()
    served = base64.b64decode(config["binaryData"]["openapi.json"])
    assert served == (ROOT / "deploy" / "openapi" / "ferry.json").read_bytes()
    console_files = find(manifests, "ConfigMap", "ferry-envoy-console")["binaryData"]
    assert sorted(console_files) == console_names()
    done = envoy_validates(manifests, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.parametrize(
    ("values", "options"),
    [
        ({"refusalsPerS": 0}, {"refusals_per_s": 0}),
        (
            {"refusalsPerS": 50, "holdMs": 2500, "maxHeld": 64},
            {"refusals_per_s": 50, "refusal_hold_ms": 2500, "max_held": 64},
        ),
    ],
)
def test_envoys_refusal_hold_follows_its_values(values: dict[str, int], options: dict[str, int]) -> None:
    """envoy.refusalHold sets what FERRY_ENVOY_REFUSALS_PER_S, _REFUSAL_HOLD_MS and _MAX_HELD set
    locally (devstack/refusal_hold.py); refusalsPerS 0 renders neither of its filters."""
    docs = render(profile_values("default", envoy={"refusalHold": values}))
    text = find(docs, "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"]
    assert yaml.safe_load(text) == yaml.safe_load(expected_envoy(**options))
    assert (refusal_hold.LUA_FILTER in text) is bool(values["refusalsPerS"])


def test_traced_envoy_config_points_at_the_otlp_endpoint() -> None:
    docs = render(profile_values("default", otlp={"endpoint": "http://otel-collector.observability:4317"}))
    text = find(docs, "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"]
    assert "socket_address: {address: otel-collector.observability, port_value: 4317}" in text
    assert "envoy.tracers.opentelemetry" in text
    assert (
        env_of(docs, "gateway")["FERRY_GATEWAY_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    )


def test_chart_files_are_fresh() -> None:
    for name, text in chart_configs().items():
        assert (CHART_FILES / name).read_text() == text, "run `python -m devstack.envoy` and commit"
    assert (CHART_FILES / "ferry.pb").resolve() == (ROOT / "deploy" / "envoy" / "ferry.pb").resolve()


@pytest.fixture(autouse=True, scope="module")
def _quiet_helm() -> Iterator[None]:
    helm_python.disable_logging()
    yield


def test_kubernetes_validate_strict_rejects_a_misspelled_field(tmp_path: Path) -> None:
    deployment = find(render(profile_values("default")), "Deployment", "ferry-gateway")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(deployment))
    done = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(tmp_path / "bad.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "periodSecond" in done.stdout + done.stderr


def test_chart_ports_are_the_services_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component, settings in SETTINGS.items():
        defaults = settings.model_fields
        assert values[component]["grpcPort"] == defaults["grpc_port"].default, component
        assert values[component]["metricsPort"] == defaults["metrics_port"].default, component
