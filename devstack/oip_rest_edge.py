"""The Open Inference Protocol's error shape on /v2 REST paths, written at the edge.

Errors of ``OpenInferenceRestService`` are raised in the gateway like any call's and leave Envoy's
transcoder as Ferry's JSON error (``{"code", "message", "details"}``), as do Envoy's own errors
(an unknown path, a body too large, no gateway). The protocol's clients read ``{"error": "..."}``
instead (tritonclient.http raises a KeyError on anything else), so a Lua filter, first in the chain
so that it sees every answer to a /v2 request (local replies included), rewrites an error's body
into that shape, keeping the message and the HTTP status. gRPC requests are left alone.
"""

from __future__ import annotations

from devstack import body_fields

LUA_SOURCE = (
    r"""
local find, byte, sub = string.find, string.byte, string.sub

function envoy_on_request(handle)
  local path = handle:headers():get(":path") or ""
  if path ~= "/v2" and not find(path, "^/v2[/?]") then return end
  local ct = handle:headers():get("content-type") or ""
  if find(ct, "application/grpc", 1, true) == 1 then return end
  handle:streamInfo():dynamicMetadata():set("ferry.oip_rest", "rest", "1")
end

"""
    + body_fields.LUA_STRING_END
    + r"""
function envoy_on_response(handle)
  if handle:streamInfo():dynamicMetadata():get("ferry.oip_rest") == nil then return end
  local status = tonumber(handle:headers():get(":status")) or 200
  if status < 400 then return end
  local body = handle:body()
  if body == nil then return end
  local text = body:getBytes(0, body:length())
  if find(text, '^%s*{%s*"error"%s*:') then return end
  local message = '"HTTP ' .. status .. '"'
  local _, e = find(text, '"message"%s*:%s*"')
  if e then
    local stop = string_end(text, e)
    if stop then message = sub(text, e, stop - 1) end
  end
  local out = '{"error":' .. message .. '}'
  body:setBytes(out)
  handle:headers():replace("content-type", "application/json")
  handle:headers():replace("content-length", tostring(#out))
end
"""
)


def lua_filter() -> str:
    """The filter, as an http_filters list item (it goes first: see the module docstring)."""
    # No blank lines: the Helm chart indents the config, which would leave them as trailing spaces.
    source = "\n".join(
        f"                          {line}" for line in LUA_SOURCE.strip().splitlines() if line
    )
    return f"""
                  # The protocol's {{"error": ...}} on /v2 REST errors (devstack/oip_rest_edge.py).
                  - name: ferry.oip_rest.errors
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        inline_string: |
{source}"""
