"""The ``ferry`` command: run the local stack, classify images, run and watch batch jobs."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import zipfile
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.json_format import MessageToJson
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ferry.jobs.v1 import job_pb2
from ferry.models.v1 import model_pb2
from ferry_client import bundles, export, keys, local
from ferry_client.client import FerryClient, FerryError, payload_input, text_input
from ferry_client.progress import watch


class _Parser(argparse.ArgumentParser):
    """argparse, but a user's mistake is one line (and exit code 2), not the usage text."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _api_key(parser: argparse.ArgumentParser, explicit: str | None) -> str:
    """The key from --api-key, FERRY_API_KEY, FERRY_DEV_API_KEY or the local stack's dev key file."""
    key = explicit or os.environ.get("FERRY_API_KEY") or os.environ.get("FERRY_DEV_API_KEY")
    key = key or local.dev_api_key()
    if not key:
        parser.error("no API key: pass --api-key or set FERRY_API_KEY (`ferry up` prints the dev key)")
    return key


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: {'a folder' if path.is_dir() else 'no such file'}")
    return _not_empty(path, text)


def _upload_file(text: str) -> Path:
    """An upload: a JSONL manifest, or a file named ``.zip`` that is a zip. The server tells them
    apart by content, so a ``.zip`` that is not one (a failed download, an HTML error page) was
    stored as a manifest and its job failed later at "line 1: not JSON"."""
    path = _existing_file(text)
    if path.suffix.lower() == ".zip" and not zipfile.is_zipfile(path):
        raise argparse.ArgumentTypeError(
            f"{text}: not a zip file (no zip directory at its end: damaged or cut short?)"
        )
    return path


def _existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return _not_empty(path, text) if path.is_file() else path


def _not_empty(path: Path, text: str) -> Path:
    # An empty file (a failed download, `: > x.jpg`) came back from the server as "inputs[0].image
    # is missing or empty; send … in inputs[0].image.content (base64 in JSON)": not the file's name.
    if path.stat().st_size == 0:
        raise argparse.ArgumentTypeError(f"{text}: an empty file (0 bytes)")
    return path


def _number(
    convert: Callable[[str], Any], low: float, high: float | None = None, most: int | None = None
) -> Callable[[str], Any]:
    """An argparse type: ``convert`` (int or float) of the text, refused outside [low, high], or
    past ``most``, what the request's field can carry at all."""
    what = "a whole number" if convert is int else "a number"
    allowed = f"at least {low}" if high is None else f"between {low} and {high}"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {allowed}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{text} is more than {most}, the most a request can carry")
        return value

    return parse


def _rfc3339(text: str) -> str:
    """A time as the API takes it; anything else is a usage error naming the form (``--since
    yesterday`` ended in protobuf's ValueError traceback). Empty: no bound (argparse passes the
    default through here too)."""
    if not text:
        return text
    try:
        Timestamp().FromJsonString(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time; give a date, a time and a zone, e.g. 2026-11-25T00:00:00Z"
        ) from None
    return text


#: The largest protobuf int32 (top_k, page_size): past it the request cannot be built at all
#: (`--top-k 99999999999999999999` ended in a ValueError traceback); below it the server's own
#: limit answers, naming it.
INT32_MAX = 2**31 - 1
_at_least_one = _number(int, 1, most=INT32_MAX)
_fraction = _number(float, 0, 1)


def _bundled(args: argparse.Namespace) -> bool:
    """Whether a job's image files go as one zip upload: only image files, a folder or too large inline."""
    only_files = not (args.text or args.json or args.manifest or args.request_id)
    return bool(args.images) and only_files and bundles.goes_as_upload(args.images)


def _print(message: Message) -> None:
    print(
        MessageToJson(
            message, preserving_proto_field_name=True, indent=2, always_print_fields_with_no_presence=True
        )
    )


