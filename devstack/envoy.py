"""Renders Envoy's config: one public listener, REST transcoded to gRPC, native gRPC passed through.

The same renderer writes the local stack's config, ``deploy/envoy/envoy.yaml`` (docker compose) and
the Helm chart's ``files/envoy*.yaml`` (templates whose gateway and collector addresses Helm fills
in), so the edge behaves identically everywhere. Run ``python -m devstack.envoy`` to refresh them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from devstack import body_fields, console, edge, header_limits, oip_rest_edge, refusal_hold
from services.common import limits
from services.gateway.settings import GatewaySettings
from tools.openapi import OPENAPI_FILE, OPENAPI_PATH
from tools.protogen import DESCRIPTOR_SET, PUBLIC_SERVICES

COMMITTED_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "envoy" / "envoy.yaml"
CHART_FILES = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "ferry" / "files"
#: The transcoder's own bound; the buffer filter's per-route limits (devstack/edge.py) come first.
MAX_BODY_BYTES = limits.MAX_MESSAGE_BYTES
#: Bodies Envoy holds at once, in the worst case each twice (the JSON and its transcoded proto):
#: the heap it is sized for, and the container memory limit above it (the chart's envoy resources).
BUFFERED_BODIES = 12
ENVOY_HEAP_BYTES = 2 * BUFFERED_BODIES * MAX_BODY_BYTES


@dataclass(frozen=True)
class EnvoyOptions:
    """Where Envoy listens and where the gateway is."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 50051
    more_gateway_ports: tuple[int, ...] = ()
    """Ports of further gateway processes on ``gateway_host`` (``FERRY_GATEWAYS``): endpoints of the
    same cluster, balanced over those that pass health checks."""
    upload_gateway_ports: tuple[int, ...] = ()
    """Ports of the gateway processes that take the uploads (CreateUpload), and only those: the
    upload lane (``FERRY_UPLOAD_GATEWAYS``, compose's and the chart's ``gateway-uploads``); none:
    the gateways take them."""
    upload_gateway_host: str = ""
    """Where the upload lane's gateways are (empty: ``gateway_host``): in containers a service of
    its own, whose name resolves to each of its replicas."""
    oip_lane_bytes: int = GatewaySettings.model_fields["oip_rest_off_loop_bytes"].default
    """Open Inference Protocol REST inference bodies of at least this many bytes go to the upload
    lane, when there is one (``FERRY_GATEWAY_OIP_REST_OFF_LOOP_BYTES``: the size from which a
    gateway reads such a body on a worker thread); smaller ones to the gateways."""
    gateway_max_inflight: int = GatewaySettings.model_fields["max_inflight"].default
    """Each gateway's bound on unary calls in flight (``FERRY_GATEWAY_MAX_INFLIGHT``): Envoy lets
    that many per gateway through and refuses the next itself (429 OVERLOADED), so an overloaded
    gateway's CPU goes to the calls it admitted, not to reading and refusing the rest."""
    descriptor_path: str = str(DESCRIPTOR_SET)
    openapi_path: str = str(OPENAPI_FILE)
    """The OpenAPI description Envoy serves at /openapi.json (tools/openapi.py writes it)."""
    console_dir: str = str(console.CONSOLE_DIR)
    """The console's files, served at /console/ (devstack/console.py)."""
    upstream_timeout_s: int = 60
    max_heap_bytes: int = 0
    """The heap Envoy's overload manager watches (0: ``ENVOY_HEAP_BYTES``): past 90 % it shrinks its
    heap, past 95 % it answers new requests 503 at once instead of growing until it is killed."""
    otlp_endpoint: str = ""
    """OTLP/gRPC collector (``http://host:port``); when set, Envoy exports a span for the edge hop."""
    refusals_per_s: int = refusal_hold.REFUSALS_PER_S
    """Refusals a second each Envoy worker answers at full speed, shared among the connections it
    refused lately; a connection refused faster than its share has its next calls held
    at least ``refusal_hold_ms`` (devstack/refusal_hold.py). 0: none is held (no filters)."""
    refusal_hold_ms: int = refusal_hold.HOLD_MS
    """The shortest hold of a call from a connection past its share of refusals."""
    max_held: int = refusal_hold.MAX_HELD
    """Calls held at once, at most; past it a worker closes (GOAWAY) the connection of the next."""


#: Where containers find the console's files: a mount of its own (Kubernetes cannot mount a
#: folder inside /etc/envoy, the ConfigMap's read-only mount).
CONTAINER_CONSOLE_DIR = "/etc/ferry-console"

#: Plain-HTTP health endpoints on the public port, for load balancers without gRPC health.
LIVE_PATH = "/healthz"
READY_PATH = "/readyz"

