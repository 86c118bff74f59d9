"""Envoy's edge policy: per-route request body limits, and Envoy's own errors in Ferry's error shape.

Body limits: Envoy's buffer filter holds at most a route's limit of a request body and answers 413
beyond it, before the gateway authenticates anything and before the transcoder turns JSON into
protobuf (the transcoder streams: without the buffer filter a 256 MiB body grew Envoy past 1 GB).

Local replies (errors Envoy answers itself: a body too large, JSON the transcoder cannot read, a
path no method serves, a timeout, no gateway) carry the body the gateway's errors carry,
``{"code": <gRPC code>, "message": ..., "details": [ErrorInfo]}``, with the HTTP status the
transcoder gives that gRPC code. Native gRPC callers get the same code as ``grpc-status``, the
message as ``grpc-message`` and the ErrorInfo in ``grpc-status-details-bin``.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from devstack import body_depth, body_fields, header_limits
from services.common import limits
from services.common.errors import ERROR_DOMAIN, reasons

Match = dict[str, Any]
"""A route match as Envoy's RouteMatch: ``{"path": ...}`` or ``{"safe_regex": {"regex": ...}}``."""


@dataclass(frozen=True)
class BodyLimit:
    """The largest request body of a class of routes, and the paths (REST and gRPC) in the class."""

    name: str
    max_bytes: int
    advice: str
    """What to do instead, appended to the 413's message."""
    matches: tuple[Match, ...] = field(default=())


#: The Open Inference Protocol's native gRPC inference call (its REST one is transcoded).
OIP_GRPC_INFER: Match = {"path": "/inference.GRPCInferenceService/ModelInfer"}
PREDICT_LIMIT = BodyLimit(
    "predict",
    limits.PREDICT_REQUEST_BYTES,
    "send a smaller or more compressed image",
    (
        {"path": "/ferry.models.v1.ModelService/Predict"},
        OIP_GRPC_INFER,
        {"safe_regex": {"regex": "/v1/models/[^/]+:predict"}},
        {"safe_regex": {"regex": "/v2/models/[^/]+(/versions/[^/]+)?/infer"}},
    ),
)
UPLOAD_LIMIT = BodyLimit(
    "upload",
    limits.UPLOAD_REQUEST_BYTES,
    # A job of many photos fits an upload (256 MiB by default) that the job then names; saying
    # "split the inputs" alone left a new user cutting a photo folder into 32 MiB pieces.
    "split the inputs into several jobs or BatchPredict calls; or, for a job of many images, zip them, "
    "POST the zip to /v1/uploads (`ferry upload photos.zip`) and create the job with "
    '"manifest": "uploads/ID"',
    (
        {"path": "/ferry.jobs.v1.JobService/CreateJob"},
        {"path": "/v1/jobs"},
        {"path": "/ferry.models.v1.ModelService/BatchPredict"},
        {"safe_regex": {"regex": "/v1/models/[^/]+:batchPredict"}},
    ),
)
DEFAULT_LIMIT = BodyLimit("default", limits.DEFAULT_REQUEST_BYTES, "this call takes small requests only")

#: Routes with their own limit, before the catch-all route that has DEFAULT_LIMIT.
ROUTE_LIMITS = (PREDICT_LIMIT, UPLOAD_LIMIT)

REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"


def too_large_message(limit: BodyLimit) -> str:
    return (
        f"request body is larger than this call's limit of {limits.describe(limit.max_bytes)}; {limit.advice}"
    )


#: The request's method as the client sent it: the transcoder turns every REST call into a POST to
#: the gRPC path, and the access log should say GET for a GET (the path has the same problem,
#: which x-envoy-original-path solves).
ORIGINAL_METHOD_HEADER = "x-ferry-original-method"


def original_method_filter() -> str:
    """A header_mutation filter, as the first http_filters item: keeps the client's method in
    ORIGINAL_METHOD_HEADER (a client's own value is overwritten) before the transcoder changes it."""
    return f"""
                  - name: envoy.filters.http.header_mutation
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
                      mutations:
                        request_mutations:
                          - append:
                              header: {{key: {ORIGINAL_METHOD_HEADER}, value: "%REQ(:METHOD)%"}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"""


