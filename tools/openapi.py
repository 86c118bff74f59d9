"""Generates the REST API's OpenAPI 3.0 description from the descriptor set Envoy transcodes with.

Why not Debian's protoc-gen-swagger (golang-grpc-gateway): the packaged release is 1.6.4 (2018),
writes Swagger 2.0 with its own naming and error conventions, and needs root and apt at build
time. The description has to say exactly what Envoy's transcoder accepts (devstack/envoy.py):
proto field names (``preserve_proto_field_names``), ``body: "*"`` bodies without the path's
fields, unknown body fields refused (``additionalProperties: false``, devstack/body_fields.py),
the other request fields as query parameters, and errors as ``{"code", "message", "details"}``.
Reading the same descriptor set with protobuf's own classes gives that directly.

Run ``python -m tools.openapi`` after changing a proto (after ``python -m tools.protogen``); the
suite fails while deploy/openapi/ferry.json differs from this rendering. Envoy serves it at
``/openapi.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import descriptor_pb2

from tools.protogen import ERROR_DETAILS_PROTO, PUBLIC_SERVICES, ROOT, _run_protoc, proto_files

OPENAPI_FILE = ROOT / "deploy" / "openapi" / "ferry.json"
#: Where Envoy serves the description on the public port.
OPENAPI_PATH = "/openapi.json"

Field = descriptor_pb2.FieldDescriptorProto
Schema = dict[str, Any]

_SCALARS: dict[int, Schema] = {
    Field.TYPE_DOUBLE: {"type": "number", "format": "double"},
    Field.TYPE_FLOAT: {"type": "number", "format": "float"},
    Field.TYPE_INT32: {"type": "integer", "format": "int32"},
    Field.TYPE_SINT32: {"type": "integer", "format": "int32"},
    Field.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    Field.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    Field.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    # proto3 JSON writes 64-bit integers as decimal strings.
    Field.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    Field.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    Field.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    Field.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    Field.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    Field.TYPE_BOOL: {"type": "boolean"},
    Field.TYPE_STRING: {"type": "string"},
    Field.TYPE_BYTES: {"type": "string", "format": "byte"},
}

#: Well-known types with a JSON form of their own.
_WELL_KNOWN: dict[str, Schema] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    ".google.protobuf.FieldMask": {"type": "string"},
    ".google.protobuf.Struct": {"type": "object"},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array", "items": {}},
    ".google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.StringValue": {"type": "string"},
    ".google.protobuf.BoolValue": {"type": "boolean"},
    ".google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    ".google.protobuf.DoubleValue": {"type": "number"},
    ".google.protobuf.FloatValue": {"type": "number"},
}

#: The body of every error, the gateway's and Envoy's own (docs/api.md, "Errors").
ERROR_SCHEMA: Schema = {
    "type": "object",
    "description": "A google.rpc.Status: the gRPC code, a message to act on, and details "
    "(a google.rpc.ErrorInfo with the reason; BadRequest, RetryInfo when they apply).",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "integer", "format": "int32"},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {"type": "object", "properties": {"@type": {"type": "string"}}},
        },
    },
}


class Descriptors:
    """Messages, enums and their comments from a FileDescriptorSet (with source info)."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.files = files
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        for file in files.file:
            prefix = f".{file.package}" if file.package else ""
            for enum in file.enum_type:
                self.enums[f"{prefix}.{enum.name}"] = enum
            for message in file.message_type:
                self._add(prefix, message)

    def _add(self, prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        self.messages[name] = message
        for enum in message.enum_type:
            self.enums[f"{name}.{enum.name}"] = enum
        for nested in message.nested_type:
            self._add(name, nested)


def _comments(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    return {
        tuple(loc.path): " ".join(loc.leading_comments.split())
        for loc in file.source_code_info.location
        if loc.leading_comments
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name.lstrip('.')}"}


def _field_schema(field: descriptor_pb2.FieldDescriptorProto, found: Descriptors) -> Schema:
    if field.type == Field.TYPE_MESSAGE:
        message = found.messages.get(field.type_name)
        if message is not None and message.options.map_entry:
            value = _field_schema(message.field[1], found)
            return {"type": "object", "additionalProperties": value}
        item = _WELL_KNOWN.get(field.type_name, _ref(field.type_name))
    elif field.type == Field.TYPE_ENUM:
        item = _ref(field.type_name)
    else:
        item = dict(_SCALARS[field.type])
    if field.label == Field.LABEL_REPEATED:
        return {"type": "array", "items": item}
    return item


def _schemas(found: Descriptors, roots: set[str], comments: dict[str, str]) -> dict[str, Schema]:
    """Component schemas for every message and enum reachable from ``roots``."""
    schemas: dict[str, Schema] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        key = name.lstrip(".")
        if key in schemas or name in _WELL_KNOWN:
            continue
        if name in found.enums:
            values = [v.name for v in found.enums[name].value]
            schemas[key] = {"type": "string", "enum": values, "description": comments.get(name, "")}
            continue
        message = found.messages[name]
        properties = {}
        required = []
        for field in message.field:
            schema = _field_schema(field, found)
            behaviors = set(field.options.Extensions[field_behavior_pb2.field_behavior])
            if field_behavior_pb2.REQUIRED in behaviors:
                required.append(field.name)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                schema = (
                    {**schema, "readOnly": True}
                    if "$ref" not in schema
                    else {"allOf": [schema], "readOnly": True}
                )
            text = comments.get(f"{name}.{field.name}")
            if text:
                schema = (
                    {**schema, "description": text}
                    if "$ref" not in schema
                    else {"allOf": [schema], "description": text}
                )
            properties[field.name] = schema
            if field.type in (Field.TYPE_MESSAGE, Field.TYPE_ENUM):
                target = found.messages.get(field.type_name)
                if target is not None and target.options.map_entry:
                    pending += [f.type_name for f in target.field if f.type_name]
                else:
                    pending.append(field.type_name)
        schemas[key] = {
            "type": "object",
            "description": comments.get(name, ""),
            "properties": properties,
            # Envoy refuses fields a message does not have (devstack/body_fields.py).
            "additionalProperties": False,
        }
        if required:  # google.api.field_behavior REQUIRED
            schemas[key]["required"] = required
    return dict(sorted(schemas.items()))


def _message_comments(
    texts: dict[str, str],
    by_path: dict[tuple[int, ...], str],
    path: tuple[int, ...],
    name: str,
    message: descriptor_pb2.DescriptorProto,
) -> None:
    """Adds the comments of a message, its fields and its nested messages to ``texts``."""
    texts[name] = by_path.get(path, "")
    for i, field in enumerate(message.field):
        texts[f"{name}.{field.name}"] = by_path.get((*path, 2, i), "")
    for i, nested in enumerate(message.nested_type):
        _message_comments(texts, by_path, (*path, 3, i), f"{name}.{nested.name}", nested)


def _all_comments(found: Descriptors) -> dict[str, str]:
    """Leading comments of messages, their fields, enums and methods, by full name."""
    texts: dict[str, str] = {}
    for file in found.files.file:
        by_path = _comments(file)
        prefix = f".{file.package}"

        for i, message in enumerate(file.message_type):
            _message_comments(texts, by_path, (4, i), f"{prefix}.{message.name}", message)
        for i, enum in enumerate(file.enum_type):
            texts[f"{prefix}.{enum.name}"] = by_path.get((5, i), "")
        for s, service in enumerate(file.service):
            for m, method in enumerate(service.method):
                texts[f"{prefix}.{service.name}.{method.name}"] = by_path.get((6, s, 2, m), "")
    return texts


def _openapi_path(template: str) -> tuple[str, list[tuple[str, str]]]:
    """``/v1/{model=models/*}:predict`` as ``/v1/models/{model}:predict``, with (parameter, field):
    the field gets ``models/<parameter>``, as the transcoder binds it."""
    params = []

    def replace(found: re.Match[str]) -> str:
        field, _, pattern = found[1].partition("=")
        pattern = pattern or "*"
        name = field.replace(".", "_")
        params.append((name, field))
        return pattern.replace("**", "*").replace("*", f"{{{name}}}", 1)

    return re.sub(r"\{([^}]*)\}", replace, template), params


def _query_parameters(
    message: descriptor_pb2.DescriptorProto, bound: set[str], found: Descriptors
) -> list[Schema]:
    """The request's other fields as query parameters (scalars, enums, timestamps; repeated ones too)."""
    params = []
    for field in message.field:
        if field.name in bound:
            continue
        if field.type == Field.TYPE_MESSAGE and field.type_name not in _WELL_KNOWN:
            continue
        schema = _field_schema(field, found)
        params.append({"name": field.name, "in": "query", "required": False, "schema": schema})
    return params


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set Envoy reads (tools/protogen.py), with the comments it leaves out."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "ferry.pb"
        args = [f"--descriptor_set_out={out}", "--include_imports", "--include_source_info"]
        _run_protoc([*args, *proto_files(), ERROR_DETAILS_PROTO])
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _body_schema(found: Descriptors, name: str, bound: set[str], comments: dict[str, str]) -> Schema:
    """A ``body: "*"`` request's JSON body: the message without the fields the path binds."""
    schema = _schemas(found, {name}, comments)[name.lstrip(".")]
    body = {**schema, "properties": {k: v for k, v in schema["properties"].items() if k not in bound}}
    required = [f for f in body.pop("required", []) if f not in bound]
    return {**body, "required": required} if required else body


def render() -> dict[str, Any]:
    """The OpenAPI 3.0 document of the public (transcoded) services."""
    found = Descriptors(descriptor_set())
    comments = _all_comments(found)
    paths: dict[str, dict[str, Any]] = {}
    roots: set[str] = set()
    for file in found.files.file:
        for service in file.service:
            full = f"{file.package}.{service.name}"
            if full not in PUBLIC_SERVICES:
                continue
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb is None or verb == "custom":
                    continue
                path, bound = _openapi_path(getattr(rule, verb))
                request = found.messages[method.input_type]
                operation: dict[str, Any] = {
                    "operationId": f"{service.name}_{method.name}",
                    "tags": [service.name],
                    "summary": comments.get(f".{full}.{method.name}", ""),
                    "parameters": [
                        {
                            "name": name,
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[^/]+$"},
                        }
                        for name, _ in bound
                    ],
                    "responses": {
                        "200": {
                            "description": "The response message"
                            + (
                                ", one JSON object per line until the job ends"
                                if method.server_streaming
                                else ""
                            ),
                            "content": {"application/json": {"schema": _ref(method.output_type)}},
                        },
                        "default": {
                            "description": "An error in the gateway's shape",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                            },
                        },
                    },
                }
                if method.server_streaming:
                    operation["x-ferry-streaming"] = True
                bound_fields = {field.split(".")[0] for _, field in bound}
                if rule.body == "*":
                    body_name = f"{method.input_type}.Body"
                    body = _body_schema(found, method.input_type, bound_fields, comments)
                    roots.add(method.input_type)
                    operation["requestBody"] = {
                        "required": True,
                        "content": {"application/json": {"schema": _ref(body_name)}},
                    }
                    paths.setdefault("__bodies__", {})[body_name.lstrip(".")] = body
                else:
                    operation["parameters"] += _query_parameters(request, bound_fields, found)
                roots.add(method.output_type)
                paths.setdefault(path, {})[verb] = operation
    bodies = paths.pop("__bodies__", {})
    schemas = {**_schemas(found, roots, comments), **bodies, "Error": ERROR_SCHEMA}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Ferry",
            "version": "v1",
            "description": "Ferry's REST API, transcoded by Envoy from the gRPC services "
            f"{', '.join(PUBLIC_SERVICES)}. Generated from protos/ by `python -m tools.openapi`; "
            "see docs/api.md.",
        },
        "security": [{"bearer": []}, {"apiKey": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
    }


def render_text() -> str:
    return json.dumps(render(), indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OPENAPI_FILE)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_text())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