#: The clusters of the gateways: unary calls (bounded like the gateways' in-flight count), streams.
GATEWAY_CLUSTER = "gateway"
STREAMS_CLUSTER = "gateway_streams"
UPLOADS_CLUSTER = "gateway_uploads"
#: The upload lane's gateways again, for the unary calls sent there (large OIP REST bodies): bounded
#: like the gateways' unary calls, and apart from the uploads' streams so neither takes the
#: other's room.
LANE_CALLS_CLUSTER = "gateway_uploads_calls"
#: The upload lane's processes (``ferry up``), compose service and chart component.
UPLOAD_LANE = "gateway-uploads"
#: Streams (watches, results, uploads) in flight to all gateways: Envoy's default circuit breaker,
#: shared by every tenant; each gateway holds a tenant to its share of limits.MAX_TENANT_STREAMS.
STREAMS_MAX_REQUESTS = limits.EDGE_STREAMS

#: HTTP/2 from clients, as Envoy's edge best practices bound it (Envoy's own defaults are a mesh's:
#: 2^31 streams and 256 MiB windows per connection). A worker reads what a connection has sent in
#: one go, up to its window, and answers every call in it before it turns to the next connection:
#: one client multiplexing hundreds of calls made every other client on that worker wait behind
#: them (issue 17: a lone over-bound call's 429 took 41 ms at 400 clients while Envoy's own time
#: per 429 was 4 ms). Streams past the limit wait in the client's own stack; the windows bound
#: what a connection may send unread. The stream window is 1 MiB, not the page's 64 KiB: a
#: stream's window is also the most an upload sends per round trip (64 KiB over 50 ms is 1.3 MB/s).
MAX_CONCURRENT_STREAMS = 100
STREAM_WINDOW_BYTES = 1024 * 1024
CONNECTION_WINDOW_BYTES = 2 * 1024 * 1024
#: Seconds a client has to send a request's headers, from its first byte: one that starts a request
#: and stalls (slowloris) held the connection until the 5-minute stream idle timeout.
REQUEST_HEADERS_TIMEOUT_S = 10

#: Resends of a request that reached no gateway; with the back-off they cover about 5 s of restart.
RETRIES = 8


def _http2_cluster(
    name: str, host: str, port: int, more_ports: tuple[int, ...] = (), max_requests: int = 0
) -> str:
    """A cluster of HTTP/2 (gRPC) upstreams on ``host`` (``port`` and ``more_ports``), as YAML list item text.

    ``max_requests``: the most requests in flight to the whole cluster (its circuit breaker); one
    more is answered by Envoy itself, 503 with response flag UO (devstack/edge.py maps it to 429
    OVERLOADED). 0: Envoy's defaults (1,024).
    """
    endpoints = "".join(
        f"""
              - endpoint:
                  address:
                    socket_address: {{address: {host}, port_value: {more}}}"""
        for more in more_ports
    )
    return f"""
    - name: {name}
      type: STRICT_DNS
      connect_timeout: 2s{_circuit_breaker(max_requests)}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: {name}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{address: {host}, port_value: {port}}}{endpoints}"""


def _circuit_breaker(max_requests: int) -> str:
    if not max_requests:
        return ""
    # Pending requests (waiting for a connection to a gateway that is starting) count apart; they
    # get the same bound so a restart queues no more than the gateways would hold.
    return f"""
      circuit_breakers:
        thresholds:
          - priority: DEFAULT
            max_requests: {max_requests}
            max_pending_requests: {max_requests}"""


def _otlp_host_port(endpoint: str) -> tuple[str, int]:
    address = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    if address.hostname is None or address.port is None:
        raise ValueError(f"OTLP endpoint {endpoint!r} needs a host and a port, e.g. http://127.0.0.1:4317")
    return address.hostname, address.port


def _tracing(opts: EnvoyOptions) -> tuple[str, str]:
    """The connection manager's tracing block and the collector's cluster, or nothing."""
    if not opts.otlp_endpoint:
        return "", ""
    host, port = _otlp_host_port(opts.otlp_endpoint)
    tracing = """
                tracing:
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      service_name: ferry-envoy
                      grpc_service:
                        envoy_grpc: {cluster_name: otlp}
                        timeout: 1s"""
    cluster = _http2_cluster("otlp", host, port)
    return tracing, cluster


#: Streams that last as long as their job: no route timeout (a client's grpc-timeout still applies).
#: Result downloads: a job's whole file (about 26 MB at 10,000 items and top_k 100) goes out through
#: the upload lane where there is one, as uploads come in through it: sending it kept the callers'
#: gateway's loop busy, and another tenant's calls there took 2.7x their quiet p50 meanwhile.
RESULT_ROUTES = (
    ("path", "/ferry.jobs.v1.JobService/GetJobResults"),
    ("safe_regex", {"regex": "/v1/jobs/[^/]+/results"}),
)
STREAMING_ROUTES = (
    ("path", "/ferry.jobs.v1.JobService/WatchJob"),
    ("safe_regex", {"regex": "/v1/jobs/[^/]+:watch"}),
    *RESULT_ROUTES,
)


