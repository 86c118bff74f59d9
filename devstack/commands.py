"""The local stack's commands (``ferry up``, ``status``, ``metrics``, ``trace``, ``restart``,
``stop``, ``start``, ``migrate``), added to the client's ``ferry`` command by the server's install.

``pyproject.toml`` registers :func:`register` in the ``ferry.commands`` entry-point group; the
client (``clients/python``) speaks only the wire contract and adds whatever that group holds, so
the client alone has no server code and a checkout's install has one ``ferry`` with every command.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devstack.settings import StackSettings

SERVICES = "postgres, nats, store, inference, jobs, gateway or envoy"


def _state_dir() -> Path:
    return StackSettings().state_dir.resolve()


def _up(args: argparse.Namespace) -> int:
    from devstack.stack import run

    return run(StackSettings(trace=True) if args.trace else StackSettings())


def _status(_: argparse.Namespace) -> int:
    from devstack.status import show

    return show(_state_dir())


def _metrics(_: argparse.Namespace) -> int:
    from devstack import figures

    return figures.show(_state_dir())


def _trace(args: argparse.Namespace) -> int:
    from devstack import traces

    return traces.show(_state_dir(), args.trace_id, args.last)


def _control(args: argparse.Namespace) -> int:
    from devstack.control import act

    return act(_state_dir(), args.command, args.names)


def _migrate(_: argparse.Namespace) -> int:
    from services.store.__main__ import migrate_only

    return asyncio.run(migrate_only())


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Adds the local stack's sub-commands; each sets ``run``, which the client's ``main`` calls."""

    def add(name: str, help_: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_)
        parser.set_defaults(run=run)
        return parser

    up = add("up", "install nothing, start the whole local stack in the foreground", _up)
    up.add_argument(
        "--trace",
        action="store_true",
        help="keep every request's spans in the state folder for `ferry trace` (a local OTLP receiver)",
    )
    add("status", "show the local stack's processes (from a running `ferry up`)", _status)
    add("metrics", "the local stack's key figures, from each service's /metrics", _metrics)
    tracing = add(
        "trace", "draw a trace's spans as a waterfall (`ferry up --trace`); no ID: list recent ones", _trace
    )
    tracing.add_argument("trace_id", nargs="?", default="", help="32 hex digits (answers carry trace_id)")
    tracing.add_argument("--last", type=int, default=10, help="how many recent traces to list")
    for action, what in (
        ("restart", "replace processes of the local stack one at a time (gRPC services: no downtime)"),
        ("stop", "stop processes of the local stack and keep them stopped (an outage, or maintenance)"),
        ("start", "start processes that `ferry stop` stopped"),
    ):
        add(action, what, _control).add_argument("names", nargs="+", metavar="name", help=SERVICES)
    add("migrate", "apply store's database migrations to FERRY_STORE_DATABASE_URL and exit", _migrate)
