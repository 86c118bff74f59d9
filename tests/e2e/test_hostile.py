"""Hostile input against the running stack, through Envoy, as an attacker sends it: never a 5xx.

Named attacks first (deep JSON, malformed and IPv4-carrying image hosts, a BatchPredict to a model
that does not exist), then property-based runs (hypothesis, bounded for CI: see ``EXAMPLES``):
REST bodies on every call that takes one, and raw protobuf bytes on every unary gRPC method. Each
asserts no 5xx, and that no service logged a traceback meanwhile. The schemathesis run
(tests/e2e/test_edge.py) stays: it covers the described API, this covers what the description
does not (bytes that are not JSON, nesting, encodings, transition addresses).
"""

from __future__ import annotations

import http.client
import io
import json
import struct
import time
import urllib.error
import urllib.request
import uuid
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.admin.v1 import key_service_pb2  # noqa: F401  # registers the services' descriptors
from ferry.jobs.v1 import job_service_pb2  # noqa: F401
from ferry.oip.v2 import grpc_predict_v2_pb2
from ferry.predictions.v1 import prediction_service_pb2  # noqa: F401
from services.common import limits
from tests import hostile
from tests.e2e.rest import Rest, b64
from tests.e2e.test_edge import fuzz_key

pytestmark = pytest.mark.e2e

PREDICT = "/v1/models/efficientnet-lite0:predict"
BATCH = "/v1/models/efficientnet-lite0:batchPredict"
#: Examples per property (REST, gRPC, uploads): about 10 s each on a loaded 2-core machine.
EXAMPLES = 200
BOUNDED = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests every run: a CI failure reproduces
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
#: Public gRPC services (the internal inference and store APIs are not reachable through Envoy).
PUBLIC_SERVICES = (
    "ferry.models.v1.ModelService",
    "ferry.jobs.v1.JobService",
    "ferry.predictions.v1.PredictionService",
    "inference.GRPCInferenceService",
    "ferry.admin.v1.KeyService",  # the fuzz key lacks the admin scope: what is tested is the parse
)
_LOGGED = ("gateway", "gateway-uploads", "inference", "jobs-queue", "jobs", "store")


def reason(body: dict[str, Any]) -> str:
    return str(body.get("details", [{}])[0].get("reason", "")) if body.get("details") else ""


class Logs:
    """The services' logs from a point on: what was written since, and whether it holds a traceback."""

    def __init__(self, logs_dir: Path) -> None:
        self._files = {name: logs_dir / f"{name}.log" for name in _LOGGED}
        self._offsets = {name: f.stat().st_size if f.exists() else 0 for name, f in self._files.items()}

    def tracebacks(self) -> list[str]:
        found = []
        for name, path in self._files.items():
            if not path.exists():
                continue
            with path.open("rb") as log:
                log.seek(self._offsets[name])
                for line in log.read().decode(errors="replace").splitlines():
                    if '"exception"' in line or "Traceback" in line:
                        found.append(f"{name}: {line[:1500]}")
        return found


@pytest.fixture(scope="module")
def module_logs(stack: dict[str, Any]) -> Iterator[Logs]:
    """The logs of the module's whole run (every test here takes ``logs``), checked once at its end."""
    window = Logs(Path(stack["logs_dir"]))
    yield window
    time.sleep(0.5)  # lines written as the last answers left
    assert not window.tracebacks(), "\n".join(window.tracebacks()[:5])


@pytest.fixture
def logs(stack: dict[str, Any], module_logs: Logs) -> Iterator[Logs]:
    window = Logs(Path(stack["logs_dir"]))
    yield window
    # No wait here (it was 0.5 s after each of 54 tests): a traceback logged during the test fails
    # it; one logged as its last answers left, after this check, fails the next test's window or
    # module_logs, which waits once for such lines and covers every test of the module.
    assert not window.tracebacks(), "\n".join(window.tracebacks()[:5])


@pytest.fixture(scope="module")
def hostile_key(rest: Rest) -> str:
    """A key of the fuzz tenant, so generated jobs and predictions stay out of other tests' lists."""
    return fuzz_key(rest)