#: Loading a model reads its weights, warms it up and may measure its batch size: minutes, not 60 s.
MODEL_LOAD_ROUTES = (
    ("path", "/ferry.models.v1.ModelService/LoadModel"),
    ("safe_regex", {"regex": "/v1/models/[^/]+:load"}),
    ("path", "/inference.GRPCInferenceService/RepositoryModelLoad"),
    ("safe_regex", {"regex": "/v2/repository/models/[^/]+/load"}),
    # The same REST call once the transcoder has rewritten its path: the route is looked up again
    # then, and the catch-all's 60 s would end a slow load.
    ("path", "/ferry.openinference.v1.OpenInferenceRestService/RepositoryModelLoad"),
)
MODEL_LOAD_TIMEOUT_S = 600


def _model_load_routes() -> str:
    """Routes of model loads (admin): a longer timeout than other calls."""
    return "".join(
        _route({kind: value}, MODEL_LOAD_TIMEOUT_S, MODEL_LOAD_TIMEOUT_S) for kind, value in MODEL_LOAD_ROUTES
    )


#: gRPC-Web (a browser's gRPC: ``application/grpc-web`` and ``-text``, trailers in the body) turned
#: into gRPC for every filter after it and the gateway, and its answers back; before it, a gRPC-Web
#: call was no route's and got a plain-text 404. Right after the header limits, so that the body
#: checks, the in-flight bound and the local replies treat it as the gRPC call it carries.
GRPC_WEB_FILTER = """
                  - name: envoy.filters.http.grpc_web
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"""


#: Filters that concern only some requests, turned off on the routes of the others so that a call
#: does not pay for them (a Lua filter runs a coroutine of its script per request, and the /v2
#: one a second per answer; docs/benchmarks.md, session 7). Each such filter's script returns at
#: once for the requests of the routes it is off on: the refusals they make stand.
#: Body depth and fields (devstack/body_fields.py): REST bodies, whose paths begin /v.
REST_BODY_LUA = "envoy.filters.http.lua"
#: The Open Inference Protocol's REST error shape (devstack/oip_rest_edge.py): /v2 paths, and the
#: gRPC paths the transcoder turns them into (its route is looked up again after it rewrites a path).
OIP_REST_LUA = "ferry.oip_rest.errors"
OIP_REST_PATHS = ("/v2", "/ferry.openinference.")
#: /healthz and /readyz: only the catch-all route matches them.
HEALTH_FILTER = "envoy.filters.http.health_check"
CATCH_ALL: edge.Match = {"prefix": "/"}


def _skipped(match: edge.Match) -> tuple[str, ...]:
    """The filters a route's requests never concern (see REST_BODY_LUA and the others)."""
    if match == CATCH_ALL:
        return ()
    path = match.get("path") or match.get("prefix") or match["safe_regex"]["regex"]
    skipped: tuple[str, ...] = (HEALTH_FILTER,)
    if not path.startswith(OIP_REST_PATHS):
        skipped += (OIP_REST_LUA,)
    if not path.startswith("/v"):
        skipped += (REST_BODY_LUA,)
    return skipped


def _stream_bound(timeout_s: int) -> str:
    """A unary route's bound on a call without grpc-timeout (every REST call, a gRPC call with no
    deadline), as route YAML text: with ``grpc_timeout_header_max`` set, Envoy applies the route's
    ``timeout`` to no gRPC upstream call (transcoded REST included), and such a call to a hung
    gateway was held until the client gave up. Counted from the call's start, its body included;
    Envoy answers 408 (EDGE_DEADLINE_EXCEEDED, devstack/edge.py) or DEADLINE_EXCEEDED. None for
    streams (timeout 0)."""
    if not timeout_s:
        return ""
    return f"""
                              max_stream_duration: {timeout_s}s"""


def _route(
    match: edge.Match,
    timeout_s: int,
    grpc_timeout_max_s: int,
    limit: edge.BodyLimit | None = None,
    cluster: str = GATEWAY_CLUSTER,
) -> str:
    """One route to a gateway cluster, as YAML list item text; ``limit``: its own body limit."""
    return f"""
                        - match:{_match_text(match)}
                          route:
                            cluster: {cluster}
                            timeout: {timeout_s}s
                            # A gRPC client's own deadline (grpc-timeout) wins when shorter.
                            max_stream_duration:{_stream_bound(timeout_s)}
                              grpc_timeout_header_max: {grpc_timeout_max_s}s
                            # A request a gateway reset, cancelled or never got (one restarting:
                            # gRPC cancels calls that arrive as its server stops) is sent again.
                            # Resending is safe: writes take their ids from the client's request_id
                            # or else from the edge's stamp, which a resend keeps (idempotency.py).
                            retry_policy:
                              retry_on: connect-failure,refused-stream,reset,cancelled
                              num_retries: {RETRIES}
                              retry_back_off: {{base_interval: 0.1s, max_interval: 1s}}
                          # When the edge got the request: with x-request-id, what ids of writes
                          # without a request_id derive from; a resend keeps both.
                          request_headers_to_add:
                            - header: {{key: x-ferry-edge-ms, value: "%START_TIME(%s%3f)%"}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                            # gRPC servers reset a call without it, which came back UNAVAILABLE
                            # (retry!) to a gRPC client that left it out (curl over HTTP/1.1).
                            - header: {{key: te, value: trailers}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD""" + edge.route_filter_config(
        limit, _skipped(match), _enabled(match)
    )


