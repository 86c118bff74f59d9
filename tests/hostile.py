"""Hypothesis strategies of hostile input, shared by the gateway's unit tests and the e2e run.

Each draws what an attacker (or a broken client) sends: malformed, deeply nested, huge,
mis-encoded and unicode values. Sizes stay small enough for a CI run: depth is what breaks
parsers, not megabytes (the edge bounds bytes).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from ferry.models.v1 import model_service_pb2
from services.common import limits

#: Any character, with lone UTF-16 surrogates drawn often (``st.text()`` never draws one, yet JSON
#: spells one as ``"\udc00"``: such a manifest line once kept its job EXPANDING for good), and the
#: characters that trip text handling: NUL, a right-to-left override, a combining mark, a BOM.
characters = st.one_of(
    st.characters(), st.characters(categories=["Cs"]), st.sampled_from("\0\u202e\u0301\ufeff")
)


def texts(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Text of any characters (see ``characters``), lone surrogates among them."""
    return st.text(characters, min_size=min_size, max_size=max_size)


#: Scalars JSON can hold, including the awkward ones: huge integers, lone surrogates.
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    texts(max_size=20),
)

#: Any JSON value of modest size.
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def nested(draw: st.DrawFn, max_depth: int = 3 * limits.MAX_JSON_DEPTH) -> Any:
    """A JSON object nested ``depth`` levels (objects and arrays mixed), around the limit and beyond."""
    depth = draw(
        st.one_of(
            st.integers(min_value=1, max_value=max_depth),
            st.sampled_from([limits.MAX_JSON_DEPTH, limits.MAX_JSON_DEPTH + 1, 50, 98, 99, 100, 101]),
        )
    )
    arrays = draw(st.integers(min_value=0, max_value=(1 << max_depth) - 1))  # bit i: level i an array
    value: Any = draw(json_scalars)
    for level in range(depth - 1):
        value = [value] if arrays >> level & 1 else {"k": value}
    return {"k": value}


def deep_text(depth: int) -> str:
    """A JSON text nested ``depth`` arrays inside one object (cheap to make at any depth)."""
    return '{"k":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


#: Texts that are JSON, nearly JSON, or not JSON at all.
json_texts = st.one_of(
    json_values.map(json.dumps),
    nested().map(json.dumps),
    st.integers(min_value=1, max_value=5000).map(deep_text),
    texts(max_size=40),
    st.sampled_from(
        ['{"a": 1', '{"a": "\\ud800"}', '{"\\udc00": 1}', "1" * 5000, '{"a": 1e999}', "[" * 3000]
    ),
)

#: Host names: well formed, malformed, unicode, too long, address literals of every kind.
hosts = st.one_of(
    st.from_regex(r"[a-z0-9-]{1,70}(\.[a-z0-9-]{0,70}){0,4}", fullmatch=True),
    texts(min_size=1, max_size=80),
    st.sampled_from(
        [
            "a..b.com",
            "a" * 64 + ".com",
            "\u2100.com",
            "xn--.com",
            "[::1",
            "[64:ff9b::a9fe:a9fe]",
            "[2002:7f00:1::]",
            "[::127.0.0.1]",
            "[fe80::1%25eth0]",
            "169.254.169.254",
            "0x7f.1",
            "2852039166",
            "ex%41mple.com",
            "a\u200bb.com",
            "\udcff.com",
        ]
    ),
)
urls = st.one_of(
    st.builds(
        lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
        st.sampled_from(["http", "https", "ftp", "file", "HTTP", ""]),
        hosts,
        st.sampled_from(["", ":80", ":0", ":99999", ":-1", ":abc"]),
        texts(max_size=20).map(lambda t: "/" + t),
    ),
    texts(max_size=60),
)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number: int, body: bytes) -> bytes:
    """A length-delimited protobuf field, written by hand: protobuf refuses to build messages this deep."""
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def deep_predict_request(depth: int, model: str = "models/efficientnet-lite0") -> bytes:
    """A PredictRequest whose payload Struct nests ``depth`` objects ({"k": {"k": ...}}), as raw bytes."""
    struct = b""
    for _ in range(depth - 1):
        value = _field(5, struct)  # Value.struct_value
        struct = _field(1, _field(1, b"k") + _field(2, value))  # a Struct.fields map entry
    fields = model_service_pb2.PredictRequest.DESCRIPTOR.fields_by_name
    return _field(fields["model"].number, model.encode()) + _field(fields["payload"].number, struct)
