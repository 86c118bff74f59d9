"""The upload lane in every deployment: compose and the Helm chart run `gateway-uploads` as
`ferry up` does (FERRY_UPLOAD_GATEWAYS), and their Envoy sends the bulk bytes there (uploads, result
downloads, large OIP bodies) and nothing else.

What the lane is for (a bulk upload never shares the other tenants' gateway nor takes their CPU
first) is measured on the local stack: tests/e2e/test_uploads.py, benchmarks/bulk.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devstack import edge
from devstack.envoy import (
    BODY_BYTES_HEADER,
    COMMITTED_CONFIG,
    LANE_CALLS_CLUSTER,
    OIP_REST_INFER_PATH,
    RESULT_ROUTES,
    STREAMS_CLUSTER,
    UPLOAD_LANE,
    UPLOADS_CLUSTER,
)
from services.gateway.settings import GatewaySettings
from tests.deploy.test_compose import COMPOSE, ROOT
from tests.deploy.test_helm import SECRETS, _environ, env_of, envoy_validates, find, merged, render

#: Upload routes' exact paths: the gRPC method and REST's POST /v1/uploads.
UPLOAD_PATHS = {match["path"] for match in edge.UPLOADS}
#: Result downloads' routes as Envoy's route matches: GetJobResults and REST's GET /v1/jobs/{id}/results.
RESULT_MATCHES = [{kind: value} for kind, value in RESULT_ROUTES]
LANE_NAME = f"ferry-{UPLOAD_LANE}"


def clusters(config: str) -> dict[str, Any]:
    """Envoy's clusters by name, and (under "routes") each exact path's cluster."""
    bootstrap = yaml.safe_load(config)["static_resources"]
    manager = bootstrap["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    found: dict[str, Any] = {c["name"]: c for c in bootstrap["clusters"]}
    found["routes"] = {
        r["match"]["path"]: r["route"]["cluster"] for r in routes if "path" in r["match"] and "route" in r
    }
    found["every route"] = [{**r["match"], "cluster": r["route"]["cluster"]} for r in routes if "route" in r]
    return found


def address(cluster: dict[str, Any]) -> tuple[str, int]:
    [endpoints] = cluster["load_assignment"]["endpoints"]
    [only] = endpoints["lb_endpoints"]
    socket = only["endpoint"]["address"]["socket_address"]
    return socket["address"], socket["port_value"]


def only_uploads_and_downloads_go_to_the_lane(found: dict[str, Any]) -> None:
    routes = found["routes"]
    paths = UPLOAD_PATHS | {match["path"] for match in RESULT_MATCHES if "path" in match}
    assert {path for path, cluster in routes.items() if cluster == UPLOADS_CLUSTER} == paths
    assert routes["/ferry.models.v1.ModelService/Predict"] == "gateway"
    assert routes["/ferry.jobs.v1.JobService/WatchJob"] == STREAMS_CLUSTER
    # Nothing else reaches the lane's streams: no other route (prefix, regex, catch-all) names it.
    lane = [
        {k: v for k, v in r.items() if k != "cluster"}
        for r in found["every route"]
        if r["cluster"] == UPLOADS_CLUSTER
    ]
    assert len(lane) == len(UPLOAD_PATHS) + len(RESULT_MATCHES)
    assert all(match in lane for match in RESULT_MATCHES)


def large_oip_bodies_go_to_the_lane(found: dict[str, Any]) -> None:
    """Transcoded OIP REST inference calls and native gRPC ModelInfer calls of the gateways'
    off-loop size or more go to the lane's unary cluster (tests/deploy/test_oip_lane_edge.py runs
    it), and only they."""
    routes = [r for r in found["every route"] if r["cluster"] == LANE_CALLS_CLUSTER]
    assert sorted(route["path"] for route in routes) == sorted(
        [OIP_REST_INFER_PATH, edge.OIP_GRPC_INFER["path"]]
    )
    for route in routes:
        [header] = route["headers"]
        assert header["name"] == BODY_BYTES_HEADER
        assert header["range_match"]["start"] == GatewaySettings().oip_rest_off_loop_bytes


def cpu_millicores(quantity: str | int | float) -> int:
    text = str(quantity)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


# --- docker compose ---------------------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    done = subprocess.run(
        [COMPOSE, "-f", "docker-compose.yml", "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["services"])


def test_compose_runs_the_lane_as_a_gateway_that_serves_uploads_at_a_lower_cpu_weight() -> None:
    services = compose_services()
    lane, gateway = services[UPLOAD_LANE], services["gateway"]
    assert lane["command"] == gateway["command"] == ["python", "-m", "services.gateway"]
    # The gateway's settings, but not one of the gateways that split each key's rate limit.
    assert lane["environment"] == {**gateway["environment"], "FERRY_GATEWAY_SHARES_RATE_LIMITS": "false"}
    assert "FERRY_GATEWAY_SHARES_RATE_LIMITS" not in gateway["environment"]
    assert lane["healthcheck"] == gateway["healthcheck"] and lane["depends_on"] == gateway["depends_on"]
    # Its CPU comes after the gateway's (and every other container's: Docker's default weight is 1024).
    assert 0 < lane["cpu_shares"] < min(1024, gateway["cpu_shares"])
    assert UPLOAD_LANE in services["envoy"]["depends_on"]
    assert not lane.get("ports"), "only Envoy publishes a port"


def test_composes_envoy_sends_uploads_and_downloads_and_only_those_to_the_lane() -> None:
    found = clusters(COMMITTED_CONFIG.read_text())
    only_uploads_and_downloads_go_to_the_lane(found)
    large_oip_bodies_go_to_the_lane(found)
    assert address(found[UPLOADS_CLUSTER]) == (UPLOAD_LANE, GatewaySettings().grpc_port)
    assert address(found[LANE_CALLS_CLUSTER]) == (UPLOAD_LANE, GatewaySettings().grpc_port)
    assert (
        address(found["gateway"])
        == address(found[STREAMS_CLUSTER])
        == ("gateway", GatewaySettings().grpc_port)
    )


# --- the Helm chart ---------------------------------------------------------------------------


def chart(**extra: Any) -> list[dict[str, Any]]:
    return render(merged({"secrets": SECRETS["secrets"]}, extra))


def test_chart_runs_the_lane_as_gateways_that_serve_uploads() -> None:
    docs = chart(gateway={"env": {"FERRY_GATEWAY_UPLOAD_MAX_ENTRIES": "500"}})
    service = find(docs, "Service", LANE_NAME)["spec"]
    assert service["clusterIP"] == "None"  # headless: Envoy resolves every lane pod
    assert {p["name"]: p["port"] for p in service["ports"]} == {"grpc": 50051, "metrics": 9101}
    [lane] = find(docs, "Deployment", LANE_NAME)["spec"]["template"]["spec"]["containers"]
    assert lane["command"] == ["python", "-m", "services.gateway"]
    env, gateway = env_of(docs, UPLOAD_LANE), env_of(docs, "gateway")
    assert env.pop("FERRY_GATEWAY_SHARES_RATE_LIMITS") == "false"
    assert "FERRY_GATEWAY_SHARES_RATE_LIMITS" not in gateway
    # Otherwise the gateway's environment, the gateway's env values included (upload limits).
    assert env == gateway and env["FERRY_GATEWAY_UPLOAD_MAX_ENTRIES"] == "500"
    with _environ({k: v for k, v in env_of(docs, UPLOAD_LANE).items() if isinstance(v, str)}):
        assert GatewaySettings().shares_rate_limits is False
    own = chart(gatewayUploads={"env": {"FERRY_GATEWAY_UPLOAD_BUFFER_BYTES": "1048576"}})
    assert env_of(own, UPLOAD_LANE)["FERRY_GATEWAY_UPLOAD_BUFFER_BYTES"] == "1048576"
    assert "FERRY_GATEWAY_UPLOAD_BUFFER_BYTES" not in env_of(own, "gateway")


def test_the_lane_gets_less_cpu_than_the_gateway_so_it_cannot_starve_it() -> None:
    docs = chart()
    [lane] = find(docs, "Deployment", LANE_NAME)["spec"]["template"]["spec"]["containers"]
    [gateway] = find(docs, "Deployment", "ferry-gateway")["spec"]["template"]["spec"]["containers"]
    for kind in ("requests", "limits"):
        ours, theirs = lane["resources"][kind]["cpu"], gateway["resources"][kind]["cpu"]
        assert cpu_millicores(ours) < cpu_millicores(theirs), f"{kind}: lane {ours}, gateway {theirs}"
    # Scaled and drained as the gateway is: its own HPA and a budget that lets one replica drain.
    hpa = find(docs, "HorizontalPodAutoscaler", LANE_NAME)["spec"]
    assert hpa["scaleTargetRef"]["name"] == LANE_NAME and hpa["minReplicas"] >= 1
    assert find(docs, "PodDisruptionBudget", LANE_NAME)["spec"]["maxUnavailable"] == 1
    fixed = chart(gatewayUploads={"hpa": {"enabled": False}, "replicas": 2})
    assert find(fixed, "Deployment", LANE_NAME)["spec"]["replicas"] == 2
    assert not [
        d for d in fixed if d["kind"] == "HorizontalPodAutoscaler" and d["metadata"]["name"] == LANE_NAME
    ]


def test_charts_envoy_sends_uploads_and_downloads_and_only_those_to_the_lane() -> None:
    found = clusters(find(chart(), "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"])
    only_uploads_and_downloads_go_to_the_lane(found)
    large_oip_bodies_go_to_the_lane(found)
    assert address(found[UPLOADS_CLUSTER]) == address(found[LANE_CALLS_CLUSTER]) == (LANE_NAME, 50051)
    assert address(found[STREAMS_CLUSTER]) == ("ferry-gateway", 50051)
    moved = clusters(
        find(chart(gateway={"grpcPort": 50151}), "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"]
    )
    assert address(moved[UPLOADS_CLUSTER]) == (LANE_NAME, 50151)


def test_networkpolicy_lets_envoy_and_only_envoy_reach_the_lane() -> None:
    docs = chart()

    def components(peers: list[dict[str, Any]]) -> set[str]:
        return {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers}

    [to_gateways] = find(docs, "NetworkPolicy", "ferry-envoy")["spec"]["egress"]
    assert UPLOAD_LANE in components(to_gateways["to"])
    assert {"protocol": "TCP", "port": 50051} in to_gateways["ports"]
    lane = find(docs, "NetworkPolicy", LANE_NAME)["spec"]
    assert lane["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == UPLOAD_LANE
    [grpc] = [rule for rule in lane["ingress"] if {"protocol": "TCP", "port": 50051} in rule["ports"]]
    assert components(grpc["from"]) == {"envoy"}
    # It reaches what a gateway reaches (its readiness needs inference, store, the job queue and NATS).
    gateway = find(docs, "NetworkPolicy", "ferry-gateway")["spec"]
    assert lane["egress"] == gateway["egress"]


def test_lane_off_sends_uploads_to_the_gateways_and_renders_no_lane(tmp_path: Path) -> None:
    docs = chart(gatewayUploads={"enabled": False})
    assert not [d for d in docs if UPLOAD_LANE in d["metadata"]["name"]]
    assert UPLOAD_LANE not in yaml.safe_dump_all(docs)  # no policy names it either
    found = clusters(find(docs, "ConfigMap", "ferry-envoy")["data"]["envoy.yaml"])
    assert UPLOADS_CLUSTER not in found and LANE_CALLS_CLUSTER not in found
    assert {found["routes"][path] for path in UPLOAD_PATHS} == {STREAMS_CLUSTER}
    downloads = [
        r for r in found["every route"] if {k: v for k, v in r.items() if k != "cluster"} in RESULT_MATCHES
    ]
    assert len(downloads) == 2 and {r["cluster"] for r in downloads} == {STREAMS_CLUSTER}
    # Large OIP REST bodies: to the gateways, as every other unary call.
    assert found["routes"][OIP_REST_INFER_PATH] == "gateway"
    grpc_infer = [r for r in found["every route"] if r.get("path") == edge.OIP_GRPC_INFER["path"]]
    assert len(grpc_infer) == 2 and {r["cluster"] for r in grpc_infer} == {"gateway"}
    done = envoy_validates(docs, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