def send(
    base_url: str, key: str, path: str, body: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    """POSTs raw ``body`` bytes; returns the status and the parsed answer (or its text)."""
    request = urllib.request.Request(
        base_url + path,
        data=body,
        method="POST",
        headers={"content-type": content_type, "authorization": f"Bearer {key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            raw, status = answer.read(), answer.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, raw.decode(errors="replace")


def nested_json(depth: int) -> bytes:
    """A predict body whose payload nests ``depth - 1`` levels (the body itself is one more)."""
    return ('{"payload":' + '{"k":' * (depth - 1) + "1" + "}" * (depth - 1) + "}").encode()


@pytest.mark.parametrize("depth", [limits.MAX_JSON_DEPTH + 1, 50, 98, 99, 100, 200, 100_000])
@pytest.mark.parametrize("path", [PREDICT, BATCH, "/v1/jobs"])
def test_json_nested_past_the_limit_is_400_at_the_edge(
    stack: dict[str, Any], rest: Rest, logs: Logs, depth: int, path: str
) -> None:
    body = nested_json(depth)
    if path != PREDICT:  # batchPredict and jobs take the payload inside an input
        inner = body.decode().removeprefix('{"payload":').removesuffix("}")
        body = ('{"model": "efficientnet-lite0", "inputs": [{"payload":' + inner + "}]}").encode()
    status, answer = send(stack["http_url"], rest.api_key or "", path, body)
    assert status == 400 and reason(answer) == "NESTING_TOO_DEEP", (status, str(answer)[:300])
    assert str(limits.MAX_JSON_DEPTH) in answer["message"]


def test_json_at_the_limit_passes_the_edge(stack: dict[str, Any], rest: Rest, logs: Logs) -> None:
    status, answer = send(stack["http_url"], rest.api_key or "", PREDICT, nested_json(limits.MAX_JSON_DEPTH))
    # efficientnet-lite0 takes images, so inference refuses the payload: but the edge let it through.
    assert status == 400 and reason(answer) != "NESTING_TOO_DEEP", answer


def grpc_reason(err: grpc.RpcError) -> str:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    info = error_details_pb2.ErrorInfo()
    return info.reason if status and status.details and status.details[0].Unpack(info) else ""


@pytest.mark.parametrize("depth", [limits.MAX_JSON_DEPTH + 1, 40, 2000])
def test_native_grpc_payload_past_the_limit_is_invalid_argument(
    stack: dict[str, Any], rest: Rest, logs: Logs, depth: int
) -> None:
    with grpc.insecure_channel(stack["grpc_target"]) as channel:
        call = channel.unary_unary("/ferry.models.v1.ModelService/Predict")
        with pytest.raises(grpc.RpcError) as caught:
            call(
                hostile.deep_predict_request(depth),
                metadata=(("authorization", f"Bearer {rest.api_key}"),),
                timeout=30,
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert grpc_reason(caught.value) == "NESTING_TOO_DEEP"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://a..b.com/cat.jpg", "INVALID_IMAGE_URI"),
        ("http://" + "a" * 64 + ".com/cat.jpg", "INVALID_IMAGE_URI"),
        ("http://\u2100.com/cat.jpg", "INVALID_IMAGE_URI"),
        ("http://[64:ff9b::a9fe:a9fe]/latest/meta-data/", "IMAGE_URI_FORBIDDEN"),
        ("http://[2002:7f00:1::]/cat.jpg", "IMAGE_URI_FORBIDDEN"),
        ("http://[::127.0.0.1]/cat.jpg", "IMAGE_URI_FORBIDDEN"),
        ("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/x", "IMAGE_URI_FORBIDDEN"),
    ],
)
def test_malformed_and_ipv4_carrying_image_hosts_are_400(
    rest: Rest, logs: Logs, uri: str, expected: str
) -> None:
    status, body = rest.post(PREDICT, {"image": {"uri": uri}})
    assert status == 400 and reason(body) == expected, body


@pytest.mark.parametrize(
    ("length", "status", "expected"),
    [(7_000, 400, "INVALID_RESOURCE_NAME"), (10_000, 400, "HEADERS_TOO_LARGE")],
)
def test_a_long_path_is_refused_as_what_it_is_never_429(
    rest: Rest, logs: Logs, length: int, status: int, expected: str
) -> None:
    # A 10,000-character job name went past the edge and over gRPC's metadata limit in the gateway:
    # RESOURCE_EXHAUSTED, which the edge maps to 429 ("slow down") for a request that can never pass.
    answered, body = rest.get("/v1/jobs/" + "x" * length)
    assert (answered, reason(body)) == (status, expected), body


def test_batch_predict_to_an_unknown_model_is_404_and_records_nothing(
    rest: Rest, logs: Logs, cat_jpeg: bytes
) -> None:
    model = f"no-such-model-{uuid.uuid4().hex[:8]}"
    inputs = [{"image": {"content": b64(b"not an image")}}, {"image": {"uri": "http://a..b.com/x.jpg"}}]
    status, body = rest.post(f"/v1/models/{model}:batchPredict", {"inputs": inputs})
    assert status == 404 and reason(body) == "MODEL_NOT_FOUND", body
    assert "efficientnet-lite0" in body["message"]  # names what is available
    # A marker recorded after it: once the marker is listed, a record of the refused call would be too.
    status, marker = rest.post(PREDICT, {"image": {"content": b64(cat_jpeg)}, "request_id": uuid.uuid4().hex})
    assert status == 200, marker
    rest.poll(
        "/v1/predictions?model=models/efficientnet-lite0&page_size=50",
        lambda s, b: any(p["name"] == marker["prediction"]["name"] for p in b.get("predictions", [])),
        timeout_s=30,
    )
    status, listed = rest.get(f"/v1/predictions?model=models/{model}")
    assert status == 200 and not listed.get("predictions"), listed


@pytest.mark.parametrize("name", ["x = 1\nimport os\ny", "class", "a b", ""])
def test_a_notebook_parameter_named_as_code_is_400_not_run(rest: Rest, logs: Logs, name: str) -> None:
    # papermill writes parameters into the notebook as `name = value`: such a name once ran as code
    # in the jobs runner (or, as a keyword, failed the job's first cell with a SyntaxError).
    status, body = rest.post("/v1/jobs", {"notebook": "report", "parameters": {"count": 1, name: 1}})
    assert status == 400 and reason(body) == "INVALID_NOTEBOOK_JOB", body
    assert body["details"][0]["metadata"]["field"] == "parameters", body


def test_an_oip_tensor_of_nan_is_400_not_nan_scores(stack: dict[str, Any], rest: Rest, logs: Logs) -> None:
    # Binary data can carry NaN where JSON cannot: it once ran, and the answer's scores were the
    # token NaN, which is not JSON (JSON.parse and Go's decoder refuse the whole body).
    raw = struct.pack("<f", float("nan")) * (3 * 224 * 224)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "TENSOR",
                    "datatype": "FP32",
                    "shape": [1, 3, 224, 224],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    ).encode()
    request = urllib.request.Request(
        stack["http_url"] + "/v2/models/efficientnet-lite0/infer",
        data=header + raw,
        headers={
            "content-type": "application/octet-stream",
            "inference-header-content-length": str(len(header)),
            "authorization": f"Bearer {rest.api_key}",
        },
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400
    assert "NaN or infinity" in refused.value.read().decode()


def test_a_negative_oip_timeout_is_invalid_argument_not_deadline_exceeded(
    stack: dict[str, Any], rest: Rest, logs: Logs
) -> None:
    request = grpc_predict_v2_pb2.ModelInferRequest(model_name="minilm")
    text = request.inputs.add(name="TEXT", datatype="BYTES", shape=[1])
    text.contents.bytes_contents.append(b"a negative deadline is a bad request")
    request.parameters["timeout"].int64_param = -5
    with grpc.insecure_channel(stack["grpc_target"]) as channel, pytest.raises(grpc.RpcError) as caught:
        channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            request.SerializeToString(), metadata=(("authorization", f"Bearer {rest.api_key}"),), timeout=30
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    assert grpc_reason(caught.value) == "INVALID_OIP_PARAMETER"


def test_a_nul_in_a_candidate_label_is_stored_and_its_job_ends(rest: Rest, logs: Logs) -> None:
    # Postgres text holds no NUL: the item's record was dropped and the job stayed QUEUED for good.
    text = {"content": "a cat on a sofa", "candidate_labels": ["\u0000cat", "tax"]}
    status, created = rest.post("/v1/jobs", {"model": "minilm", "inputs": [{"text": text}]})
    assert status == 200, created
    status, job = rest.poll(f"/v1/{created['job']['name']}", lambda s, b: b["job"]["state"] not in _RUNNING)
    assert job["job"]["state"] == "JOB_STATE_SUCCEEDED", job


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", {"model": "minilm", "inputs": [{"text": {"content": "x"}}], "request_id": "a\u0000b"}),
        ("/v1/keys", {"tenant": "nul", "scopes": ["read"], "display_name": "a\u0000b"}),
    ],
)
def test_a_nul_in_text_that_is_kept_is_400_not_500(rest: Rest, logs: Logs, path: str, body: Any) -> None:
    status, answer = rest.post(path, body)
    assert status == 400 and reason(answer) in {"INVALID_REQUEST_ID", "INVALID_DISPLAY_NAME"}, answer