def _enabled(match: edge.Match) -> tuple[str, ...]:
    """The filters off by default that a route's requests need: native gRPC ModelInfer's route is
    looked up again once its body is held (edge.ROUTE_AGAIN_LUA, _large_oip_grpc_route)."""
    return (edge.ROUTE_AGAIN_LUA,) if match.get("path") == edge.OIP_GRPC_INFER["path"] else ()


def _match_text(match: edge.Match) -> str:
    """A route's match as YAML text after ``match:``: on its line, or with headers one key a line
    and each header on its own (the chart's lines are held to 160 characters)."""
    if "headers" not in match:
        return f" {json.dumps(match)}"
    pad = "\n" + " " * 28
    keys = "".join(f"{pad}{key}: {json.dumps(value)}" for key, value in match.items() if key != "headers")
    headers = "".join(f"{pad}  - {json.dumps(header)}" for header in match["headers"])
    return f"{keys}{pad}headers:{headers}"


#: /readyz: at least one healthy gateway (no hosts at all is 503 too).
READY_NEEDS = """
                      # At least one healthy gateway (no hosts at all is 503 too).
                      cluster_min_healthy_percentages:
                        gateway: {value: 1}"""


def _health_filter(path: str, needs: str = "") -> str:
    """An HTTP health-check filter answering ``path`` itself, as YAML list item text."""
    return f"""
                  - name: envoy.filters.http.health_check
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck
                      pass_through_mode: false
                      headers:
                        - name: ":path"
                          string_match: {{exact: "{path}"}}{needs}"""


def _stream_cluster(opts: EnvoyOptions, route: tuple[str, Any]) -> str:
    return UPLOADS_CLUSTER if opts.upload_gateway_ports and route in RESULT_ROUTES else STREAMS_CLUSTER


def _streamed_cluster(opts: EnvoyOptions, match: edge.Match) -> str:
    return UPLOADS_CLUSTER if opts.upload_gateway_ports and match in edge.UPLOADS else STREAMS_CLUSTER


def _routes(opts: EnvoyOptions) -> str:
    streams = "".join(
        _route({kind: value}, timeout_s=0, grpc_timeout_max_s=0, cluster=_stream_cluster(opts, (kind, value)))
        for kind, value in STREAMING_ROUTES
    ) + "".join(
        _route(match, 0, 0, edge.STREAMED, _streamed_cluster(opts, match)) for match in edge.STREAMED.matches
    )
    limited = "".join(
        _route(match, opts.upstream_timeout_s, opts.upstream_timeout_s, limit)
        for limit in edge.ROUTE_LIMITS
        for match in limit.matches
    )
    catch_all = _route(CATCH_ALL, opts.upstream_timeout_s, opts.upstream_timeout_s)
    return (
        streams
        + _large_oip_grpc_route(opts)
        + limited
        + _model_load_routes()
        + _large_oip_route(opts)
        + catch_all
    )


#: Where the transcoder sends ``POST /v2/models/{m}[/versions/{v}]/infer``: the path the route is
#: looked up again on once it has rewritten the request (see MODEL_LOAD_ROUTES).
OIP_REST_INFER_PATH = "/ferry.openinference.v1.OpenInferenceRestService/InferModel"
#: The request body's length as the transcoder got it (BODY_BYTES_FILTER): the transcoder drops
#: ``content-length`` when it rewrites the request, so the route looked up after it cannot read it.
BODY_BYTES_HEADER = "x-ferry-body-bytes"
#: Envoy's range_match ends before its ``end``: every int64 from its ``start``.
_INT64_END = 2**63 - 1


def _large_oip_route(opts: EnvoyOptions) -> str:
    """The route of large OIP REST inference bodies to the upload lane, as route YAML text; none
    without a lane. Such a body is JSON that a gateway's interpreter parses in one piece whatever
    thread it is on (``json`` holds the GIL: 0.35 s for 15 MiB of short strings), so every other
    call to that gateway waited; on the lane it waits for no one but the lane's uploads. The route
    matches the transcoded request, the one that goes upstream (the route the REST path matched
    chose the body limit: the predict routes', devstack/edge.py)."""
    if not opts.upload_gateway_ports:
        return ""
    match = {"path": OIP_REST_INFER_PATH, "headers": [_large_body(opts)]}
    return _route(match, opts.upstream_timeout_s, opts.upstream_timeout_s, cluster=LANE_CALLS_CLUSTER)


