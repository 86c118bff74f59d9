"""Error reasons are a contract: defined once in the ErrorReason enum, used by every service and by
Envoy's own replies, and documented by a table rendered from the enum."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from devstack import edge
from services.common import errors
from services.common.errors import InvalidArgument, NotFound, reasons
from tools import errordocs

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted((ROOT / "services").rglob("*.py"))


def _strings(node: ast.expr, constants: dict[str, str]) -> Iterator[str]:
    """The strings an expression can evaluate to: a literal, a module constant, or either branch
    of ``"A" if x else "B"``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.Name) and node.id in constants:
        yield constants[node.id]
    elif isinstance(node, ast.IfExp):
        yield from _strings(node.body, constants)
        yield from _strings(node.orelse, constants)


def _constants(tree: ast.Module) -> dict[str, str]:
    """A module's top-level ``NAME = "text"`` constants."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    found[target.id] = node.value.value
    return found


def _error_classes(trees: list[ast.Module]) -> dict[str, grpc.StatusCode | None]:
    """FerryError and its subclasses anywhere in services/, with the code each fixes (None: varies)."""
    known: dict[str, grpc.StatusCode | None] = {"FerryError": None}
    known |= {
        name: cls.code
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, errors.FerryError) and cls is not errors.FerryError
    }
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                inherited = [known[b] for b in bases if b in known]
                if inherited:
                    known.setdefault(node.name, inherited[0])
    return known


def _reason_positions(trees: list[ast.Module], classes: dict[str, grpc.StatusCode | None]) -> dict[str, int]:
    """Which positional argument is the reason, for every function in services/ with a ``reason``
    parameter (``status_to_proto(code, message, reason)``) and every FerryError class."""
    positions = {name: 1 for name in classes}  # FerryError(message, reason, ...)
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name != "__init__":
                names = [a.arg for a in node.args.args if a.arg not in ("self", "cls")]
                if "reason" in names:
                    positions[node.name] = names.index("reason")
    return positions


def reasons_in_code(sources: list[Path] = SOURCES) -> dict[str, set[tuple[str, grpc.StatusCode | None]]]:
    """Every reason string services/ can send, with where and under which fixed code (if any).

    Found: ``reason=...`` keywords, ``reason = "..."`` attributes, and reasons passed by position to
    FerryError classes and to functions with a ``reason`` parameter, as literals or module constants.
    """
    parsed = {path: ast.parse(path.read_text()) for path in sources}
    classes = _error_classes(list(parsed.values()))
    positions = _reason_positions(list(parsed.values()), classes)
    found: dict[str, set[tuple[str, grpc.StatusCode | None]]] = {}

    def add(values: Iterator[str], path: Path, code: grpc.StatusCode | None = None) -> None:
        for value in values:
            found.setdefault(value, set()).add((path.name, code))

    for path, tree in parsed.items():
        constants = _constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                code = classes.get(name)
                for keyword in node.keywords:
                    if keyword.arg == "reason":
                        add(_strings(keyword.value, constants), path, code)
                index = positions.get(name)
                if index is not None and len(node.args) > index:
                    add(_strings(node.args[index], constants), path, code)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                [target] = node.targets
                if isinstance(target, ast.Name) and target.id == "reason":
                    add(_strings(node.value, {}), path)
    return found


def test_the_scan_sees_reasons_of_every_kind() -> None:
    found = reasons_in_code()
    # keyword, positional to a FerryError class, positional to a helper, class attribute, constant
    assert {"MODEL_NOT_FOUND", "SHUTTING_DOWN", "INFERENCE_TIMEOUT", "INVALID_IMAGE", "QUEUE_FULL"} <= set(
        found
    )
    assert len(found) >= 50


def test_the_scan_catches_a_reason_missing_from_the_enum(tmp_path: Path) -> None:
    module = tmp_path / "handler.py"
    module.write_text(
        "from services.common.errors import NotFound, status_to_proto\n"
        "GONE = 'MODEL_GONE'\n"
        "def f(code, message):\n"
        "    status_to_proto(code, message, 'NOT_IN_THE_ENUM')\n"
        "    raise NotFound('no model', GONE)\n"
    )
    found = reasons_in_code([module, ROOT / "services" / "common" / "errors.py"])
    assert {"NOT_IN_THE_ENUM", "MODEL_GONE"} <= set(found) and not {"NOT_IN_THE_ENUM", "MODEL_GONE"} & set(
        reasons()
    )
    assert ("handler.py", grpc.StatusCode.NOT_FOUND) in found["MODEL_GONE"]


def test_every_reason_services_send_is_in_the_enum() -> None:
    unknown = {reason: sorted(p for p, _ in where) for reason, where in reasons_in_code().items()}
    unknown = {reason: where for reason, where in unknown.items() if reason not in reasons()}
    assert not unknown, (
        f"reasons not in protos/ferry/errors/v1/error_reason.proto: {unknown}; add them to the enum "
        "(with their code and a comment), then run `python -m tools.protogen` and `python -m tools.errordocs`"
    )


def test_reasons_keep_the_code_the_enum_gives_them() -> None:
    wrong = {
        (reason, path, code.name)
        for reason, where in reasons_in_code().items()
        for path, code in where
        if code is not None and reason in reasons() and not reasons()[reason].code_of_cause
        if reasons()[reason].code != code
    }
    assert not wrong, f"raised with a code other than the enum's: {sorted(wrong)}"


def test_envoys_own_replies_use_enum_reasons_with_the_gateways_http_status() -> None:
    for reply in edge.LOCAL_REPLIES:
        reason = reasons()[reply.reason]
        assert reply.http_status == errors.HTTP_STATUS[reason.code] or reason.http_status != 413
    assert reasons()[edge.REQUEST_TOO_LARGE].http_status == 413


def test_docs_error_table_is_rendered_from_the_enum() -> None:
    text = errordocs.API_DOC.read_text()
    assert errordocs.rendered_doc(text) == text, "run `python -m tools.errordocs` and commit docs/api.md"
    for reason in reasons():
        assert f"`{reason}`" in text


def test_every_reason_is_documented_by_a_comment() -> None:
    comments = errordocs.reason_comments()
    assert {name for name, text in comments.items() if text} >= set(reasons())


def test_validation_error_naming_a_field_carries_a_bad_request() -> None:
    status = InvalidArgument(
        "top_k is 5000; it must be between 1 and 100", "INVALID_TOP_K", {"field": "top_k"}
    )
    bad_request = error_details_pb2.BadRequest()
    assert [d.Unpack(bad_request) for d in status.to_status().details] == [False, True]
    [violation] = bad_request.field_violations
    assert (violation.field, violation.reason) == ("top_k", "INVALID_TOP_K")
    assert "between 1 and 100" in violation.description


@pytest.mark.parametrize("error", [NotFound("no such job", "JOB_NOT_FOUND", {"field": "name"})])
def test_other_errors_carry_no_bad_request(error: errors.FerryError) -> None:
    assert len(error.to_status().details) == 1


def test_python_client_error_exposes_code_reason_metadata_and_field_violations() -> None:
    from concurrent import futures

    from grpc_status import rpc_status

    from ferry.models.v1 import model_service_pb2
    from ferry_client import FerryClient, FerryError

    def list_models(request: model_service_pb2.ListModelsRequest, context: grpc.ServicerContext) -> None:
        error = InvalidArgument(
            "page_size is -1; it must be 0..100", "INVALID_PAGE_SIZE", {"field": "page_size"}
        )
        context.abort_with_status(rpc_status.to_status(error.to_status()))

    handler = grpc.unary_unary_rpc_method_handler(
        list_models,
        request_deserializer=model_service_pb2.ListModelsRequest.FromString,
        response_serializer=model_service_pb2.ListModelsResponse.SerializeToString,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("ferry.models.v1.ModelService", {"ListModels": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with FerryClient(f"127.0.0.1:{port}", api_key="k") as client, pytest.raises(FerryError) as caught:
            client.list_models()
    finally:
        server.stop(None)
    error = caught.value
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_SIZE")
    assert error.metadata == {"field": "page_size"}
    assert error.field_violations == {"page_size": "page_size is -1; it must be 0..100"}
    assert "INVALID_PAGE_SIZE" in str(error)