_RUNNING = {"JOB_STATE_EXPANDING", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING"}


# Property-based: REST bodies on every call that takes one.

_BODY_PATHS = [
    PREDICT,
    BATCH,
    "/v1/jobs",
    "/v1/models/no-such-model:predict",
    "/v1/jobs/x:cancel",
    "/v1/jobs/x:retry",
    "/v1/keys",
    "/v2/models/efficientnet-lite0/infer",
    "/v2/models/minilm/infer",
]

_images = st.fixed_dictionaries({}, optional={"content": hostile.texts(max_size=12), "uri": hostile.urls})
_inputs = st.one_of(
    st.fixed_dictionaries({"image": _images}),
    st.fixed_dictionaries(
        {
            "text": st.fixed_dictionaries(
                {"content": hostile.texts(max_size=40)},
                optional={"candidate_labels": st.lists(hostile.texts(max_size=10), max_size=3)},
            )
        }
    ),
    st.fixed_dictionaries({"payload": st.one_of(hostile.nested(), hostile.json_values)}),
    hostile.json_values,
)
#: Open Inference Protocol REST bodies: tensors of any datatype, shape and data, and parameters.
_oip_bodies = st.fixed_dictionaries(
    {
        "inputs": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from(["IMAGE", "TEXT", "JSON", "TENSOR", "x"]),
                    "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "BOOL", "??"]),
                    "shape": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
                    "data": st.one_of(hostile.json_values, hostile.nested()),
                    "parameters": hostile.json_values,
                },
            ),
            max_size=3,
        )
    },
    optional={
        "parameters": st.one_of(hostile.json_values, hostile.nested()),
        "id": hostile.texts(max_size=10),
    },
)