def buffer_filter() -> str:
    """The buffer filter, as an http_filters list item: DEFAULT_LIMIT unless a route says otherwise."""
    return f"""
                  # Holds at most a route's limit of a request body, then 413 (devstack/edge.py).
                  - name: envoy.filters.http.buffer
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
                      max_request_bytes: {DEFAULT_LIMIT.max_bytes}"""


#: Chooses a request's route again, from its headers as they are now (devstack/envoy.py's lane of
#: large native gRPC ModelInfer messages). Envoy chose the route from the request's headers as they
#: arrived, before the buffer filter held the body and gave it a length: a native gRPC call has
#: none before (the transcoder looks a REST call's route up again itself, for its new path). Placed
#: after the filter that copies the length into a header; off unless a route turns it on (only
#: those it concerns do: ``route_filter_config``'s ``enabled``), so no other call pays for a Lua
#: coroutine, and no other route needs to name it. It reads no body.
ROUTE_AGAIN_LUA = "ferry.route_again"


def route_again_filter() -> str:
    """The filter of ROUTE_AGAIN_LUA, as an http_filters list item."""
    return f"""
                  - name: {ROUTE_AGAIN_LUA}
                    disabled: true
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        inline_string: |
                          function envoy_on_request(handle) handle:clearRouteCache() end"""


#: Requests that stream (gRPC reflection, which grpcurl uses, is bidirectional): the buffer filter
#: would wait for an end the client only sends after the answers. Envoy's flow control bounds them.
#: Uploads (CreateUpload, client-streamed) too: the gateway counts their bytes as they arrive and
#: refuses one past max_upload_bytes (UPLOAD_TOO_LARGE); buffering would hold 256 MiB here.
UPLOADS: tuple[Match, ...] = ({"path": "/ferry.jobs.v1.JobService/CreateUpload"}, {"path": "/v1/uploads"})
STREAMED = BodyLimit("streamed", 0, "", ({"prefix": "/grpc.reflection."}, *UPLOADS))


def route_filter_config(
    limit: BodyLimit | None, skipped: tuple[str, ...] = (), enabled: tuple[str, ...] = ()
) -> str:
    """A route's typed_per_filter_config, as route YAML text: the buffer filter's limit (off for
    STREAMED; none: the filter's default), the filters named in ``skipped`` turned off, and those
    in ``enabled`` (off unless a route says otherwise) turned on."""
    entries = "".join(_disabled(name) for name in skipped) + "".join(_enabled(name) for name in enabled)
    if limit is not None and limit.max_bytes == 0:
        entries = _disabled("envoy.filters.http.buffer") + entries
    elif limit is not None:
        entries = (
            f"""
                            envoy.filters.http.buffer:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.BufferPerRoute
                              buffer: {{max_request_bytes: {limit.max_bytes}}}"""
            + entries
        )
    return "\n                          typed_per_filter_config:" + entries if entries else ""


def _enabled(name: str) -> str:
    # An empty config turns on a filter that is off by default (HttpFilter.disabled).
    return f"""
                            {name}:
                              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                              config: {{}}"""


def _disabled(name: str) -> str:
    return f"""
                            {name}:
                              "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                              disabled: true"""


MAX_DIRECT_RESPONSE_BYTES = 1024 * 1024

#: The filters a static file's route skips: it has no body, and no method serves its path.
_SKIPPED_BY_FILES = (
    "envoy.filters.http.buffer",
    "envoy.filters.http.lua",
    "envoy.filters.http.grpc_json_transcoder",
)


def skipped_filters() -> str:
    """A static file route's typed_per_filter_config entries turning off _SKIPPED_BY_FILES."""
    return "".join(_disabled(name) for name in _SKIPPED_BY_FILES)


def openapi_route(path: str, filename: str) -> str:
    """The route answering ``path`` with the OpenAPI description from ``filename``, as route YAML text."""
    skipped = skipped_filters()
    return f"""
                        - match: {{path: "{path}"}}
                          direct_response:
                            status: 200
                            body: {{filename: "{filename}"}}
                          response_headers_to_add:
                            - header: {{key: content-type, value: application/json}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                          typed_per_filter_config:{skipped}"""


