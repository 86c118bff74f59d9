"""The ``ferry`` command: run the local stack, classify images, run and watch batch jobs."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message

from ferry_client import export, keys
from ferry_client.client import FerryClient, FerryError, payload_input, text_input
from ferry_client.progress import watch


def _default_target() -> str:
    return os.environ.get("FERRY_TARGET", f"127.0.0.1:{os.environ.get('FERRY_HTTP_PORT', '8080')}")


def _state_dir() -> Path:
    """The local stack's state folder (``FERRY_STATE_DIR``, as ``ferry up`` reads it)."""
    return Path(os.environ.get("FERRY_STATE_DIR", ".ferry")).resolve()


def _api_key(explicit: str | None) -> str:
    """The key from --api-key, FERRY_API_KEY, or the local stack's dev key file, in that order."""
    if explicit:
        return explicit
    if os.environ.get("FERRY_API_KEY"):
        return os.environ["FERRY_API_KEY"]
    if os.environ.get("FERRY_DEV_API_KEY"):
        return os.environ["FERRY_DEV_API_KEY"]
    key_file = _state_dir() / "dev-api-key"
    if key_file.exists():
        return key_file.read_text().strip()
    sys.exit("no API key: pass --api-key or set FERRY_API_KEY (`ferry up` prints the dev key)")


def _print(message: Message) -> None:
    print(
        MessageToJson(
            message, preserving_proto_field_name=True, indent=2, always_print_fields_with_no_presence=True
        )
    )


#: The model an image (or a text) goes to when no --model is given.
IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "minilm"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry", description=__doc__)
    parser.add_argument("--target", default=_default_target(), help="host:port of Envoy or gateway")
    parser.add_argument("--api-key", help="API key (default: $FERRY_API_KEY or the local dev key)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="install nothing, start the whole local stack in the foreground")
    up.add_argument(
        "--trace",
        action="store_true",
        help="keep every request's spans in the state folder for `ferry trace` (a local OTLP receiver)",
    )
    sub.add_parser("status", help="show the local stack's processes (from a running `ferry up`)")
    sub.add_parser("metrics", help="the local stack's key figures, from each service's /metrics")
    tracing = sub.add_parser(
        "trace", help="draw a trace's spans as a waterfall (`ferry up --trace`); no ID: list recent ones"
    )
    tracing.add_argument("trace_id", nargs="?", default="", help="32 hex digits (answers carry trace_id)")
    tracing.add_argument("--last", type=int, default=10, help="how many recent traces to list")
    for action, what in (
        ("restart", "replace processes of the local stack one at a time (gRPC services: no downtime)"),
        ("stop", "stop processes of the local stack and keep them stopped (an outage, or maintenance)"),
        ("start", "start processes that `ferry stop` stopped"),
    ):
        control = sub.add_parser(action, help=what)
        control.add_argument(
            "names",
            nargs="+",
            metavar="name",
            help="postgres, nats, store, inference, jobs, gateway or envoy",
        )
    sub.add_parser("models", help="list the served models")
    predict = sub.add_parser(
        "predict", help="predict one input: an image file, a --text (minilm) or a --json object"
    )
    predict.add_argument("image", type=Path, nargs="?")
    _input_arguments(predict)
    predict.add_argument("--model", default="", help="default: efficientnet-lite0, minilm for --text")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--request-id", default="", help="idempotency key: a retry returns the same answer")
    get = sub.add_parser("get", help="read a prediction or job by name (predictions/ID, jobs/ID)")
    get.add_argument("name")
    listing = sub.add_parser("predictions", help="list or export predictions, newest first, with filters")
    listing.add_argument("--job", default="", help="only this job's predictions (jobs/ID)")
    listing.add_argument("--model", default="", help="only this model's predictions")
    listing.add_argument("--label", default="", help="only predictions whose top class has this label")
    listing.add_argument(
        "--min-score", type=float, default=0.0, help="only top classes scored at least this (0-1)"
    )
    listing.add_argument(
        "--since", default="", help="made at or after this time (RFC 3339, e.g. 2026-11-25T00:00:00Z)"
    )
    listing.add_argument("--until", default="", help="made before this time (RFC 3339)")
    listing.add_argument("--source", choices=sorted(export.SOURCES), help="which API made them")
    listing.add_argument("--state", choices=sorted(export.STATES), help="succeeded or failed")
    listing.add_argument(
        "--format",
        choices=("json", "jsonl", "csv"),
        default="json",
        help="json: one page as JSON; jsonl / csv: every matching prediction, one per line",
    )
    listing.add_argument("--page-size", type=int, default=20, help="predictions per page (json)")
    stats = sub.add_parser(
        "stats", help="a model's request and error counts, latency percentiles, top labels"
    )
    stats.add_argument("model", nargs="?", default="efficientnet-lite0")
    stats.add_argument("--window", default="1h", help="how far back: 15m, 1h, 24h, 7d, ...")
    sub.add_parser("migrate", help="apply store's database migrations to FERRY_STORE_DATABASE_URL and exit")
    upload = sub.add_parser("upload", help="upload a JSONL manifest or a zip of images for a job to name")
    upload.add_argument("file", type=Path)
    job = sub.add_parser(
        "job", help="submit a batch job of image files, --text or --json items (or an upload: --manifest)"
    )
    job.add_argument("images", type=Path, nargs="*")
    _input_arguments(job, many=True)
    job.add_argument(
        "--manifest", default="", help="uploads/ID (from `ferry upload`): its entries are the items"
    )
    job.add_argument("--model", default="", help="default: efficientnet-lite0, minilm for --text")
    job.add_argument(
        "--notebook", default="", help="run this registered notebook (papermill) instead of a model"
    )
    job.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a notebook parameter (JSON value or text)",
    )
    job.add_argument("--top-k", type=int, default=5)
    job.add_argument("--request-id", default="", help="idempotency key: a retry returns the same job")
    job.add_argument("--wait", action="store_true", help="wait until the job finishes")
    job.add_argument(
        "--priority", choices=("high", "normal", "low"), default="normal", help="runs before lower ones"
    )
    cancel = sub.add_parser("cancel", help="cancel a job (jobs/ID)")
    cancel.add_argument("name")
    watching = sub.add_parser("watch", help="follow a job with a progress bar until it finishes (jobs/ID)")
    watching.add_argument("name")
    results = sub.add_parser("results", help="save a finished job's result file, JSONL (jobs/ID)")
    results.add_argument("name")
    results.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    notebook = sub.add_parser("notebook", help="save a finished notebook job's executed notebook (jobs/ID)")
    notebook.add_argument("name")
    notebook.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    retry = sub.add_parser("retry", help="run a finished job's failed items again (jobs/ID)")
    retry.add_argument("name")
    keys.add_parser(sub)
    return parser