_request_bodies = st.one_of(
    _oip_bodies.map(lambda d: json.dumps(d).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "model": hostile.texts(max_size=20),
            "image": _images,
            "payload": st.one_of(hostile.nested(), hostile.json_values),
            "inputs": st.lists(_inputs, max_size=3),
            "top_k": st.integers(-(2**40), 2**40),
            "priority": st.one_of(st.integers(-5, 10), hostile.texts(max_size=8)),
            "request_id": hostile.texts(max_size=200),
            "notebook": hostile.texts(max_size=10),
            "parameters": st.one_of(hostile.nested(), hostile.json_values),
        },
    ).map(lambda d: json.dumps(d).encode()),
    hostile.json_texts.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=80),
)


@BOUNDED
@given(path=st.sampled_from(_BODY_PATHS), body=_request_bodies)
def test_rest_bodies_never_get_a_5xx(
    stack: dict[str, Any], hostile_key: str, logs: Logs, path: str, body: bytes
) -> None:
    status, answer = send(stack["http_url"], hostile_key, path, body)
    assert status < 500, (path, body[:300], status, str(answer)[:500])


# Property-based: raw protobuf bytes on every unary gRPC method through Envoy.


def _unary_methods() -> list[str]:
    pool = descriptor_pool.Default()
    methods = []
    for service in PUBLIC_SERVICES:
        for method in pool.FindServiceByName(service).methods:
            if not method.client_streaming and not method.server_streaming:
                methods.append(f"/{service}/{method.name}")
    return sorted(methods)