@dataclass(frozen=True)
class LocalReply:
    """A status Envoy answers by itself, and the ErrorReason (hence gRPC code and HTTP status) it gets."""

    envoy_status: int
    reason: str
    message: str = "%LOCAL_REPLY_BODY%"
    retry_after_s: int = 0
    """When set: a RetryInfo of that delay beside the ErrorInfo, and a ``retry-after`` header, as
    the gateway's own refusals carry (services/common/interceptors.py)."""

    @property
    def code(self) -> grpc.StatusCode:
        return reasons()[self.reason].code

    @property
    def http_status(self) -> int:
        """What the gateway's errors with this reason answer: the same HTTP status."""
        return reasons()[self.reason].http_status


#: Where a caller finds the REST calls, with their paths, fields and JSON types.
_WHERE = "(every call's path, fields and JSON types: GET /openapi.json, docs/api.md)"

#: Envoy's own answers, by the status Envoy chose, in the gateway's terms.
LOCAL_REPLIES = (
    # JSON the transcoder cannot parse, a value of the wrong type, an unknown query parameter:
    # the transcoder's words alone ("Unexpected end of string. Expected , or }") did not say what
    # was wrong with the request nor where its fields are described.
    LocalReply(
        400, "MALFORMED_REQUEST", f"the request is not one this call takes: %LOCAL_REPLY_BODY% {_WHERE}"
    ),
    # A path no method serves (the transcoder's reject_unknown_method), or no route at all.
    LocalReply(404, "UNKNOWN_PATH", f"%LOCAL_REPLY_BODY% No REST call has this path {_WHERE}"),
    # A known REST path with another method (method_not_allowed_routes).
    LocalReply(405, "METHOD_NOT_ALLOWED"),
    # The client's own deadline (grpc-timeout) or the route's timeout ran out at the edge.
    LocalReply(408, "EDGE_DEADLINE_EXCEEDED"),
    LocalReply(504, "EDGE_DEADLINE_EXCEEDED"),
    LocalReply(431, "HEADERS_TOO_LARGE"),
    # No gateway answered (none healthy, all restarting): retrying later helps.
    LocalReply(502, "BACKEND_UNAVAILABLE"),
    LocalReply(503, "BACKEND_UNAVAILABLE"),
    LocalReply(500, "EDGE_INTERNAL_ERROR"),
)

#: gRPC requests: the content type says so, and the transcoder did not make them from REST
#: (it records the REST path in x-envoy-original-path).
_GRPC_REQUEST = (
    {"header_filter": {"header": {"name": "content-type", "string_match": {"prefix": "application/grpc"}}}},
    {
        "header_filter": {
            "header": {"name": "x-envoy-original-path", "present_match": True, "invert_match": True}
        }
    },
)


def _status_is(status: int) -> dict[str, Any]:
    return {
        "status_code_filter": {
            "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": "ferry.none"}}
        }
    }


def _path_is(matches: tuple[Match, ...]) -> dict[str, Any]:
    """A filter on the request path (a query string allowed) matching any of a class's routes."""
    filters = []
    for match in matches:
        pattern = re.escape(match["path"]) if "path" in match else match["safe_regex"]["regex"]
        regex = {"safe_regex": {"regex": f"{pattern}(\\?.*)?"}}
        filters.append({"header_filter": {"header": {"name": ":path", "string_match": regex}}})
    return {"or_filter": {"filters": filters}} if len(filters) > 1 else filters[0]


def _and(*filters: dict[str, Any]) -> dict[str, Any]:
    return {"and_filter": {"filters": list(filters)}}


def _lua_refused(namespace: str, key: str, value: str = "") -> dict[str, Any]:
    """A filter on a Lua filter's refusal: it left ``key`` in ``namespace``'s dynamic metadata
    (set to ``value``, when given) before it answered."""
    matched = {"string_match": {"exact": value}} if value else {"present_match": True}
    return {
        "metadata_filter": {
            "matcher": {"filter": namespace, "path": [{"key": key}], "value": matched},
            "match_if_key_not_found": False,
        }
    }


def _error_info(reason: str, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": ERROR_DOMAIN,
        "metadata": metadata,
    }


def _packed(message: Message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message, deterministic=True)
    return detail