LOCAL_COMMANDS = ("up", "status", "metrics", "trace", "restart", "stop", "start", "migrate")
"""Commands that run or read the local stack: they need the server's code (devstack, services)."""


def _full_install_missing(command: str) -> bool:
    """Says so and returns True when this is the lean install (``pip install ./clients/python``)."""
    if all(importlib.util.find_spec(m) is not None for m in ("devstack", "services", "prometheus_client")):
        return False
    print(
        f"`ferry {command}` needs Ferry's full install (the server and the local stack); this is the "
        "client-only install. From a checkout of Ferry: `make up`, or `pip install -e '.[stack]'`.",
        file=sys.stderr,
    )
    return True


def _local(args: argparse.Namespace) -> int:
    """Runs one of LOCAL_COMMANDS; devstack is imported here: the client itself needs none of it."""
    if args.command == "up":
        from devstack.settings import StackSettings
        from devstack.stack import run

        return run(StackSettings(trace=True) if args.trace else StackSettings())
    if args.command == "status":
        from devstack.status import show

        return show(_state_dir())
    if args.command == "metrics":
        from devstack import figures

        return figures.show(_state_dir())
    if args.command == "trace":
        from devstack import traces

        return traces.show(_state_dir(), args.trace_id, args.last)
    if args.command == "migrate":
        import asyncio

        from services.store.__main__ import migrate_only

        return asyncio.run(migrate_only())
    from devstack.control import act

    return act(_state_dir(), args.command, args.names)


