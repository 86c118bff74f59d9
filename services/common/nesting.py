"""Nesting depth of JSON values and protobuf Structs, measured without recursion.

Deep nesting is a cheap attack: a few kilobytes of ``[[[[...`` make Python's ``json`` raise
RecursionError and protobuf's parser (100 message levels, three per JSON level inside a Struct)
refuse a message every service must read. So every JSON value a caller sends (REST bodies at the
edge, payloads, notebook parameters, manifest lines, OIP JSON inputs) is held to
``limits.MAX_JSON_DEPTH``, and measured here with an explicit stack, never Python's own.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from google.protobuf import struct_pb2

from services.common import limits
from services.common.errors import InvalidArgument

REASON = "NESTING_TOO_DEEP"


class TooDeep(ValueError):
    """A JSON value nests deeper than its limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"it nests objects and arrays deeper than {limit} levels")
        self.limit = limit


def json_depth(value: Any, limit: int = limits.MAX_JSON_DEPTH) -> int:
    """Levels of objects and arrays in a parsed JSON value (a scalar is 0), counted up to ``limit + 1``.

    It stops at ``limit + 1``, so a hostile value costs no more than one that is just too deep.
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(node, list) and not _holds_containers(node):
            continue  # a tensor's row of numbers: millions of scalars, looked at in C
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _holds_containers(items: list[Any]) -> bool:
    """Whether a list holds an object or an array, judged by its few element types (``map`` and
    ``set`` walk the list in C: an OIP tensor's JSON data has millions of numbers)."""
    return any(issubclass(kind, (dict, list)) for kind in set(map(type, items)))


Container = struct_pb2.Struct | struct_pb2.ListValue


def _values(node: Container) -> Iterable[struct_pb2.Value]:
    return node.fields.values() if isinstance(node, struct_pb2.Struct) else node.values


def _containers(value: Container) -> Iterator[tuple[Container, int]]:
    """Every Struct and ListValue in ``value`` with its depth (``value`` itself is 1), without
    recursion; stop iterating to stop the walk."""
    stack: list[tuple[Container, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        for item in _values(node):
            kind = item.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((item.struct_value, depth + 1))
            elif kind == "list_value":
                stack.append((item.list_value, depth + 1))


def struct_depth(value: Container, limit: int = limits.MAX_JSON_DEPTH) -> int:
    """As ``json_depth``, for a protobuf Struct or ListValue (a Struct alone is 1)."""
    deepest = 0
    for _, depth in _containers(value):
        deepest = max(deepest, depth)
        if deepest > limit:
            break
    return deepest


def check_json(value: Any, limit: int = limits.MAX_JSON_DEPTH) -> Any:
    """Returns ``value`` if it nests at most ``limit`` levels.

    Raises:
        TooDeep: it nests deeper.
    """
    if json_depth(value, limit) > limit:
        raise TooDeep(limit)
    return value


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


def loads(text: str | bytes, limit: int = limits.MAX_JSON_DEPTH, yielding: bool = False) -> Any:
    """``json.loads`` for text from callers: a value nested past ``limit`` is TooDeep, not RecursionError.

    ``yielding`` (for a large text parsed on a worker thread) reads each number through a Python
    function, which lets the interpreter hand the GIL to the event loop's thread every few
    milliseconds: json's C parser holds it from start to end otherwise (0.4-0.6 s for a 15 MiB
    tensor), and the loop with it. It costs about a third more time.

    Raises:
        TooDeep: nested deeper than ``limit`` (however deep: Python's own recursion limit included).
        ValueError: not JSON (``json.JSONDecodeError``), an integer too long to convert, or a
            string holding a lone surrogate (``"\\ud800"``), which no protobuf string can carry.
    """
    try:
        value = json.loads(text, parse_float=_float, parse_int=_int) if yielding else json.loads(text)
    except RecursionError:
        raise TooDeep(limit) from None
    check_json(value, limit)
    # JSON may spell a lone UTF-16 surrogate ("\\udc00"); json.loads keeps it, and protobuf (every
    # string field, every Struct) then raises on it far from here. Only escapes can make one.
    if (isinstance(text, str) and "\\u" in text) or (isinstance(text, bytes) and b"\\u" in text):
        _check_unicode(value)
    return value


def _check_unicode(value: Any) -> None:
    """Raises ValueError for a lone surrogate in any string (key or value) of a parsed JSON value."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"a string holds a lone UTF-16 surrogate ({node[err.start]!r}) at character "
                    f"{err.start}; JSON strings must be valid Unicode: escape a character outside the "
                    "Basic Multilingual Plane as a surrogate pair, or send it as UTF-8"
                ) from None
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def too_deep(where: str, limit: int = limits.MAX_JSON_DEPTH) -> InvalidArgument:
    """The 400 for a value at ``where`` nested past ``limit``: reason NESTING_TOO_DEEP."""
    return InvalidArgument(
        f"{where} nests objects and arrays deeper than {limit} levels, the limit; flatten it",
        reason=REASON,
        metadata={"field": where, "max_depth": str(limit)},
    )


def check_struct(value: struct_pb2.Struct | None, where: str, limit: int = limits.MAX_JSON_DEPTH) -> None:
    """Refuses a Struct (a payload, notebook parameters) nested past ``limit``, or holding a number
    JSON cannot spell (NaN, infinity: protobuf carries them, and every JSON encoder of it raises).

    Raises:
        InvalidArgument: NESTING_TOO_DEEP, or INVALID_INPUT for NaN or infinity.
    """
    if value is None:
        return
    if struct_depth(value, limit) > limit:
        raise too_deep(where, limit)
    if not _finite(value):
        raise InvalidArgument(
            f"{where} holds NaN or infinity, which JSON cannot carry; send finite numbers",
            reason="INVALID_INPUT",
            metadata={"field": where},
        )


def _finite(value: struct_pb2.Struct) -> bool:
    """Whether every number in ``value`` is finite (after the depth check: this walks all of it)."""
    return all(
        math.isfinite(item.number_value)
        for node, _ in _containers(value)
        for item in _values(node)
        if item.WhichOneof("kind") == "number_value"
    )