def _large_body(opts: EnvoyOptions) -> edge.Match:
    """A header match of a body of ``oip_lane_bytes`` or more (BODY_BYTES_HEADER)."""
    return {"name": BODY_BYTES_HEADER, "range_match": {"start": opts.oip_lane_bytes, "end": _INT64_END}}


def _large_oip_grpc_route(opts: EnvoyOptions) -> str:
    """The route of large native gRPC ``ModelInfer`` messages to the upload lane, as route YAML
    text; none without a lane. gRPC parses a message whole on the gateway's event loop before any
    Ferry code sees it (5 million one-byte BYTES elements, 14 MiB: 0.5 s and 450 MB), so every
    other call to that gateway waited. A gRPC call has no length when Envoy first picks its route:
    the buffer filter holds the body (the predict limit) and gives it one, and the route is looked
    up again then (edge.ROUTE_AGAIN_LUA), which this route, ahead of the predict routes, matches.
    It has the predict limit too: a client's own BODY_BYTES_HEADER can make the first look-up
    choose it, and the body limit comes from that one (the header is Envoy's by the second)."""
    if not opts.upload_gateway_ports:
        return ""
    match = {**edge.OIP_GRPC_INFER, "headers": [_large_body(opts)]}
    timeout = opts.upstream_timeout_s
    return _route(match, timeout, timeout, edge.PREDICT_LIMIT, cluster=LANE_CALLS_CLUSTER)


#: Writes BODY_BYTES_HEADER, after the buffer filter (which holds the whole body and gives one sent
#: without a length, chunked, its ``content-length``) and before the transcoder. A client's own
#: value is removed first: with no length to write, the header is left out, never the client's.
BODY_BYTES_FILTER = f"""
                  - name: ferry.body_bytes
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
                      mutations:
                        request_mutations:
                          - remove: {BODY_BYTES_HEADER}
                          - append:
                              header: {{key: {BODY_BYTES_HEADER}, value: "%REQ(content-length)%"}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"""


def _max_requests(opts: EnvoyOptions) -> int:
    """Unary calls Envoy lets through to all gateways at once: each gateway's in-flight bound."""
    return (1 + len(opts.more_gateway_ports)) * opts.gateway_max_inflight


#: Several gateways: never route to one that fails its health checks. Envoy's default (panic below
#: 50 % healthy: route to all) would send calls to stopped gateways when 2 of 3 are out.
_NO_PANIC = "\n      common_lb_config:\n        healthy_panic_threshold: {value: 0}"
#: Envoy sends traffic only to gateway replicas that answer gRPC health SERVING. Checked as often
#: while no request has been routed yet (Envoy's default then is 60 s), so /readyz turns 200 within
#: seconds of the first gateway becoming SERVING.
_GATEWAY_HEALTH = """
      health_checks:
        - timeout: 1s
          interval: 2s
          no_traffic_interval: 2s
          unhealthy_threshold: 2
          healthy_threshold: 1
          grpc_health_check: {}"""


def _gateway_clusters(opts: EnvoyOptions) -> str:
    """The gateways as two clusters, as YAML list items text: ``gateway`` for unary calls, bounded
    by the gateways' in-flight bound (Envoy refuses the excess itself, before any gateway reads
    it), and ``gateway_streams`` for streams (watches, results, reflection; uploads when there is
    no upload lane), which the gateways do not count and which must not take the unary calls' room;
    then the upload lane's cluster, when there is one."""
    no_panic = _NO_PANIC if opts.more_gateway_ports else ""
    clusters = (
        (GATEWAY_CLUSTER, _max_requests(opts)),
        (STREAMS_CLUSTER, STREAMS_MAX_REQUESTS),
    )
    text = "".join(
        _http2_cluster(name, opts.gateway_host, opts.gateway_port, opts.more_gateway_ports, bound)
        + no_panic
        + _GATEWAY_HEALTH
        for name, bound in clusters
    )
    return text + _uploads_cluster(opts)


def _uploads_cluster(opts: EnvoyOptions) -> str:
    """The upload lane's gateways as clusters of their own (its streams, its unary calls), as YAML
    list items text; none without a lane."""
    if not opts.upload_gateway_ports:
        return ""
    first, *more = opts.upload_gateway_ports
    host = opts.upload_gateway_host or opts.gateway_host
    calls = len(opts.upload_gateway_ports) * opts.gateway_max_inflight
    return "".join(
        _http2_cluster(name, host, first, tuple(more), bound) + (_NO_PANIC if more else "") + _GATEWAY_HEALTH
        for name, bound in ((UPLOADS_CLUSTER, STREAMS_MAX_REQUESTS), (LANE_CALLS_CLUSTER, calls))
    )