def _print_models(models: Sequence[model_pb2.Model], whole: bool) -> None:
    """One line per model (name, state, versions, what it takes, device, graph), or each whole as JSON;
    a model that is not ready says why on its line."""
    if whole:
        for model in models:
            _print(model)
        return
    rows = [("MODEL", "STATE", "VERSION", "TAKES", "DEVICE", "GRAPH", "")]
    for m in models:
        state = model_pb2.ModelState.Name(m.state).removeprefix("MODEL_STATE_")
        why = "" if m.state == model_pb2.MODEL_STATE_READY else m.state_message
        takes = ",".join(m.input_kinds)
        rows.append((m.name.removeprefix("models/"), state, _versions(m), takes, m.device, m.graph, why))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        print(f"{line}  {row[6]}".rstrip())


def _versions(model: model_pb2.Model) -> str:
    """The model's versions, its default marked ``*`` and those not ready with their state:
    ``1*,2(unloaded)``."""
    if not model.versions:
        return model.version
    shown = []
    for v in model.versions:
        mark = "*" if v.version == model.default_version else ""
        state = model_pb2.ModelState.Name(v.state).removeprefix("MODEL_STATE_").lower()
        shown.append(f"{v.version}{mark}" + ("" if v.state == model_pb2.MODEL_STATE_READY else f"({state})"))
    return ",".join(shown)


def _whole_numbers(value: Any) -> Any:
    """``value`` with floats that are whole numbers as ints: a JSON model's answer comes back as a
    protobuf Struct, whose numbers are all doubles, and a class index should print as 3, not 3.0."""
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


#: The model an image (or a text) goes to when no --model is given.
IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "minilm"


COMMAND_GROUP = "ferry.commands"
"""Entry points that add sub-commands: the server's install adds the local stack's (``ferry up``)."""

SERVER_COMMANDS = ("up", "status", "metrics", "trace", "restart", "stop", "start", "migrate")
"""The server install's commands, named only to tell a user of the client alone where they are."""


#: Said when the default target does not answer: no stack was found, so say where the CLI looked.
_NO_STACK_HINT = (
    f"hint: no Ferry stack answered at {local.DEFAULT_TARGET}, and none runs from $FERRY_STATE_DIR "
    "(.ferry in the checkout). Start one with `make up`, or name one with --target HOST:PORT "
    "or $FERRY_TARGET."
)