def _input_arguments(parser: argparse.ArgumentParser, many: bool = False) -> None:
    """``--text``, ``--label`` and ``--json``: the inputs that are not image files."""
    each = " (repeat for more items)" if many else ""
    parser.add_argument("--text", action="append", default=[], help=f"a text to embed{each}")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        help="with --text: a candidate label; the text's labels are ranked zero-shot (repeat)",
    )
    parser.add_argument(
        "--json",
        action="append",
        default=[],
        type=_json_object,
        metavar="OBJECT",
        help=f"a JSON object for a JSON model, e.g. --model agree{each}",
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("give a JSON object, {...}")
    return value


def _check_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One kind of input per predict; a job's items need an image, a text, a JSON object or a manifest."""
    if args.command == "predict":
        given = [bool(args.image), bool(args.text), bool(args.json)]
        if sum(given) != 1 or len(args.text) > 1 or len(args.json) > 1:
            parser.error("predict takes one input: an image file, one --text or one --json")
        if args.json and not args.model:
            parser.error("--json needs --model (a JSON model, e.g. agree)")
    if args.command in ("predict", "job") and args.label and not args.text:
        parser.error("--label ranks the labels of a --text; give one")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ferry`` command."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_inputs(parser, args)
    if args.command in LOCAL_COMMANDS:
        return 2 if _full_install_missing(args.command) else _local(args)
    with FerryClient(args.target, _api_key(args.api_key)) as ferry:
        try:
            if args.command == "models":
                for model in ferry.list_models():
                    _print(model)
            elif args.command == "predict" and args.text:
                [text] = args.text
                text_model = args.model or TEXT_MODEL
                _print(ferry.predict_text(text, text_model, args.label, args.top_k, args.request_id))
            elif args.command == "predict" and args.json:
                [payload] = args.json
                print(json.dumps(ferry.predict_json(payload, args.model, args.request_id), indent=2))
            elif args.command == "predict":
                _print(ferry.predict(args.image, args.model or IMAGE_MODEL, args.top_k, args.request_id))
            elif args.command == "get":
                is_job = args.name.startswith("jobs/")
                _print(ferry.get_job(args.name) if is_job else ferry.get_prediction(args.name))
            elif args.command == "predictions":
                filters = export.filters(args)
                if args.format == "json":
                    _print(ferry.list_predictions(page_size=args.page_size, job=args.job, **filters))
                else:
                    records = ferry.iter_predictions(job=args.job, **filters)
                    export.write(records, args.format, sys.stdout)
            elif args.command == "stats":
                _print(ferry.model_stats(args.model, args.window))
            elif args.command == "upload":
                _print(ferry.upload(args.file))
            elif args.command == "job" and args.notebook:
                created = ferry.create_notebook_job(args.notebook, _params(args.param), args.request_id)
                _print(watch(ferry, created.name) if args.wait else created)
            elif args.command == "job":
                items = [*args.images, *(text_input(t, args.label) for t in args.text)]
                items += [payload_input(p) for p in args.json]
                job_model = args.model or (TEXT_MODEL if args.text else IMAGE_MODEL)
                created = ferry.create_job(
                    items, job_model, args.top_k, args.request_id, args.priority, args.manifest
                )
                _print(watch(ferry, created.name) if args.wait else created)
            elif args.command == "watch":
                _print(watch(ferry, args.name))
            elif args.command == "cancel":
                _print(ferry.cancel_job(args.name))
            elif args.command == "results":
                if args.output is None:
                    ferry.save_job_results(args.name, sys.stdout)
                else:
                    with args.output.open("w", encoding="utf-8") as out:
                        count = ferry.save_job_results(args.name, out)
                    print(f"wrote {count} results of {args.name} to {args.output}", file=sys.stderr)
            elif args.command == "retry":
                _print(ferry.retry_job(args.name))
            elif args.command == "notebook":
                executed = ferry.job_notebook(args.name)
                if args.output is None:
                    sys.stdout.write(executed.decode())
                else:
                    args.output.write_bytes(executed)
                    print(f"wrote the executed notebook of {args.name} to {args.output}", file=sys.stderr)
            elif args.command == "keys":
                return keys.run(ferry, args, _print)
        except FerryError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


def _params(pairs: list[str]) -> dict[str, Any]:
    """``--param key=value`` pairs as notebook parameters: a value that parses as JSON is that
    (``count=3`` is a number), any other is text (``text=hello``)."""
    parameters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --param {pair!r} is not KEY=VALUE")
        try:
            parameters[key] = json.loads(value)
        except ValueError:
            parameters[key] = value
    return parameters


if __name__ == "__main__":
    sys.exit(main())
