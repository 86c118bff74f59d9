"""The names the docs give (streams, subjects, durable consumers, buckets, tables, columns, reasons,
settings) are the code's: each is derived here from the code, so a stream, consumer, bucket, table
or column someone adds fails this test until docs/architecture.md or docs/store.md names it, and a
renamed one fails it until the docs follow.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from pydantic_settings import BaseSettings

from services.common import messaging
from services.gateway.settings import GatewaySettings
from services.inference.settings import InferenceSettings
from services.jobs.settings import JobsSettings
from services.store.migrate import migrate
from services.store.settings import StoreSettings
from tests.store.conftest import fresh_database

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs/architecture.md"
STORE = ROOT / "docs/store.md"
API = ROOT / "docs/api.md"
SETTINGS: tuple[type[BaseSettings], ...] = (GatewaySettings, InferenceSettings, JobsSettings, StoreSettings)


def _section(path: Path, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## ``."""
    text = path.read_text()
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def _backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text))


def streams() -> dict[str, list[str]]:
    """Stream name -> its subjects, as services.common.messaging creates them."""
    return {str(s.name): list(s.subjects or []) for s in messaging.STREAMS}


def consumers() -> set[str]:
    """Every durable consumer's default name, from the settings classes that name one."""
    names: set[str] = set()
    for settings in (JobsSettings(), StoreSettings(database_url="postgresql://x/y")):
        for field, value in settings.model_dump().items():
            if "consumer" in field and isinstance(value, str):
                names.add(value)
    runner = JobsSettings()
    names.discard(runner.consumer_name)  # split into one consumer per priority lane
    names |= {consumer for _, consumer, _ in runner.lanes()}
    return names


def buckets() -> set[str]:
    """Every JetStream KV / Object Store bucket: the constants named ``*BUCKET`` in services/."""
    found = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("BUCKET"):
                        found.add(str(node.value.value))
    return found


def test_the_derivations_see_what_they_must() -> None:
    assert {"FERRY_WORK", "FERRY_EVENTS", "FERRY_DEAD"} <= set(streams())
    assert {"jobs-runner-high", "jobs-notebooks", "store-ingest"} <= consumers()
    assert {"ferry_cancelled_jobs", "ferry_uploads", "ferry_job_results"} <= buckets()


def test_architecture_names_every_stream_subject_consumer_and_bucket() -> None:
    section = _section(ARCHITECTURE, "Streams and subjects")
    named = _backticked(section)
    missing = [f"stream {s}" for s in streams() if s not in named]
    missing += [
        f"subject {subject} of {stream}"
        for stream, subjects in streams().items()
        for subject in subjects
        if not any(n.startswith(subject.removesuffix(">").removesuffix(".")) for n in named)
    ]
    missing += [f"durable consumer {c}" for c in sorted(consumers()) if c not in named]
    missing += [f"bucket {b}" for b in sorted(buckets()) if f"KV {b}" not in named and b not in named]
    assert not missing, (
        f"docs/architecture.md, 'Streams and subjects', does not name what the code has: {missing}"
    )


def test_architecture_names_nothing_the_code_lacks() -> None:
    named = _backticked(_section(ARCHITECTURE, "Streams and subjects"))
    stale = [n for n in named if re.fullmatch(r"FERRY_[A-Z]+", n) and n not in streams()]
    stale += [n for n in named if re.fullmatch(r"[a-z]+(-[a-z]+)+", n) and n not in consumers()]
    stale += [
        n for n in named if re.fullmatch(r"(KV )?ferry_[a-z_]+", n) and n.removeprefix("KV ") not in buckets()
    ]
    assert not stale, (
        f"docs/architecture.md names streams, consumers or buckets the code does not have: {stale}"
    )


async def _schema(postgres_uri: str) -> dict[str, list[str]]:
    """Table -> columns, from a database that the migrations made."""
    async with fresh_database(postgres_uri) as url:
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
            rows = await connection.fetch(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
            )
        finally:
            await connection.close()
    schema: dict[str, list[str]] = {}
    for row in rows:
        schema.setdefault(row["table_name"], []).append(row["column_name"])
    return schema


def _schema_rows() -> dict[str, str]:
    """Table -> its row in docs/store.md's schema table."""
    rows = {}
    for line in _section(STORE, "Schema").splitlines():
        match = re.match(r"\| `([a-z_]+)` \|", line)
        if match:
            rows[match[1]] = line
    return rows


async def test_store_doc_names_every_table_and_column(postgres_uri: str) -> None:
    schema = await _schema(postgres_uri)
    rows = _schema_rows()
    missing = [f"table {t}" for t in schema if t not in rows]
    missing += [
        f"{table}.{column}"
        for table, columns in schema.items()
        for column in columns
        if table in rows and f"`{column}`" not in rows[table]
    ]
    stale = [f"table {t}" for t in rows if t not in schema]
    assert not missing, f"docs/store.md's Schema table lacks (name each in backticks): {missing}"
    assert not stale, f"docs/store.md's Schema table names tables the migrations do not make: {stale}"


def _enum_values() -> set[str]:
    """Every value name of every enum in the generated stubs (ErrorReason's included)."""
    names: set[str] = set()
    for path in (ROOT / "gen/python/ferry").rglob("*_pb2.py"):
        module = importlib.import_module(
            ".".join(path.relative_to(ROOT / "gen/python").with_suffix("").parts)
        )
        for enum in _all_enums(module.DESCRIPTOR):
            names |= {v.name for v in enum.values}
    return names


def _all_enums(file: Any) -> list[Any]:
    enums = list(file.enum_types_by_name.values())
    todo = list(file.message_types_by_name.values())
    while todo:
        message = todo.pop()
        enums += message.enum_types
        todo += message.nested_types
    return enums


def _environment_names() -> set[str]:
    """Every environment variable a service's settings class reads."""
    names: set[str] = set()
    for settings in SETTINGS:
        prefix = str(settings.model_config.get("env_prefix", "")).upper()
        for field, info in settings.model_fields.items():
            names.add(prefix + field.upper())
            alias = info.validation_alias
            choices = getattr(alias, "choices", [alias] if isinstance(alias, str) else [])
            names |= {str(c).upper() for c in choices}
    return names


def _code_constants() -> set[str]:
    """Every UPPER_SNAKE string literal of services/ and devstack/ (reasons, OIP names, ...)."""
    found: set[str] = set()
    for folder in ("services", "devstack"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    found |= set(
                        re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b|\b[A-Z][A-Z0-9]+\b", node.value)
                    )
    return found


def test_api_doc_names_only_reasons_codes_and_settings_the_code_has() -> None:
    known = _enum_values() | {c.name for c in grpc.StatusCode} | set(streams()) | _environment_names()
    known |= _code_constants()
    named = {n for n in _backticked(API.read_text()) if re.fullmatch(r"[A-Z][A-Z0-9_]*[A-Z0-9]", n)}
    unknown = sorted(named - known)
    assert not unknown, (
        f"docs/api.md names reasons, codes or settings that no enum, settings class or service has: {unknown}"
    )