def _status_details(reply: LocalReply, metadata: dict[str, str]) -> str:
    """``grpc-status-details-bin``: the google.rpc.Status gRPC clients decode into ErrorInfo (and
    RetryInfo), in the order the gateway's errors list them (services/common/errors.py)."""
    details = [
        _packed(error_details_pb2.ErrorInfo(reason=reply.reason, domain=ERROR_DOMAIN, metadata=metadata))
    ]
    if reply.retry_after_s:
        delay = duration_pb2.Duration(seconds=reply.retry_after_s)
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=reply.code.value[0], message=reply.message, details=details)
    return base64.b64encode(status.SerializeToString(deterministic=True)).decode().rstrip("=")


def _retry_after(reply: LocalReply) -> list[tuple[str, str]]:
    return [("retry-after", str(reply.retry_after_s))] if reply.retry_after_s else []


def _header_options(headers: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
        for key, value in headers
    ]


def _grpc_mapper(reply: LocalReply, metadata: dict[str, str], *where: dict[str, Any]) -> dict[str, Any]:
    """A native gRPC caller's answer: the reason's code, the message, and (when fixed) its ErrorInfo."""
    headers = [("grpc-status", str(reply.code.value[0])), *_retry_after(reply)]
    if "%" not in reply.message:  # a fixed message: its Status can be written once, here
        headers.append(("grpc-status-details-bin", _status_details(reply, metadata)))
    return {
        "filter": _and(*_GRPC_REQUEST, _status_is(reply.envoy_status), *where),
        "headers_to_add": _header_options(headers),
        "body_format_override": {"text_format_source": {"inline_string": reply.message}},
    }


def _rest_mapper(reply: LocalReply, metadata: dict[str, str], *where: dict[str, Any]) -> dict[str, Any]:
    """A REST caller's answer: the gateway's JSON error body and HTTP status for the reason."""
    status = _status_is(reply.envoy_status)
    details = [_error_info(reply.reason, metadata)]
    if reply.retry_after_s:  # as the transcoder prints the gateway's RetryInfo
        details.append(
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retry_delay": f"{reply.retry_after_s}s"}
        )
    body = {"code": reply.code.value[0], "message": reply.message, "details": details}
    mapper: dict[str, Any] = {
        "filter": _and(status, *where) if where else status,
        "body_format_override": {"json_format": body},
    }
    if reply.retry_after_s:
        mapper["headers_to_add"] = _header_options(_retry_after(reply))
    if reply.http_status != reply.envoy_status:
        mapper["status_code"] = reply.http_status
    return mapper


def _both(reply: LocalReply, metadata: dict[str, str], *where: dict[str, Any]) -> list[dict[str, Any]]:
    return [_grpc_mapper(reply, metadata, *where), _rest_mapper(reply, metadata, *where)]


#: Envoy's own 503 when a gateway cluster's circuit breaker is full (response flag UO, "upstream
#: overflow"; devstack/envoy.py sizes it from the gateways' in-flight bound).
_OVERFLOW = {"response_flag_filter": {"flags": ["UO"]}}


#: Envoy's answer to a call over the gateways' bound: the gateway's own OVERLOADED. No figures in
#: it: the Helm chart sizes the bound at install time, after this text is encoded for gRPC callers.
OVERLOADED = LocalReply(
    503,
    "OVERLOADED",
    "the gateways are at their limit of calls in flight (FERRY_GATEWAY_MAX_INFLIGHT each); retry shortly",
    retry_after_s=1,
)