def _refusal_hold(opts: EnvoyOptions) -> str:
    """The filters that hold a connection's calls past its share of refusals; after gRPC-Web's, so
    that they see a browser's call as the gRPC call it carries, and before any that reads a body."""
    return refusal_hold.filters(opts.refusals_per_s, opts.refusal_hold_ms, opts.max_held)


def render(opts: EnvoyOptions) -> str:
    """Returns the Envoy bootstrap config as YAML."""
    services = "".join(f"\n                        - {name}" for name in PUBLIC_SERVICES)
    tracing, otlp_cluster = _tracing(opts)
    method = f"%REQ({edge.ORIGINAL_METHOD_HEADER.upper()}?:METHOD)%"
    return f"""\
# Generated by `python -m devstack.envoy`; edit devstack/envoy.py, not this file.
admin:
  address:
    socket_address: {{address: {opts.admin_host}, port_value: {opts.admin_port}}}
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
    - name: envoy.resource_monitors.fixed_heap
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
        max_heap_size_bytes: {opts.max_heap_bytes or ENVOY_HEAP_BYTES}
  actions:
    - name: envoy.overload_actions.shrink_heap
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold: {{value: 0.90}}
    - name: envoy.overload_actions.stop_accepting_requests
      triggers:
        - name: envoy.resource_monitors.fixed_heap
          threshold: {{value: 0.95}}
static_resources:
  listeners:
    - name: public
      address:
        socket_address: {{address: {opts.listen_host}, port_value: {opts.listen_port}}}
      # Images arrive base64 in JSON bodies; the transcoder buffers whole bodies.
      per_connection_buffer_limit_bytes: {MAX_BODY_BYTES}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: public
                codec_type: AUTO
                http2_protocol_options:
                  max_concurrent_streams: {MAX_CONCURRENT_STREAMS}
                  initial_stream_window_size: {STREAM_WINDOW_BYTES}
                  initial_connection_window_size: {CONNECTION_WINDOW_BYTES}
                # The codecs' bounds, well above Ferry's limits: past these a gRPC call's stream is
                # reset with no status, so the limits themselves are a filter's, which answers
                # HEADERS_TOO_LARGE naming them (devstack/header_limits.py; services/common/limits.py).
                max_request_headers_kb: {limits.EDGE_CODEC_HEADERS_BYTES // 1024}
                common_http_protocol_options:
                  max_headers_count: {limits.EDGE_CODEC_HEADERS_COUNT}
                # HTTP/1.0 clients (ApacheBench, old load balancers' probes) got 426 Upgrade
                # Required, a plain-text body; Envoy answers them as 1.1 clients, closing after.
                http_protocol_options:
                  accept_http_10: true
                  default_host_for_http_10: ferry
                # A request's headers must arrive within this of its first byte (Envoy's edge
                # practice): a client that stalls mid-headers loses the connection, not holds it.
                request_headers_timeout: {REQUEST_HEADERS_TIMEOUT_S}s
                generate_request_id: true
                # Envoy is the edge: it sets the x-request-id that writes without a request_id
                # derive their ids from (services/gateway/idempotency.py).
                use_remote_address: true{tracing}
                # Envoy's own errors (413, malformed JSON, unknown paths, timeouts, no gateway) in
                # the gateway's error shape, for REST and native gRPC alike (devstack/edge.py).{edge.local_reply_yaml(16, READY_PATH)}
                # One JSON line per request on stdout, in the services' log shape (services/common/logs.py);
                # load balancers' /healthz and /readyz probes are left out. trace_id is set when tracing is.
                access_log:
                  - name: envoy.access_loggers.stdout
                    filter: {{not_health_check_filter: {{}}}}
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
                      log_format:
                        json_format:
                          time: "%START_TIME(%Y-%m-%dT%H:%M:%S.%3f%z)%"
                          level: INFO
                          service: ferry-envoy
                          logger: envoy.access
                          message: "{method} %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%"
                          method: "{method}"
                          path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                          code: "%RESPONSE_CODE%"
                          grpc_status: "%GRPC_STATUS%"
                          duration_ms: "%DURATION%"
                          trace_id: "%TRACE_ID%"
                          request_id: "%REQ(X-REQUEST-ID)%"
                          upstream: "%UPSTREAM_HOST%"
                route_config:
                  name: public
                  # /openapi.json (about 70 KB) and the console's files are direct responses.
                  max_direct_response_body_size_bytes: {edge.MAX_DIRECT_RESPONSE_BYTES}
                  virtual_hosts:
                    - name: ferry
                      domains: ["*"]
                      routes:{edge.connect_route()}{edge.openapi_route(OPENAPI_PATH, opts.openapi_path)}{console.routes(opts.console_dir)}{edge.method_not_allowed_routes()}{_routes(opts)}
                http_filters:{header_limits.lua_filter()}{edge.original_method_filter()}{GRPC_WEB_FILTER}{_refusal_hold(opts)}{oip_rest_edge.lua_filter()}
                  # Load balancers that cannot speak gRPC health: GET /healthz is 200 while Envoy
                  # runs (503 once it drains), GET /readyz is 200 while a gateway answers SERVING
                  # to Envoy's own gRPC health checks (the gateway is SERVING only when its
                  # dependencies are). Both answer here, before the transcoder sees the path.{_health_filter(LIVE_PATH)}{_health_filter(READY_PATH, READY_NEEDS)}{edge.buffer_filter()}{body_fields.lua_filter()}{BODY_BYTES_FILTER}{edge.route_again_filter()}
                  - name: envoy.filters.http.grpc_json_transcoder
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder
                      proto_descriptor: {opts.descriptor_path}
                      services:{services}
                      convert_grpc_status: true
                      max_request_body_size: {MAX_BODY_BYTES}
                      max_response_body_size: {MAX_BODY_BYTES}
                      print_options:
                        always_print_primitive_fields: true
                        preserve_proto_field_names: true
                        # A server stream (WatchJob) reads as one JSON object per line with curl.
                        stream_newline_delimited: true
                      request_validation_options:
                        reject_unknown_method: true
                        reject_unknown_query_parameters: true
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{_gateway_clusters(opts).lstrip(chr(10))}{otlp_cluster}
"""