_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.fixture(scope="module")
def channel(stack: dict[str, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(stack["grpc_target"]) as opened:
        yield opened


@BOUNDED
@given(
    method=st.sampled_from(_unary_methods()),
    body=st.one_of(st.binary(max_size=120), st.integers(30, 3000).map(hostile.deep_predict_request)),
)
def test_grpc_bytes_never_get_a_server_error(
    channel: grpc.Channel, hostile_key: str, logs: Logs, method: str, body: bytes
) -> None:
    call = channel.unary_unary(method)
    try:
        call(body, metadata=(("authorization", f"Bearer {hostile_key}"),), timeout=30)
    except grpc.RpcError as err:
        assert err.code() not in _SERVER_ERRORS, (method, body[:200], err.code(), err.details())


# Property-based: uploads (zips and JSONL manifests, well formed or not) and jobs made from them.


def _zip(entries: list[tuple[str, bytes]], damage: str) -> bytes:
    """A zip of ``entries``, then damaged: a wrong CRC, corrupt deflate data, an "encrypted" flag."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the hostile cases
        for name, data in entries:
            # zipfile cuts a name at its first NUL: one that starts with it would be no name at all.
            archive.writestr(name if name.split("\0")[0] else f"x{name}", data)
    raw = bytearray(buffer.getvalue())
    if damage and raw[:4] == b"PK\x03\x04":
        central = raw.find(b"PK\x01\x02")
        if damage == "crc":
            raw[14] ^= 0xFF  # the first entry's CRC-32, in its local header...
            if central >= 0:
                raw[central + 16] ^= 0xFF  # ...and in the central directory
        elif damage == "deflate":
            start = 30 + int.from_bytes(raw[26:28], "little") + int.from_bytes(raw[28:30], "little")
            raw[start : start + 8] = b"\xff" * 8
        elif damage == "encrypted":
            raw[6] |= 1  # general purpose flag bit 0, in the local header...
            if central >= 0:
                raw[central + 8] |= 1  # ...and in the central directory
    return bytes(raw)


_entries = st.lists(
    st.tuples(
        st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(["../evil.jpg", "/abs.jpg", "a/b.jpg"])),
        st.one_of(st.binary(max_size=64), st.integers(1, 1 << 20).map(lambda n: b"\0" * n)),
    ),
    max_size=4,
)
_zips = st.builds(_zip, _entries, st.sampled_from(["", "crc", "deflate", "encrypted"]))
_manifest_lines = st.one_of(
    hostile.json_texts,
    st.builds(lambda uri: json.dumps({"image": uri}), hostile.urls),
    st.builds(lambda value: json.dumps({"payload": value}), hostile.nested()),
    st.builds(lambda value: json.dumps({"text": value}), hostile.texts(max_size=20)),
    # A line's own name for its item: any text (controls, bidi, surrogates), too long, not text.
    st.builds(
        lambda value, given: json.dumps({"text": value, "id": given}),
        hostile.texts(max_size=20),
        st.one_of(hostile.texts(max_size=30), st.integers(), st.none(), st.just("i" * 1025)),
    ),
)
_manifests = st.lists(_manifest_lines, min_size=0, max_size=5).map(lambda lines: "\n".join(lines).encode())


@BOUNDED
@given(
    body=st.one_of(_zips, _manifests, st.binary(max_size=100)),
    content_type=st.sampled_from(["application/zip", "application/x-ndjson", "application/octet-stream"]),
)
def test_uploads_and_jobs_made_from_them_never_get_a_5xx(
    stack: dict[str, Any], hostile_key: str, logs: Logs, body: bytes, content_type: str
) -> None:
    status, answer = send(stack["http_url"], hostile_key, "/v1/uploads", body, content_type)
    assert status < 500, (body[:300], status, str(answer)[:500])
    if status != 200:
        return
    job = json.dumps({"model": "efficientnet-lite0", "manifest": answer["upload"]["name"]}).encode()
    status, created = send(stack["http_url"], hostile_key, "/v1/jobs", job)
    assert status < 500, (body[:300], status, str(created)[:500])
    if status == 200:  # its lines are read while it is EXPANDING: it leaves that state, never by a 5xx
        expanded = left_expanding(stack["http_url"], hostile_key, created["job"]["name"])
        assert expanded["state"] != "JOB_STATE_EXPANDING", (body[:300], expanded)
        if expanded["state"] == "JOB_STATE_FAILED" and not expanded["items_total"]:  # a bad manifest
            error = expanded["error"]
            reason = error_reason(error)
            assert error["code"] not in _SERVER_ERROR_NUMBERS and reason, (body[:300], error)
            if reason in {"INVALID_MANIFEST", "NESTING_TOO_DEEP"}:  # a line's fault: it is named
                assert " line " in error["message"], (body[:300], error)


@pytest.mark.parametrize(
    "line",
    [
        b'{"text": "\\udc00"}',
        b'{"text": "fine", "id": "\\ud800"}',
        b'{"text": "fine", "candidate_labels": ["\\udbff"]}',
        b'{"payload": {"k\\ud800": 1}}',
    ],
)
def test_a_manifest_line_holding_a_lone_surrogate_fails_its_job_naming_the_line(
    stack: dict[str, Any], hostile_key: str, logs: Logs, line: bytes
) -> None:
    # JSON can spell a lone UTF-16 surrogate that no protobuf string can carry: such a line once made
    # the expander raise, again and again, with the job left EXPANDING for good.
    manifest = b'{"text": "a first, good line"}\n' + line + b"\n"
    expanded = minilm_job_of(stack["http_url"], hostile_key, manifest)
    assert expanded["state"] == "JOB_STATE_FAILED" and expanded["items_total"] == 0, expanded
    assert error_reason(expanded["error"]) == "INVALID_MANIFEST", expanded["error"]
    assert " line 2" in expanded["error"]["message"] and "surrogate" in expanded["error"]["message"]


def test_a_manifest_saved_with_a_byte_order_mark_runs(
    stack: dict[str, Any], hostile_key: str, logs: Logs
) -> None:
    # Notepad's "UTF-8 with BOM": line 1 was "not JSON (Unexpected UTF-8 BOM ...)" and the job failed.
    manifest = '\ufeff{"text": "a first line"}\r\n{"text": "a second"}\r\n'.encode()
    expanded = minilm_job_of(stack["http_url"], hostile_key, manifest)
    assert expanded["items_total"] == 2 and "error" not in expanded, expanded


# google.rpc codes of server errors (UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS): never a bad manifest's.
_SERVER_ERROR_NUMBERS = {2, 13, 14, 15}


def minilm_job_of(base_url: str, key: str, manifest: bytes) -> dict[str, Any]:
    """Uploads ``manifest``, makes a minilm job of it, and returns the job once it left EXPANDING."""
    status, answer = send(base_url, key, "/v1/uploads", manifest, "application/x-ndjson")
    assert status == 200, answer
    job = json.dumps({"model": "minilm", "manifest": answer["upload"]["name"]}).encode()
    status, created = send(base_url, key, "/v1/jobs", job)
    assert status == 200, created
    return left_expanding(base_url, key, created["job"]["name"])


def left_expanding(base_url: str, key: str, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """The job ``name`` once it is no longer EXPANDING (or as it is after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        request = urllib.request.Request(f"{base_url}/v1/{name}", headers={"authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            job: dict[str, Any] = json.loads(answer.read())["job"]
        if job["state"] != "JOB_STATE_EXPANDING" or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def error_reason(error: dict[str, Any]) -> str:
    """The ErrorInfo reason among a REST error's details ('' if none)."""
    for detail in error.get("details", []):
        if detail.get("@type", "").endswith("google.rpc.ErrorInfo"):
            return str(detail.get("reason", ""))
    return ""


@pytest.mark.parametrize("header", ["authorization", "x-trace-note"])
def test_a_header_value_that_is_not_utf8_is_answered_without_a_traceback(
    stack: dict[str, Any], logs: Logs, header: str
) -> None:
    # grpcio logged "Invalid encoding on b'Bearer fy_\xe9...'" at ERROR with a traceback, three
    # times per call, for any such header value: any client could fill the logs with them.
    host, port = stack["http_url"].removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    value = b"Bearer fy_\xe9\xe9\xe9" if header == "authorization" else b"caf\xe9"
    connection.putrequest("GET", "/v1/models")
    connection.putheader(header, value)
    if header != "authorization":
        connection.putheader("authorization", f"Bearer {stack['dev_api_key']}")
    connection.endheaders()
    answer = connection.getresponse()
    answer.read()
    connection.close()
    assert answer.status == (401 if header == "authorization" else 200)
