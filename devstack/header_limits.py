"""Requests with too many headers, or headers too large, are refused at the edge with a status.

Envoy's codecs bound a request's headers (``max_headers_count``, ``max_request_headers_kb``). Over
HTTP/1 a request past either gets a local reply (431, which the local reply config turns into
``HEADERS_TOO_LARGE``), but over HTTP/2, which every native gRPC call uses, the codec resets the
stream before any filter or local reply runs: the caller saw ``INTERNAL: Stream removed
(RST_STREAM ... error code 2)``, nothing that says which limit or what to change. So the codecs'
bounds are set well above Ferry's limits (``limits.EDGE_CODEC_HEADERS_COUNT`` and ``_BYTES``), and
this Lua filter, first in the chain, counts the headers every request arrived with and answers
431 past ``limits.REQUEST_HEADERS_COUNT`` entries or ``limits.REQUEST_HEADERS_BYTES`` bytes (names
and values, as Envoy counts them), recording which limit in dynamic metadata; the local reply
config answers gRPC callers INVALID_ARGUMENT and REST callers 400, reason ``HEADERS_TOO_LARGE``,
naming the limit. Only a request past the codecs' own bounds is still reset: hundreds of times
what any client sends by mistake.

The same filter refuses a REST body sent compressed (``Content-Encoding`` other than identity):
the transcoder read the gzip bytes as JSON and answered "Encountered non UTF-8 code points"
followed by the compressed bytes. It is 415 ``UNSUPPORTED_CONTENT_ENCODING`` naming the encoding
now. (gRPC compresses messages with ``grpc-encoding``, which is left alone.)
"""

from __future__ import annotations

from services.common import limits

REASON = "HEADERS_TOO_LARGE"
#: Dynamic metadata the filter sets when it refuses: which limit (``count`` or ``bytes``).
METADATA_NAMESPACE = "ferry.headers"
METADATA_KEY = "limit"

# No "{{" anywhere: the Helm chart reads the config as a template.
LUA_SOURCE = f"""
function envoy_on_request(handle)
  local count, bytes, encoded, grpc = 0, 0, false, false
  for key, value in pairs(handle:headers()) do
    count = count + 1
    bytes = bytes + #key + #value
    if key == "content-encoding" and string.lower(value) ~= "identity" then encoded = true end
    if key == "content-type" and string.find(value, "application/grpc", 1, true) == 1 then grpc = true end
  end
  local limit, status = nil, "431"
  if count > {limits.REQUEST_HEADERS_COUNT} then
    limit = "count"
  elseif bytes > {limits.REQUEST_HEADERS_BYTES} then
    limit = "bytes"
  elseif encoded and not grpc then
    limit, status = "encoding", "415"
  else
    return
  end
  handle:streamInfo():dynamicMetadata():set("{METADATA_NAMESPACE}", "{METADATA_KEY}", limit)
  handle:respond({{[":status"] = status}}, limit)
end
"""

COUNT_MESSAGE = (
    f"the request has more than {limits.REQUEST_HEADERS_COUNT} headers (gRPC metadata entries), the limit, "
    "counting those the protocol and client library add (:path, content-type, user-agent ...) "
    "(services/common/limits.py REQUEST_HEADERS_COUNT); send fewer"
)
BYTES_MESSAGE = (
    f"the request's headers (gRPC metadata) hold more than {limits.REQUEST_HEADERS_BYTES} bytes of names and "
    "values, the limit (services/common/limits.py REQUEST_HEADERS_BYTES); send less, and large values "
    "in the request's body"
)


ENCODING_REASON = "UNSUPPORTED_CONTENT_ENCODING"
ENCODING_MESSAGE = (
    "the request body is compressed (Content-Encoding); Ferry reads JSON bodies uncompressed: "
    "send it without Content-Encoding"
)


def replies() -> list[tuple[str, str, dict[str, str]]]:
    """Each refusal: the value the filter records, the message, and the ErrorInfo's metadata."""
    return [
        ("count", COUNT_MESSAGE, {"max_count": str(limits.REQUEST_HEADERS_COUNT), "source": "envoy"}),
        ("bytes", BYTES_MESSAGE, {"max_bytes": str(limits.REQUEST_HEADERS_BYTES), "source": "envoy"}),
    ]


def lua_filter() -> str:
    """The filter as an http_filters list item (it goes first: it must see the headers as they came)."""
    # No blank lines: the Helm chart indents every line of the config, blank ones too.
    pad = " " * 26
    indented = "\n".join(pad + line for line in LUA_SOURCE.strip().splitlines() if line.strip())
    return f"""
                  # Too many or too large request headers: 431, then HEADERS_TOO_LARGE naming the
                  # limit, for native gRPC too (devstack/header_limits.py).
                  - name: ferry.header_limits
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        inline_string: |
{indented}"""