#: Stand-ins replaced by Helm template actions in the chart's copies (see ``chart_configs``).
_GATEWAY_STANDIN = "gateway.standin.invalid"
_OTLP_STANDIN = "otlp.standin.invalid"
_OTLP_STANDIN_PORT = 65417
_GATEWAY_STANDIN_PORT = 65051
#: A stand-in in-flight bound (a value no other line has) replaced by the chart's own sizing.
_INFLIGHT_STANDIN = 65432
_UPLOADS_STANDIN = "uploads.standin.invalid"
#: Stand-in refusal-hold settings (values no other line has) replaced by the chart's values
#: (values.yaml ``envoy.refusalHold``).
_REFUSAL_HOLD_STANDINS = {
    "refusals_per_s": (65201, "refusalsPerS"),
    "refusal_hold_ms": (65202, "holdMs"),
    "max_held": (65203, "maxHeld"),
}
#: The chart's switch of the upload lane (values.yaml ``gatewayUploads.enabled``).
_LANE_ON = ".Values.gatewayUploads.enabled"


def _upload_lane_switch(text: str, lane_clusters: str) -> str:
    """The chart's config has the upload lane only where ``gatewayUploads.enabled``: its clusters
    inside a Helm ``if``, and the cluster of the routes to it chosen by the same value (uploads and
    result downloads go to the gateways' streams without it, large OIP REST bodies to the gateways)."""
    assert text.count(lane_clusters) == 1, "the upload lane's clusters moved: update chart_configs"
    text = text.replace(lane_clusters, f"{{{{- if {_LANE_ON} }}}}{lane_clusters}{{{{- end }}}}")
    for lane, instead, count in (
        (UPLOADS_CLUSTER, STREAMS_CLUSTER, len(edge.UPLOADS) + len(RESULT_ROUTES)),
        (LANE_CALLS_CLUSTER, GATEWAY_CLUSTER, 2),  # large OIP REST bodies, large gRPC ModelInfer
    ):
        routed = f"cluster: {lane}\n"
        assert text.count(routed) == count, "the routes to the lane moved: update chart_configs"
        text = text.replace(routed, f'cluster: {{{{ ternary "{lane}" "{instead}" {_LANE_ON} }}}}\n')
    return text


def _refusal_hold_values(text: str, options: EnvoyOptions) -> str:
    """The chart's refusal hold follows ``envoy.refusalHold`` (devstack/refusal_hold.py): its filters
    only where ``refusalsPerS`` is above 0 (``FERRY_ENVOY_REFUSALS_PER_S=0``), each stand-in setting
    the value's number."""
    hold = refusal_hold.filters(options.refusals_per_s, options.refusal_hold_ms, options.max_held)
    assert text.count(hold) == 1, "the refusal hold's filters moved: update chart_configs"
    on = "gt (int .Values.envoy.refusalHold.refusalsPerS) 0"
    text = text.replace(hold, f"{{{{- if {on} }}}}{hold}{{{{- end }}}}")
    for standin, value in _REFUSAL_HOLD_STANDINS.values():
        # Each in the filters only (no other line has the number), and in them at least once.
        assert text.count(str(standin)) == hold.count(str(standin)) > 0, "update chart_configs"
        text = text.replace(str(standin), f"{{{{ int .Values.envoy.refusalHold.{value} }}}}")
    return text