def _parser() -> tuple[argparse.ArgumentParser, bool]:
    """The parser, and whether an installed package added commands to it."""
    target, origin = local.default_target()
    parser = _Parser(
        prog="ferry",
        description=__doc__,
        epilog="The local stack's commands (`ferry up`, status, metrics, trace, restart, stop, start, "
        "migrate) come with Ferry's server install: `make install` in a checkout.",
    )
    parser.add_argument(
        "--target",
        default=target,
        help="host:port of Envoy or gateway. Default: $FERRY_TARGET, else the stack that `ferry up` "
        f"runs from $FERRY_STATE_DIR (.ferry), else {local.DEFAULT_TARGET}; now {target} ({origin})",
    )
    parser.add_argument("--api-key", help="API key (default: $FERRY_API_KEY or the local dev key)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    extended = False
    for entry in entry_points(group=COMMAND_GROUP):
        entry.load()(sub)
        extended = True
    models = sub.add_parser(
        "models", help="list the models (with their states), or load or unload one (admin)"
    )
    models.add_argument("action", nargs="?", choices=("list", "load", "unload", "default"), default="list")
    models.add_argument(
        "model",
        nargs="?",
        help="the model to load or unload, NAME or NAME:VERSION (e.g. mobilenet-v2:2; unload without a "
        "version unloads every version); for default, NAME",
    )
    models.add_argument(
        "version", nargs="?", help="for default: the loaded version that answers calls naming none"
    )
    models.add_argument("--json", action="store_true", help="print each model whole, as JSON")
    predict = sub.add_parser(
        "predict", help="predict one input: an image file, a --text (minilm) or a --json object"
    )
    predict.add_argument("image", type=_existing_file, nargs="?")
    _input_arguments(predict)
    predict.add_argument("--model", default="", help="default: efficientnet-lite0, minilm for --text")
    predict.add_argument("--top-k", type=_at_least_one, default=5)
    predict.add_argument("--request-id", default="", help="idempotency key: a retry returns the same answer")
    predict.add_argument(
        "--model-version", default="", help="a version of the model (default: its default version)"
    )
    get = sub.add_parser("get", help="read a prediction or job by name (predictions/ID, jobs/ID)")
    get.add_argument("name")
    listing = sub.add_parser("predictions", help="list or export predictions, newest first, with filters")
    listing.add_argument("--job", default="", help="only this job's predictions (jobs/ID)")
    listing.add_argument("--model", default="", help="only this model's predictions")
    listing.add_argument("--label", default="", help="only predictions whose top class has this label")
    listing.add_argument(
        "--min-score", type=_fraction, default=0.0, help="only top classes scored at least this (0-1)"
    )
    listing.add_argument(
        "--since",
        type=_rfc3339,
        default="",
        help="made at or after this time (RFC 3339, e.g. 2026-11-25T00:00:00Z)",
    )
    listing.add_argument("--until", type=_rfc3339, default="", help="made before this time (RFC 3339)")
    listing.add_argument("--source", choices=sorted(export.SOURCES), help="which API made them")
    listing.add_argument("--state", choices=sorted(export.STATES), help="succeeded or failed")
    listing.add_argument(
        "--format",
        choices=("json", "jsonl", "csv"),
        default="json",
        help="json: one page as JSON; jsonl / csv: every matching prediction, one per line",
    )
    listing.add_argument("--page-size", type=_at_least_one, default=20, help="predictions per page (json)")
    stats = sub.add_parser(
        "stats", help="a model's request and error counts, latency percentiles, top labels"
    )
    stats.add_argument("model", nargs="?", default="efficientnet-lite0")
    stats.add_argument("--window", default="1h", help="how far back: 15m, 1h, 24h, 7d, ...")
    upload = sub.add_parser("upload", help="upload a JSONL manifest or a zip of images for a job to name")
    upload.add_argument("file", type=_upload_file)
    job = sub.add_parser(
        "job",
        help="submit a batch job of image files (over 24 MiB in all: uploaded as one zip), --text or "
        "--json items (or an upload: --manifest)",
    )
    job.add_argument("images", type=_existing_path, nargs="*", help="image files or folders of them")
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
    job.add_argument("--top-k", type=_at_least_one, default=5)
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
    return parser, extended


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
    if args.command == "job":
        if not (args.images or args.text or args.json or args.manifest or args.notebook):
            # Was the server's answer to an empty job, in its JSON terms ("send inputs: [{image: …}]").
            parser.error(
                "job takes inputs: image files or folders, --text, --json, --manifest uploads/ID "
                "(from `ferry upload`) or --notebook NAME"
            )
        args.parameters = _params(parser, args.param)
        if args.images and not bundles.files_of(args.images):  # empty folders: was a traceback
            folders = ", ".join(map(str, args.images))
            parser.error(f"no files in {folders}; give image files or a folder holding some")
        if (
            args.images
            and (args.request_id or args.text or args.json)
            and bundles.goes_as_upload(args.images)
        ):
            parser.error(
                f"a folder, or image files over {bundles.INLINE_JOB_BYTES // 2**20} MiB in all, go as one "
                "zip upload, and with --request-id, --text or --json they cannot: zip them, `ferry upload "
                "photos.zip`, then `ferry job --manifest uploads/ID` (a retry then names the same upload)"
            )


def _server_command(argv: list[str]) -> str:
    """The sub-command of ``argv`` when it is one of the server install's; empty otherwise."""
    words = iter(argv)
    for word in words:
        if word in ("--target", "--api-key"):
            next(words, None)
        elif not word.startswith("-"):
            return word if word in SERVER_COMMANDS else ""
    return ""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ferry`` command."""
    parser, extended = _parser()
    argv = sys.argv[1:] if argv is None else argv
    command = "" if extended else _server_command(argv)
    if command:
        print(
            f"`ferry {command}` needs Ferry's full install (the server and the local stack); this is the "
            "client-only install. From a checkout of Ferry: `make install` (or `make up`).",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    _check_inputs(parser, args)
    if hasattr(args, "run"):  # a command an installed package added (the local stack's)
        return int(args.run(args))
    try:
        with FerryClient(args.target, _api_key(parser, args.api_key)) as ferry:
            return _call(ferry, args)
    except FerryError as err:
        print(f"error: {err}", file=sys.stderr)
        if err.code == grpc.StatusCode.UNAVAILABLE and args.target == local.DEFAULT_TARGET:
            print(_NO_STACK_HINT, file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader stopped (`ferry predictions --format csv | head`): what it read is all it
        # wanted, so no "error: Broken pipe"; the exit status is a SIGPIPE death's, as `cat`'s is.
        # Output still buffered would fail again at exit: it goes nowhere instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as err:  # a file to read or write: the user's to fix
        parser.exit(2, f"ferry: error: {err.strerror or err}: {err.filename or ''}\n")
    except KeyboardInterrupt:
        return 130


def _printed(message: Message) -> int:
    _print(message)
    return 0


def _waited(ferry: FerryClient, name: str) -> int:
    """Shows a job's progress until it ends and prints it; exit status 0 only if it succeeded, so
    that `ferry job … --wait && next-step` stops at a failed or cancelled job (it went on)."""
    job = watch(ferry, name)
    _print(job)
    if job.state == job_pb2.JOB_STATE_SUCCEEDED:
        return 0
    why = f": {job.error.message}" if job.error.message else ""
    print(f"ferry: {name} ended {job_pb2.JobState.Name(job.state)}{why}", file=sys.stderr)
    return 1


def _call(ferry: FerryClient, args: argparse.Namespace) -> int:
    """Runs one of the client's own commands; a FerryError goes up to ``main``."""
    if args.command == "models" and args.action != "list":
        if not args.model:
            sys.exit(f"ferry models {args.action} needs a model name, e.g. mobilenet-v2")
        name, _, version = args.model.partition(":")
        if args.action == "default":
            version = args.version or version
            if not version:
                sys.exit("ferry models default needs a version, e.g. ferry models default mobilenet-v2 2")
            _print_models([ferry.set_default_version(name, version)], args.json)
        else:
            change = ferry.load_model if args.action == "load" else ferry.unload_model
            _print_models([change(name, version)], args.json)
    elif args.command == "models":
        _print_models(ferry.list_models(), args.json)
    elif args.command == "predict" and args.text:
        [text] = args.text
        text_model = args.model or TEXT_MODEL
        _print(ferry.predict_text(text, text_model, args.label, args.top_k, args.request_id))
    elif args.command == "predict" and args.json:
        [payload] = args.json
        print(json.dumps(_whole_numbers(ferry.predict_json(payload, args.model, args.request_id)), indent=2))
    elif args.command == "predict":
        image_model = args.model or IMAGE_MODEL
        _print(ferry.predict(args.image, image_model, args.top_k, args.request_id, args.model_version))
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
        created = ferry.create_notebook_job(args.notebook, args.parameters, args.request_id)
        return _waited(ferry, created.name) if args.wait else _printed(created)
    elif args.command == "job" and _bundled(args):
        created, upload = ferry.create_job_of_files(
            args.images, args.model or IMAGE_MODEL, args.top_k, args.priority
        )
        skipped = f", {upload.skipped_entries} system files left out" if upload.skipped_entries else ""
        print(
            f"uploaded {upload.entries} files as one zip, {upload.name} "
            f"({upload.size_bytes} bytes{skipped}); the job names it",
            file=sys.stderr,
        )
        return _waited(ferry, created.name) if args.wait else _printed(created)
    elif args.command == "job":
        items = [*args.images, *(text_input(t, args.label) for t in args.text)]
        items += [payload_input(p) for p in args.json]
        job_model = args.model or (TEXT_MODEL if args.text else IMAGE_MODEL)
        created = ferry.create_job(
            items, job_model, args.top_k, args.request_id, args.priority, args.manifest
        )
        return _waited(ferry, created.name) if args.wait else _printed(created)
    elif args.command == "watch":
        return _waited(ferry, args.name)
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
    return 0


def _params(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, Any]:
    """``--param key=value`` pairs as notebook parameters: a value that parses as JSON is that
    (``count=3`` is a number), any other is text (``text=hello``)."""
    parameters: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--param {pair!r} is not KEY=VALUE")
        try:
            parameters[key] = json.loads(value)
        except ValueError:
            parameters[key] = value
    return parameters


if __name__ == "__main__":
    sys.exit(main())
