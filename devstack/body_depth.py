"""JSON bodies nested too deep are refused at the edge, naming the limit.

Envoy's transcoder turns a REST body into protobuf, and every JSON level inside a
``google.protobuf.Struct`` (a payload, notebook parameters) costs protobuf's parser three of its
100 levels: a payload nested 50 deep would pass the edge and fail to parse in the gateway. So the
same Lua filter that checks body fields (devstack/body_fields.py) first counts the body's nesting
of objects and arrays, skipping over strings, and answers 400 INVALID_ARGUMENT (reason
NESTING_TOO_DEEP) past ``limits.MAX_JSON_DEPTH`` (the outermost object counts 1), before the body
is transcoded or authenticated. It scans without recursion, so no depth can exhaust Lua's stack.
Native gRPC bodies are protobuf: the gateway checks those (services/common/nesting.py).
"""

from __future__ import annotations

from services.common import limits

REASON = "NESTING_TOO_DEEP"
#: Dynamic metadata key (in body_fields.METADATA_NAMESPACE) the filter sets when it refuses.
METADATA_KEY = "max_depth"

#: ``nesting_past(s, limit)``: whether the JSON text ``s`` nests objects and arrays deeper than
#: ``limit``. Strings are skipped with body_fields' ``string_end`` (plain finds: base64 images are
#: megabytes); an unterminated string ends the scan (malformed JSON is the transcoder's to report).
#: It follows body_fields' walker in the script, so it is global: ``envoy_on_request`` finds it
#: when it runs.
LUA_FUNCTION = r"""
function nesting_past(s, limit)
  local depth, i = 0, 1
  while true do
    local k = find(s, '[%[%]{}"]', i)
    if not k then return false end
    local c = byte(s, k)
    if c == 34 then
      i = string_end(s, k)
      if not i then return false end
    elseif c == 91 or c == 123 then
      depth = depth + 1
      if depth > limit then return true end
      i = k + 1
    else
      depth = depth - 1
      i = k + 1
    end
  end
end
"""


def lua_check(namespace: str, body_variable: str = "bytes") -> str:
    """Lua statements for ``envoy_on_request``: refuse ``body_variable`` when it nests too deep."""
    limit = limits.MAX_JSON_DEPTH
    return f"""
  if nesting_past({body_variable}, {limit}) then
    handle:streamInfo():dynamicMetadata():set("{namespace}", "{METADATA_KEY}", "{limit}")
    handle:respond({{[":status"] = "400"}}, "nested too deep")
    return
  end"""


def message() -> str:
    """The 400's message."""
    return (
        f"the JSON body nests objects and arrays deeper than {limits.MAX_JSON_DEPTH} levels, the limit "
        "(services/common/limits.py MAX_JSON_DEPTH); flatten the payload or parameters"
    )