def container_options(
    admin_host: str = "0.0.0.0",
    gateway_host: str = "gateway",
    otlp_endpoint: str = "",
    upload_gateway_host: str = UPLOAD_LANE,
) -> EnvoyOptions:
    """Options of the containerised Envoy: public on 8080, descriptor set at /etc/envoy/ferry.pb.

    ``upload_gateway_host``: the upload lane's service, its gateways on the gateway's port (the
    same program with the same settings); empty: no lane, uploads go to the gateways.
    """
    gateway_port = EnvoyOptions.gateway_port
    return EnvoyOptions(
        listen_host="0.0.0.0",
        admin_host=admin_host,
        gateway_host=gateway_host,
        gateway_port=gateway_port,
        upload_gateway_host=upload_gateway_host,
        upload_gateway_ports=(gateway_port,) if upload_gateway_host else (),
        descriptor_path="/etc/envoy/ferry.pb",
        openapi_path="/etc/envoy/openapi.json",
        console_dir=CONTAINER_CONSOLE_DIR,
        otlp_endpoint=otlp_endpoint,
    )


def chart_configs() -> dict[str, str]:
    """The Helm chart's Envoy configs (untraced and traced), as templates for Helm's ``tpl``.

    On Kubernetes the admin interface listens on localhost only (probes use /healthz and /readyz
    on the public port), and the gateway is the chart's headless Service.
    """
    gateway = '{{ include "ferry.fullname" . }}-gateway'
    hold_standins: dict[str, Any] = {field: standin for field, (standin, _) in _REFUSAL_HOLD_STANDINS.items()}
    configs = {}
    for name, otlp in (
        ("envoy.yaml", ""),
        ("envoy-traced.yaml", f"http://{_OTLP_STANDIN}:{_OTLP_STANDIN_PORT}"),
    ):
        options = dataclasses.replace(
            container_options(
                admin_host="127.0.0.1",
                gateway_host=_GATEWAY_STANDIN,
                otlp_endpoint=otlp,
                upload_gateway_host=_UPLOADS_STANDIN,
            ),
            gateway_port=_GATEWAY_STANDIN_PORT,
            upload_gateway_ports=(_GATEWAY_STANDIN_PORT,),
            gateway_max_inflight=_INFLIGHT_STANDIN,
            **hold_standins,
        )
        text = _upload_lane_switch(render(options), _uploads_cluster(options))
        text = _refusal_hold_values(text, options)
        text = text.replace(_UPLOADS_STANDIN, f'{{{{ include "ferry.fullname" . }}}}-{UPLOAD_LANE}')
        text = text.replace(_GATEWAY_STANDIN, gateway)
        # The public listener's TLS, when envoy.tls.secretName names a certificate (templates/_helpers.tpl).
        chains = "      filter_chains:\n        - filters:"
        assert chains in text, "the public listener's filter chain moved: update chart_configs"
        text = text.replace(
            chains,
            '      filter_chains:\n        -{{ with include "ferry.envoyTls" . }}{{ . | nindent 10 }}{{ end }}\n          filters:',
            1,
        )
        text = text.replace(
            f"port_value: {_GATEWAY_STANDIN_PORT}", "port_value: {{ .Values.gateway.grpcPort }}"
        )
        # The heap the overload manager watches follows the pod's memory (templates/_helpers.tpl).
        text = text.replace(
            f"max_heap_size_bytes: {ENVOY_HEAP_BYTES}",
            'max_heap_size_bytes: {{ include "ferry.envoyHeapBytes" . }}',
        )
        # Envoy's bound on unary calls follows the gateways' (templates/_helpers.tpl).
        # The lane's unary calls get the same (its gateways refuse past their own in-flight bound).
        assert text.count(str(_INFLIGHT_STANDIN)) == 4, "the circuit breakers moved: update chart_configs"
        text = text.replace(str(_INFLIGHT_STANDIN), '{{ include "ferry.envoyMaxRequests" . }}')
        text = text.replace(_OTLP_STANDIN, '{{ include "ferry.otlpHost" . }}')
        text = text.replace(str(_OTLP_STANDIN_PORT), '{{ include "ferry.otlpPort" . }}')
        configs[name] = text.replace(
            "# Generated by `python -m devstack.envoy`",
            "# Generated by `python -m devstack.envoy` (a Helm template: rendered with tpl)",
        )
    return configs


def main(argv: list[str] | None = None) -> int:
    """Writes the container deployments' Envoy configs: compose's and the Helm chart's."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=COMMITTED_CONFIG)
    parser.add_argument("--chart-files", type=Path, default=CHART_FILES)
    args = parser.parse_args(argv)
    args.out.write_text(render(container_options()))
    print(f"wrote {args.out}")
    args.chart_files.mkdir(parents=True, exist_ok=True)
    for name, text in chart_configs().items():
        (args.chart_files / name).write_text(text)
        print(f"wrote {args.chart_files / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
