"""Unknown JSON body fields rejected at the edge, naming the field.

Envoy 1.40's gRPC-JSON transcoder drops fields a request message does not define (its
``request_validation_options`` reject unknown methods, unknown query parameters and body/path
collisions, nothing more), and once a body is protobuf the gateway cannot see what was dropped. So
a Lua filter, placed after the buffer filter (the body is bounded) and before the transcoder,
walks each REST body's object keys against the request message's fields, both proto and JSON
names, taken from the same descriptor set the transcoder reads. It answers 400 INVALID_ARGUMENT
(reason UNKNOWN_FIELD) naming the field; the local reply config (devstack/edge.py) gives it the
gateway's error shape. Malformed JSON is left to the transcoder, which reports it itself.

The same walk checks enum values given as names (``"priority": "urgent"``), in bodies and in GET
query parameters: the transcoder's own refusal ("invalid value "urgent" for type
type.googleapis.com/ferry.types.v1.Priority") did not say which values there are. It answers 400
INVALID_ENUM naming them, as the gateway does for an unknown enum number
(services/common/validation.py), which still judges numbers given as JSON numbers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from devstack import body_depth
from tools.protogen import DESCRIPTOR_SET

UNKNOWN_FIELD = "UNKNOWN_FIELD"
INVALID_ENUM = "INVALID_ENUM"
#: Dynamic metadata the Lua filter leaves for the local reply's message: the field and its message.
METADATA_NAMESPACE = "ferry.edge"

_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_ENUM = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
_BODY_METHODS = ("post", "put", "patch")


def _lua_path_pattern(template: str) -> str:
    """A google.api.http path template (``/v1/{model=models/*}:predict``) as an anchored Lua pattern."""
    pattern = ""
    for part in re.split(r"(\{[^}]*\})", template):
        if part.startswith("{"):
            inner = part[1:-1].split("=", 1)
            segments = inner[1] if len(inner) == 2 else "*"
            pattern += "".join(
                "[^/]+" if s == "*" else ".+" if s == "**" else re.sub(r"([^\w/])", r"%\1", s)
                for s in re.split(r"(\*\*|\*)", segments)
                if s
            )
        else:
            pattern += re.sub(r"([^\w/])", r"%\1", part)
    return f"^{pattern}$"


def _messages(files: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    found = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        found[name] = message
        for nested in message.nested_type:
            walk(name, nested)

    for file in files.file:
        for message in file.message_type:
            walk(f".{file.package}" if file.package else "", message)
    return found


def enums(descriptor_set: Path = DESCRIPTOR_SET) -> dict[str, dict[str, int]]:
    """Every enum's values (name: number) by its full name (``.ferry.types.v1.Priority``)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    found: dict[str, dict[str, int]] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        for enum in message.enum_type:
            found[f"{name}.{enum.name}"] = {value.name: value.number for value in enum.value}
        for nested in message.nested_type:
            walk(name, nested)

    for file in files.file:
        package = f".{file.package}" if file.package else ""
        for enum in file.enum_type:
            found[f"{package}.{enum.name}"] = {value.name: value.number for value in enum.value}
        for message in file.message_type:
            walk(package, message)
    return found


def _http_methods(
    files: descriptor_pb2.FileDescriptorSet,
) -> Iterator[tuple[descriptor_pb2.MethodDescriptorProto, http_pb2.HttpRule]]:
    """Every method of every service in ``files``, with its ``google.api.http`` rule."""
    for file in files.file:
        for service in file.service:
            for method in service.method:
                yield method, method.options.Extensions[annotations_pb2.http]


def query_enums(descriptor_set: Path = DESCRIPTOR_SET) -> list[tuple[str, dict[str, str]]]:
    """The GET routes (Lua path pattern) whose request has enum fields, which the transcoder
    reads from query parameters: each with those fields' enum by proto and JSON name."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    messages = _messages(files)
    routes = []
    for method, rule in _http_methods(files):
        if rule.WhichOneof("pattern") != "get":
            continue
        fields = {}
        for field in messages[method.input_type].field:
            if field.type == _ENUM:
                fields[field.name] = fields[field.json_name] = field.type_name
        if fields:
            routes.append((_lua_path_pattern(rule.get), fields))
    return routes


def schema(
    descriptor_set: Path = DESCRIPTOR_SET,
) -> tuple[list[tuple[str, str, str]], dict[str, dict[str, str]]]:
    """The body routes (HTTP method, Lua path pattern, request message) and, for every message a
    body can reach, its fields by proto and JSON name: a message's name when Ferry's (checked
    inside), an enum's name (its value names checked), else ``""`` (a scalar, a map, or a
    well-known type with its own JSON form)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    messages = _messages(files)
    routes = []
    for method, rule in _http_methods(files):
        verb = rule.WhichOneof("pattern")
        if verb in _BODY_METHODS and rule.body == "*":
            routes.append((verb.upper(), _lua_path_pattern(getattr(rule, verb)), method.input_type))
    fields: dict[str, dict[str, str]] = {}
    pending = [root for _, _, root in routes]
    while pending:
        name = pending.pop()
        if name in fields:
            continue
        message = messages[name]
        fields[name] = {}
        for field in message.field:
            nested = messages.get(field.type_name) if field.type == _MESSAGE else None
            checked = (
                nested is not None and field.type_name.startswith(".ferry.") and not nested.options.map_entry
            )
            kind = field.type_name if checked or field.type == _ENUM else ""
            fields[name][field.name] = fields[name][field.json_name] = kind
            if checked:
                pending.append(field.type_name)
    return routes, fields


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _lua_lines(entries: list[str], width: int = 100) -> list[str]:
    """Table entries (each ending with a comma) packed into lines of at most ``width`` characters."""
    lines = [""]
    for entry in entries:
        if lines[-1] and len(lines[-1]) + len(entry) + 1 > width:
            lines.append("")
        lines[-1] = f"{lines[-1]} {entry}" if lines[-1] else entry
    return [f"    {line}" for line in lines if line]


def lua_tables(descriptor_set: Path = DESCRIPTOR_SET) -> str:
    """The Lua tables ROUTES, FIELDS (true: a field not checked inside) and KNOWN (for messages)."""
    routes, fields = schema(descriptor_set)
    lines = ["local ROUTES = {"]
    lines += [f"  {{{_lua_string(m)}, {_lua_string(p)}, {_lua_string(t)}}}," for m, p, t in routes]
    lines += ["}", "local FIELDS = {"]
    for message, known in sorted(fields.items()):
        lines.append(f"  [{_lua_string(message)}] = {{")
        kinds = [f"[{_lua_string(k)}] = {_lua_string(v) if v else 'true'}," for k, v in known.items()]
        lines += [*_lua_lines(kinds), "  },"]
    lines += ["}", "-- Each message's fields by proto name, for the error message.", "local KNOWN = {"]
    for message, known in sorted(fields.items()):
        names = [f"{_lua_string(k)}," for k in known if k == k.lower()]
        lines += [f"  [{_lua_string(message)}] = {{", *_lua_lines(names), "  },"]
    lines += ["}", "-- Each enum's value names (a set), and those an error lists (not the unspecified one)."]
    lines.append("local ENUMS, ENUM_NAMES = {}, {}")
    queries = query_enums(descriptor_set)
    used = {kind for known in fields.values() for kind in known.values()}
    used |= {enum for _, by_field in queries for enum in by_field.values()}
    for enum, numbers in sorted(enums(descriptor_set).items()):
        if enum in used:
            # Numbers as text too: the transcoder takes a known one ("2") in a query or a string.
            accepted = [*numbers, *(str(number) for number in numbers.values())]
            entries = [f"[{_lua_string(n)}] = true," for n in accepted]
            lines += [f"ENUMS[{_lua_string(enum)}] = {{", *_lua_lines(entries), "}"]
            listed = ", ".join(name for name, number in numbers.items() if number != 0)
            # On a line of its own: the Helm chart's yamllint allows 160 characters a line.
            lines += [f"ENUM_NAMES[{_lua_string(enum)}] =", f"    {_lua_string(listed)}"]
    lines.append("-- GET routes whose query parameters name enum values: {path pattern, {param = enum}}.")
    lines.append("local QUERY_ENUMS = {")
    for pattern, by_field in queries:
        params = [f"[{_lua_string(k)}] = {_lua_string(v)}," for k, v in by_field.items()]
        lines += [f"  {{{_lua_string(pattern)}, {{", *_lua_lines(params), "  }},"]
    lines.append("}")
    return "\n".join(lines)


#: Walks a JSON text's object keys (skipping over string contents with plain finds: base64 images
#: are megabytes), and returns nil plus the dotted path and message of the first unknown key. Nil
#: and no path: malformed JSON, which the transcoder reports. Nesting deeper than 64 is not checked.
#: The index after a JSON string's closing quote, given the index of its opening quote (needs the
#: locals ``find`` and ``byte``); devstack/oip_rest_edge.py reads error messages with it too.
LUA_STRING_END = r"""
local function string_end(s, i)
  local j = i + 1
  while true do
    local k = find(s, '"', j, true)
    if not k then return nil end
    local n = k - 1
    while byte(s, n) == 92 do n = n - 1 end
    if (k - 1 - n) % 2 == 0 then return k + 1 end
    j = k + 1
  end
end
"""

LUA_WALKER = (
    r"""
local find, byte, sub = string.find, string.byte, string.sub

local function skip(s, i)
  return find(s, "[^ \t\r\n]", i) or (#s + 1)
end

"""
    + LUA_STRING_END
    + r"""
local value

local function object(s, i, message, path, depth)
  local fields = message and FIELDS[message]
  i = skip(s, i + 1)
  if byte(s, i) == 125 then return i + 1 end
  while true do
    if byte(s, i) ~= 34 then return nil end
    local after = string_end(s, i)
    if not after then return nil end
    local key = sub(s, i + 1, after - 2)
    local kind = true
    if fields then
      kind = fields[key]
      if kind == nil then
        if not find(key, "\\", 1, true) then return nil, path .. key, message end
        kind = true
      end
    end
    i = skip(s, after)
    if byte(s, i) ~= 58 then return nil end
    local field, where, bad
    i, field, where, bad = value(s, i + 1, kind, path .. key .. ".", depth + 1)
    if not i then return nil, field, where, bad end
    i = skip(s, i)
    local c = byte(s, i)
    if c == 125 then return i + 1 end
    if c ~= 44 then return nil end
    i = skip(s, i + 1)
  end
end

value = function(s, i, kind, path, depth)
  if depth > 64 then return nil end
  i = skip(s, i)
  local c = byte(s, i)
  local message = type(kind) == "string" and kind or nil
  if c == 123 then return object(s, i, message, path, depth) end
  if c == 91 then
    i = skip(s, i + 1)
    if byte(s, i) == 93 then return i + 1 end
    while true do
      local field, where, bad
      i, field, where, bad = value(s, i, kind, path, depth + 1)
      if not i then return nil, field, where, bad end
      i = skip(s, i)
      c = byte(s, i)
      if c == 93 then return i + 1 end
      if c ~= 44 then return nil end
      i = i + 1
    end
  end
  if c == 34 then
    local after = string_end(s, i)
    local allowed = after and ENUMS[kind]
    if allowed then
      local text = sub(s, i + 1, after - 2)
      if not allowed[text] and not find(text, "\\", 1, true) then
        return nil, sub(path, 1, -2), kind, text
      end
    end
    return after
  end
  return find(s, "[,%]}%s]", i) or (#s + 1)
end

-- A 400 INVALID_ENUM naming the field, the value given (shortened) and the enum's values.
local function refuse_enum(handle, field, enum, text)
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set("NAMESPACE", "enum_field", (field:gsub("[^%w_%.%-]", "?")))
  metadata:set("NAMESPACE", "enum_value", sub((text:gsub("[%c\\\"]", "?")), 1, 64))
  metadata:set("NAMESPACE", "enum_known", ENUM_NAMES[enum])
  handle:respond({[":status"] = "400"}, "invalid enum value")
end

-- GET query parameters of enum fields (?state=FAILD): a value's name or number.
local function check_query(handle, path, query)
  for _, route in ipairs(QUERY_ENUMS) do
    if find(path, route[1]) then
      for key, text in string.gmatch(query, "([^&=]+)=([^&]*)") do
        local enum = route[2][key]
        if enum and text ~= "" then
          text = text:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
          if not ENUMS[enum][text] then
            return refuse_enum(handle, key, enum, text)
          end
        end
      end
      return
    end
  end
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local method = headers:get(":method")
  local content_type = headers:get("content-type") or ""
  if find(content_type, "application/grpc", 1, true) == 1 then return end
  local path = headers:get(":path") or ""
  local query = find(path, "?", 1, true)
  if method == "GET" then
    if query then check_query(handle, sub(path, 1, query - 1), sub(path, query + 1)) end
    return
  end
  if query then path = sub(path, 1, query - 1) end
  local root
  for _, route in ipairs(ROUTES) do
    if route[1] == method and find(path, route[2]) then root = route[3] break end
  end
  if not root then return end
  local body = handle:body()
  if not body or body:length() == 0 then return end
  local bytes = body:getBytes(0, body:length())
  if not find(bytes, "^%s*{") then
    handle:streamInfo():dynamicMetadata():set("NAMESPACE", "not_json", "1")
    handle:respond({[":status"] = "400"}, "not a JSON object")
    return
  endDEPTH_CHECK
  local ok, finished, field, message, bad = pcall(value, bytes, 1, root, "", 0)
  if not ok or finished or not field then return end
  if bad then return refuse_enum(handle, field, message, bad) end
  field = field:gsub("[^%w_%.%-]", "?")
  local metadata = handle:streamInfo():dynamicMetadata()
  metadata:set("NAMESPACE", "field", field)
  metadata:set("NAMESPACE", "message", sub(message, 2))
  metadata:set("NAMESPACE", "known", table.concat(KNOWN[message], ", "))
  handle:respond({[":status"] = "400"}, "unknown field " .. field)
end
""".replace("DEPTH_CHECK", body_depth.lua_check("NAMESPACE")).replace("NAMESPACE", METADATA_NAMESPACE)
)


def lua_source(descriptor_set: Path = DESCRIPTOR_SET) -> str:
    """The Lua filter's whole script."""
    return lua_tables(descriptor_set) + "\n" + LUA_WALKER + body_depth.LUA_FUNCTION


#: The 400's message for a body that is not a JSON object (a JPEG posted as it is: its bytes were
#: read as JSON nested past the depth limit, "flatten the payload").
NOT_JSON_MESSAGE = (
    'the request body is not a JSON object; REST calls take JSON such as {"image": {"content": '
    '"<the image file, base64>"}} (`ferry predict FILE` sends that), and a zip of images or a JSONL '
    "manifest goes to POST /v1/uploads"
)


def unknown_field_message() -> str:
    """The 400's message, with the field, its message and the known fields the filter recorded."""
    ns = METADATA_NAMESPACE
    return (
        f'unknown field "%DYNAMIC_METADATA({ns}:field)%" in %DYNAMIC_METADATA({ns}:message)%; '
        f"its fields are: %DYNAMIC_METADATA({ns}:known)%"
    )


def invalid_enum_message() -> str:
    """The 400's message for an enum value no enum has, with what the filter recorded."""
    ns = METADATA_NAMESPACE
    return (
        f'%DYNAMIC_METADATA({ns}:enum_field)% is "%DYNAMIC_METADATA({ns}:enum_value)%"; '
        f"expected one of %DYNAMIC_METADATA({ns}:enum_known)%"
    )


def lua_filter(descriptor_set: Path = DESCRIPTOR_SET) -> str:
    """The Lua filter as an http_filters list item (its script inline, so every copy is whole)."""
    script = lua_source(descriptor_set)
    # No blank lines: the Helm chart indents every line of the config, blank ones too.
    pad = " " * 26
    indented = "\n".join(pad + line for line in script.splitlines() if line.strip())
    return f"""
                  # JSON bodies nested too deep, unknown JSON body fields: 400 naming the limit or
                  # the field (devstack/body_depth.py, devstack/body_fields.py).
                  - name: envoy.filters.http.lua
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        inline_string: |
{indented}"""
