"""The edge's rendered policy, checked without running Envoy (tests/e2e/test_edge.py runs it)."""

from __future__ import annotations

import base64
import json

import yaml

from devstack import body_fields, edge
from devstack.envoy import (
    CONNECTION_WINDOW_BYTES,
    MAX_CONCURRENT_STREAMS,
    STREAM_WINDOW_BYTES,
    EnvoyOptions,
    render,
)
from services.common import limits
from services.common.settings import ServiceSettings
from services.gateway.settings import GatewaySettings


def test_services_accept_every_message_the_edge_lets_through() -> None:
    largest = max(limit.max_bytes for limit in (*edge.ROUTE_LIMITS, edge.DEFAULT_LIMIT))
    assert ServiceSettings().max_message_bytes == limits.MAX_MESSAGE_BYTES >= largest


def test_the_largest_image_fits_the_predict_limit_as_base64_json() -> None:
    image = GatewaySettings().max_image_bytes
    assert len(base64.b64encode(b"\0" * image)) + 4096 < edge.PREDICT_LIMIT.max_bytes


def test_path_templates_become_anchored_lua_patterns() -> None:
    assert body_fields._lua_path_pattern("/v1/{model=models/*}:predict") == "^/v1/models/[^/]+%:predict$"
    assert body_fields._lua_path_pattern("/v1/jobs") == "^/v1/jobs$"
    assert body_fields._lua_path_pattern("/v1/{name=files/**}") == "^/v1/files/.+$"


def test_every_json_body_route_is_checked_by_proto_and_json_names() -> None:
    routes, fields = body_fields.schema()
    roots = {root for _, _, root in routes}
    assert {".ferry.models.v1.PredictRequest", ".ferry.jobs.v1.CreateJobRequest"} <= roots
    predict = fields[".ferry.models.v1.PredictRequest"]
    assert {"top_k", "topK", "request_id", "requestId"} <= set(predict)
    assert predict["image"] == ".ferry.types.v1.Image"  # checked inside
    assert "content" in fields[".ferry.types.v1.Image"]


def test_long_strings_fold_into_yaml_that_reads_back_the_same() -> None:
    value = {"value": "A" * 300 + " b \\ c " * 40 + '"quoted"' + "x" * 200}
    text = "\n".join(edge.folded(f"        {line}") for line in json.dumps(value, indent=2).splitlines())
    assert all(len(part) <= edge.MAX_LINE for part in text.splitlines())
    assert yaml.safe_load(text) == value


def _clusters_by_path(config: str) -> dict[str, str]:
    """Each route's exact path (gRPC methods, /v1/uploads) and the cluster it goes to."""
    routes = yaml.safe_load(config)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"]
    return {
        r["match"]["path"]: r["route"]["cluster"] for r in routes if "path" in r["match"] and "route" in r
    }


def test_unary_calls_streams_and_uploads_go_to_their_own_clusters() -> None:
    lane = _clusters_by_path(render(EnvoyOptions(upload_gateway_ports=(50099,))))
    assert lane["/ferry.models.v1.ModelService/Predict"] == "gateway"  # bounded by the in-flight bound
    assert lane["/ferry.jobs.v1.JobService/WatchJob"] == "gateway_streams"
    assert lane["/ferry.jobs.v1.JobService/CreateUpload"] == lane["/v1/uploads"] == "gateway_uploads"
    # Without an upload lane (FERRY_UPLOAD_GATEWAYS=0, the chart's gatewayUploads.enabled false),
    # uploads are streams of the gateways.
    plain = _clusters_by_path(render(EnvoyOptions()))
    assert plain["/ferry.jobs.v1.JobService/CreateUpload"] == plain["/v1/uploads"] == "gateway_streams"
    assert "gateway_uploads" not in render(EnvoyOptions())