def local_reply_config(ready_path: str) -> dict[str, Any]:
    """The connection manager's ``local_reply_config``: every mapper, most specific first."""
    mappers = _both(OVERLOADED, {"source": "envoy"}, _OVERFLOW)
    for limit in (*ROUTE_LIMITS, DEFAULT_LIMIT):
        where = (_path_is(limit.matches),) if limit.matches else ()
        metadata = {"max_bytes": str(limit.max_bytes), "source": "envoy"}
        for status in (413, 507):  # 507: a body over the limit met while buffering for a retry
            mappers += _both(
                LocalReply(status, REQUEST_TOO_LARGE, too_large_message(limit)), metadata, *where
            )
    details = {"source": "envoy", "details": "%RESPONSE_CODE_DETAILS%"}
    # The readiness probe's 503 has no text of its own.
    unready = "no gateway is ready: none answers gRPC health SERVING to Envoy's checks"
    ready = _path_is(({"path": ready_path},))
    mappers.append(_rest_mapper(LocalReply(503, "BACKEND_UNAVAILABLE", unready), details, ready))
    # The Lua filter's 400 for an unknown body field (devstack/body_fields.py): it left the field
    # in dynamic metadata. REST only: gRPC bodies are protobuf, where unknown fields are allowed.
    unknown = LocalReply(400, body_fields.UNKNOWN_FIELD, body_fields.unknown_field_message())
    body = body_fields.METADATA_NAMESPACE
    field = {"field": f"%DYNAMIC_METADATA({body}:field)%", "source": "envoy"}
    mappers.append(_rest_mapper(unknown, field, _lua_refused(body, "field")))
    # Its 400 for an enum value by a name the enum lacks, in a body or a GET query parameter.
    enum = LocalReply(400, body_fields.INVALID_ENUM, body_fields.invalid_enum_message())
    named = {"field": f"%DYNAMIC_METADATA({body}:enum_field)%", "source": "envoy"}
    mappers.append(_rest_mapper(enum, named, _lua_refused(body, "enum_field")))
    shapeless = LocalReply(400, "MALFORMED_REQUEST", body_fields.NOT_JSON_MESSAGE)
    mappers.append(_rest_mapper(shapeless, {"source": "envoy"}, _lua_refused(body, "not_json")))
    deep = LocalReply(400, body_depth.REASON, body_depth.message())
    depth = {body_depth.METADATA_KEY: str(limits.MAX_JSON_DEPTH), "source": "envoy"}
    mappers.append(_rest_mapper(deep, depth, _lua_refused(body, body_depth.METADATA_KEY)))
    # The header filter's 431, naming the limit (devstack/header_limits.py).
    headers = (header_limits.METADATA_NAMESPACE, header_limits.METADATA_KEY)
    for which, message, metadata in header_limits.replies():
        refusal = LocalReply(431, header_limits.REASON, message)
        mappers += _both(refusal, metadata, _lua_refused(*headers, which))
    # REST only: gRPC requests are never refused for it.
    encoding = LocalReply(415, header_limits.ENCODING_REASON, header_limits.ENCODING_MESSAGE)
    mappers.append(_rest_mapper(encoding, {"source": "envoy"}, _lua_refused(*headers, "encoding")))
    # Envoy's refusal of a CONNECT (connect_route), 403 without a body: 405 naming the methods.
    connect = LocalReply(403, "METHOD_NOT_ALLOWED", CONNECT_MESSAGE)
    method = {"header_filter": {"header": {"name": ":method", "string_match": {"exact": "CONNECT"}}}}
    connect_mapper = _rest_mapper(connect, {"method": "CONNECT", "source": "envoy"}, method)
    mappers.append(connect_mapper | {"headers_to_add": _header_options([("allow", connect_allow())])})
    for reply in LOCAL_REPLIES:
        mappers += _both(reply, details)
    return {"mappers": mappers}


def local_reply_yaml(indent: int, ready_path: str) -> str:
    """``local_reply_config:`` and its value (JSON, which YAML reads), indented for the HCM block."""
    pad = " " * indent
    body = json.dumps(local_reply_config(ready_path), indent=2)
    lines = (folded(f"{pad}  {line}") for line in body.splitlines())
    return f"\n{pad}local_reply_config:\n" + "\n".join(lines)


#: Longest line the generated YAML may have (the Helm chart's yamllint allows 160).
MAX_LINE = 150


def folded(line: str, width: int = MAX_LINE) -> str:
    """A JSON line whose last string runs past ``width``, continued on further lines the YAML way:
    a double-quoted string's escaped line break joins the lines with nothing in between (the next
    line's indentation is dropped), so each break falls before a character that is not a space and
    never inside a backslash escape."""
    if len(line) <= width or not line.rstrip(",").endswith('"'):
        return line
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    pieces: list[str] = []
    start = 0
    while len(line) - start > width - (len(indent) if pieces else 0):
        cut = start + width - (len(indent) if pieces else 0) - 1
        while cut > start + 1 and (line[cut] == " " or _escaped(line, cut)):
            cut -= 1
        pieces.append(line[start:cut] + "\\")
        start = cut
    pieces.append(line[start:])
    return f"\n{indent}".join(pieces)