def test_client_connections_are_bounded_as_at_an_edge() -> None:
    """Every rendering (local stack, compose, Helm) bounds what one client connection may hold."""
    config = yaml.safe_load(render(EnvoyOptions()))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["http2_protocol_options"] == {
        "max_concurrent_streams": MAX_CONCURRENT_STREAMS,
        "initial_stream_window_size": STREAM_WINDOW_BYTES,
        "initial_connection_window_size": CONNECTION_WINDOW_BYTES,
    }
    # Envoy's own bounds: a window is 64 KiB to 2 GiB; an upload sends a stream's window per round trip.
    assert 65535 <= STREAM_WINDOW_BYTES <= CONNECTION_WINDOW_BYTES < 2**31
    assert MAX_CONCURRENT_STREAMS < GatewaySettings().max_inflight  # one connection cannot fill the bound


def _disabled_by_match(config: dict) -> dict[str, set[str]]:  # type: ignore[type-arg]
    """Each gateway route's match (as JSON) and the filters it turns off."""
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return {
        json.dumps(route["match"], sort_keys=True): {
            name
            for name, setting in route.get("typed_per_filter_config", {}).items()
            if setting.get("disabled")
        }
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]
        if "route" in route
    }


def test_filters_for_some_calls_are_off_on_the_routes_of_the_others() -> None:
    """A native gRPC call runs no REST body check, no /v2 error rewrite and no /healthz filter (each
    Lua filter is a coroutine per request: docs/benchmarks.md, session 7); the calls they concern
    still pass through them, and the header limits apply to every call."""
    config = yaml.safe_load(render(EnvoyOptions()))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = {item["name"] for item in manager["http_filters"]}
    disabled = _disabled_by_match(config)

    def off(match: dict) -> set[str]:  # type: ignore[type-arg]
        return disabled[json.dumps(match, sort_keys=True)]

    rest_lua, oip_lua = "envoy.filters.http.lua", "ferry.oip_rest.errors"
    health = "envoy.filters.http.health_check"
    assert {rest_lua, oip_lua, health} <= names  # the names still name filters of the chain
    assert off({"path": "/ferry.models.v1.ModelService/Predict"}) == {rest_lua, oip_lua, health}
    assert off({"path": "/inference.GRPCInferenceService/ModelInfer"}) == {rest_lua, oip_lua, health}
    assert off({"safe_regex": {"regex": "/v1/models/[^/]+:predict"}}) == {oip_lua, health}
    assert off({"safe_regex": {"regex": "/v2/models/[^/]+(/versions/[^/]+)?/infer"}}) == {health}
    assert off({"prefix": "/"}) == set()  # /healthz, /v2 calls once transcoded, and the rest
    assert all("ferry.header_limits" not in filters for filters in disabled.values())


def test_only_native_model_infer_looks_its_route_up_again() -> None:
    """The filter that chooses a route again once the body is held (the lane of large ModelInfer
    messages) is off by default and on only for ModelInfer's routes: no other call runs its Lua."""
    config = yaml.safe_load(render(EnvoyOptions(upload_gateway_ports=(50061,))))
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    [again] = [item for item in manager["http_filters"] if item["name"] == edge.ROUTE_AGAIN_LUA]
    assert again["disabled"] is True
    names = [item["name"] for item in manager["http_filters"]]
    assert names.index("ferry.body_bytes") < names.index(
        edge.ROUTE_AGAIN_LUA
    )  # the header it routes by is set
    on = [
        route["match"]
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]
        if "config" in route.get("typed_per_filter_config", {}).get(edge.ROUTE_AGAIN_LUA, {})
    ]
    assert [match["path"] for match in on] == [
        edge.OIP_GRPC_INFER["path"]
    ] * 2  # the lane's route, then the gateways'
    assert "headers" in on[0] and "headers" not in on[1]


def test_model_loads_get_their_long_timeout_after_the_transcoder_too() -> None:
    """A REST model load is routed again on the gRPC path the transcoder rewrites it to: that
    route, not the catch-all's 60 s, bounds the load."""
    manager = yaml.safe_load(render(EnvoyOptions()))["static_resources"]["listeners"][0]["filter_chains"][0][
        "filters"
    ][0]["typed_config"]
    timeouts = {
        route["match"].get("path"): route["route"]["timeout"]
        for route in manager["route_config"]["virtual_hosts"][0]["routes"]
        if "route" in route
    }
    for path in (
        "/ferry.models.v1.ModelService/LoadModel",
        "/ferry.openinference.v1.OpenInferenceRestService/RepositoryModelLoad",
    ):
        assert timeouts[path] == "600s", path