def _escaped(line: str, index: int) -> bool:
    """Whether ``line[index]`` is the character after a JSON backslash (an odd run of them)."""
    run = 0
    while index - 1 - run >= 0 and line[index - 1 - run] == "\\":
        run += 1
    return run % 2 == 1


#: The REST description the 405 routes read paths and methods from (tools.openapi renders it from
#: the protos' google.api.http rules).
OPENAPI_FILE = Path(__file__).resolve().parent.parent / "deploy" / "openapi" / "ferry.json"
_HTTP_METHODS = ("get", "put", "post", "delete", "patch")


def rest_methods(openapi_file: Path = OPENAPI_FILE) -> dict[str, tuple[str, ...]]:
    """Each public REST path template (/v1, and the Open Inference Protocol's /v2, whose 405 the
    /v2 error filter words in the protocol's shape) and the methods it takes (HEAD wherever GET is)."""
    paths = json.loads(openapi_file.read_text())["paths"]
    methods = {}
    for path, operations in paths.items():
        taken = [m.upper() for m in _HTTP_METHODS if m in operations]
        methods[path] = (*taken, "HEAD") if "GET" in taken else tuple(taken)
    return methods


def path_regex(template: str) -> str:
    """An RE2 regex of a path template: a ``{variable}`` is one or more segments' worth of a name
    (``/v1/jobs/{name}`` is ``/v1/jobs/<id>``), never a ``:verb`` or a further ``/``."""
    return "^" + re.sub(r"\\\{[^}]*\\\}", "[^/:]+", re.escape(template)) + "$"


def not_allowed_route(match: str, allow: str, message: str) -> str:
    """A route answering 405 METHOD_NOT_ALLOWED with ``allow`` and ``message``, skipping the
    filters (no method serves it), as route YAML text; ``match``: the text after ``match:``."""
    return f"""
                        - match:{match}
                          direct_response:
                            status: 405
                            body: {{inline_string: "{message}"}}
                          response_headers_to_add:
                            - header: {{key: allow, value: "{allow}"}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                          typed_per_filter_config:{skipped_filters()}"""


def other_methods(regex: str, methods: tuple[str, ...]) -> str:
    """A route match of a path matching the RE2 ``regex`` asked with a method not in ``methods``,
    as the YAML text after ``match:``."""
    return f"""
                            safe_regex: {{regex: {json.dumps(regex)}}}
                            headers:
                              - name: ":method"
                                string_match: {{safe_regex: {{regex: "^({"|".join(methods)})$"}}}}
                                invert_match: true"""


def method_not_allowed_routes() -> str:
    """Routes answering 405 METHOD_NOT_ALLOWED (with ``allow``) for a known REST path asked with
    another method, as route YAML text; the transcoder would call it an unknown path (404)."""
    return "".join(
        not_allowed_route(
            other_methods(path_regex(template), methods),
            ", ".join(methods),
            f"{template} takes {', '.join(methods)}",
        )
        for template, methods in sorted(rest_methods().items())
    )


#: A CONNECT asks for a tunnel, and Ferry's port is no proxy. It has no :path, so no other route
#: matched it, and the buffer and Lua filters waited for the end of a body that a tunnel never
#: sends: the request was held, unanswered, until Envoy's timeouts. On its own route Envoy refuses
#: it before any filter runs (403, details ``upgrade_failed``: the route allows no CONNECT), and the
#: local reply config makes that 405 METHOD_NOT_ALLOWED (``connect_refusal``).
CONNECT_MESSAGE = "CONNECT is not served: Ferry's public port answers REST and gRPC calls, and is no proxy"


def connect_allow() -> str:
    """The ``allow`` header of a refused CONNECT: every method Ferry's REST paths take."""
    return ", ".join(sorted({method for methods in rest_methods().values() for method in methods}))


def connect_route() -> str:
    """The route of CONNECT requests, as route YAML text: 405 without the filters that read bodies."""
    return not_allowed_route(" {connect_matcher: {}}", connect_allow(), CONNECT_MESSAGE)
