"""The ``ferry`` command: where it sends calls by default, and user errors as one line, exit 2."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2

from ferry.jobs.v1 import job_pb2, job_service_pb2
from ferry.models.v1 import model_pb2
from ferry.predictions.v1 import prediction_pb2
from ferry.types.v1 import types_pb2
from ferry_client import bundles, local
from ferry_client.cli import _print_models, _whole_numbers, main
from ferry_client.client import FerryClient, FerryError, _priority
from ferry_client.export import write


@pytest.fixture(autouse=True)
def _no_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty state folder and none of the variables a user's shell may have set."""
    for name in ("FERRY_TARGET", "FERRY_API_KEY", "FERRY_DEV_API_KEY", "FERRY_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FERRY_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


def _running_stack(state: Path, target: str, supervisor_pid: int) -> None:
    (state / "endpoints.json").write_text(json.dumps({"grpc_target": target, "pids": {}}))
    (state / "status.json").write_text(json.dumps({"supervisor_pid": supervisor_pid}))


def test_the_default_target_is_ferry_target_then_the_running_stack_then_localhost(
    _no_stack: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert local.default_target()[0] == "localhost:8080"
    _running_stack(_no_stack, "127.0.0.1:18090", os.getpid())
    assert local.default_target() == ("127.0.0.1:18090", f"the stack running in {_no_stack}")
    monkeypatch.setenv("FERRY_TARGET", "ferry.example:443")
    assert local.default_target() == ("ferry.example:443", "FERRY_TARGET")


def test_a_stack_that_is_gone_is_not_the_target(_no_stack: Path) -> None:
    _running_stack(_no_stack, "127.0.0.1:18090", 2**22 + 12345)  # above pid_max: no such process
    assert local.default_target()[0] == "localhost:8080"


def test_help_says_where_calls_go(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Default: $FERRY_TARGET, else the stack that `ferry up` runs from $FERRY_STATE_DIR" in text
    assert "now localhost:8080 (no FERRY_TARGET, no running stack)" in text


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["predict", "nope.jpg"], "argument image: nope.jpg: no such file"),
        (["predict", "."], "argument image: .: a folder"),
        (["job", "a.jpg", "--wait"], "argument images: a.jpg: no such file"),
        (["upload", "missing.zip"], "argument file: missing.zip: no such file"),
        (["predict", "--text", "x", "--top-k", "0"], "argument --top-k: 0 is not at least 1"),
        (["predict", "--text", "x", "--top-k", "many"], "argument --top-k: 'many' is not a whole number"),
        (
            ["predict", "--text", "x", "--top-k", "99999999999999999999"],
            "argument --top-k: 99999999999999999999 is more than 2147483647",
        ),
        (
            ["predictions", "--page-size", "2147483648"],
            "argument --page-size: 2147483648 is more than 2147483647",
        ),
        (["predictions", "--min-score", "1.5"], "argument --min-score: 1.5 is not between 0 and 1"),
        (["job", "--notebook", "report", "--param", "count"], "--param 'count' is not KEY=VALUE"),
        (["models"], "no API key: pass --api-key or set FERRY_API_KEY"),
        (["job", "--wait"], "job takes inputs: image files or folders, --text, --json, --manifest"),
        (["predictions", "--since", "yesterday"], "argument --since: 'yesterday' is not an RFC 3339 time"),
        (["predictions", "--until", "2026-12-06"], "e.g. 2026-11-25T00:00:00Z"),
        (["predict", "--json", "[1]", "--model", "agree"], "argument --json: give a JSON object"),
    ],
)
def test_a_user_error_is_one_line_and_exit_code_2(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2, err
    assert err.count("\n") == 1 and says in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["predict", "empty.jpg"], "argument image: empty.jpg: an empty file (0 bytes)"),
        (["job", "cat.jpg", "empty.jpg"], "argument images: empty.jpg: an empty file (0 bytes)"),
        (["upload", "empty.zip"], "argument file: empty.zip: an empty file (0 bytes)"),
        # Stored as a JSONL manifest (the server goes by content), whose job failed at "line 1".
        (["upload", "page.zip"], "argument file: page.zip: not a zip file"),
        # An empty folder ended in a ValueError traceback.
        (["job", "photos"], "no files in photos; give image files or a folder holding some"),
    ],
)
def test_an_empty_file_is_named_before_any_call(
    argv: list[str],
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cat.jpg").write_bytes(b"\xff\xd8 not empty")
    (tmp_path / "empty.jpg").touch()
    (tmp_path / "empty.zip").touch()
    (tmp_path / "page.zip").write_text("<html>Not Found</html>")
    (tmp_path / "photos").mkdir()
    with pytest.raises(SystemExit) as done:
        main(["--target", "127.0.0.1:9", "--api-key", "k", *argv])
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and says in err, err


def test_a_file_that_cannot_be_written_is_one_line_and_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens on port 9: the error is about the file only if it is checked first.
    argv = [
        "--target",
        "127.0.0.1:9",
        "--api-key",
        "k",
        "results",
        "jobs/x",
        "-o",
        str(tmp_path / "no/such/dir.jsonl"),
    ]
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.count("\n") == 1 and "No such file or directory" in err, err


def test_no_stack_found_says_where_it_looked_and_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devstack.infra import free_port

    # Nothing listens on the default target here (a free port stands in for localhost:8080).
    monkeypatch.setattr(local, "DEFAULT_TARGET", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("FERRY_API_KEY", "fy_test")
    assert main(["models"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "hint: no Ferry stack answered" in err and "--target" in err


def test_a_named_target_that_does_not_answer_gets_no_stack_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from devstack.infra import free_port

    monkeypatch.setenv("FERRY_API_KEY", "fy_test")
    assert main(["--target", f"127.0.0.1:{free_port()}", "models"]) == 1
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "hint:" not in err


def test_models_print_as_a_table_with_why_a_model_does_not_serve(capsys: pytest.CaptureFixture[str]) -> None:
    ready = model_pb2.Model(
        name="models/efficientnet-lite0",
        state=model_pb2.MODEL_STATE_READY,
        version="1",
        input_kinds=["image"],
        device="cpu",
        graph="aoti",
    )
    unloaded = model_pb2.Model(
        name="models/minilm",
        state=model_pb2.MODEL_STATE_UNLOADED,
        version="1",
        input_kinds=["text"],
        state_message="unloaded by an admin",
    )
    _print_models([ready, unloaded], whole=False)
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["MODEL", "STATE", "VERSION", "TAKES", "DEVICE", "GRAPH"]
    assert first.split() == ["efficientnet-lite0", "READY", "1", "image", "cpu", "aoti"]
    assert second.split()[:4] == ["minilm", "UNLOADED", "1", "text"]
    assert second.endswith("unloaded by an admin")
    _print_models([ready], whole=True)
    assert json.loads(capsys.readouterr().out)["name"] == "models/efficientnet-lite0"


def test_a_json_models_whole_numbers_print_as_integers() -> None:
    assert _whole_numbers({"index": 3.0, "scores": [0.5, 2.0], "big": 1e300}) == {
        "index": 3,
        "scores": [0.5, 2],
        "big": 1e300,
    }


def test_csv_export_names_each_input_and_defuses_what_a_spreadsheet_would_run() -> None:
    hostile = prediction_pb2.Prediction(
        name="predictions/1", job="jobs/j", item_index=3, input_name='=HYPERLINK("http://x")/cat.jpg'
    )
    hostile.error.code = 3
    hostile.error.message = "@SUM(1) is not an image"
    plain = prediction_pb2.Prediction(
        name="predictions/2", job="jobs/j", item_index=4, input_name="2024/cat.jpg"
    )
    out = io.StringIO()
    assert write([hostile, plain], "csv", out) == 2
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [row["input_name"] for row in rows] == ['\'=HYPERLINK("http://x")/cat.jpg', "2024/cat.jpg"]
    assert rows[0]["error_message"] == "'@SUM(1) is not an image"
    assert [row["item_index"] for row in rows] == ["3", "4"]


def test_json_lines_keep_non_ascii_names_as_utf8_unless_the_output_cannot_encode_them(
    tmp_path: Path,
) -> None:
    record = prediction_pb2.Prediction(name="predictions/x", input_name="Café/été 🌞.jpg")
    in_memory = io.StringIO()
    write([record], "jsonl", in_memory)
    assert json.loads(in_memory.getvalue())["input_name"] == "Café/été 🌞.jpg"
    assert '"Café/été 🌞.jpg"' in in_memory.getvalue()
    with (tmp_path / "utf8.jsonl").open("w", encoding="utf-8") as utf8:
        write([record], "jsonl", utf8)
    assert "Café/été 🌞.jpg" in (tmp_path / "utf8.jsonl").read_text(encoding="utf-8")
    # A Latin-1 terminal cannot print the emoji: the line stays escaped, valid JSON, not an error.
    with (tmp_path / "latin1.jsonl").open("w", encoding="latin-1") as latin1:
        write([record], "jsonl", latin1)
    text = (tmp_path / "latin1.jsonl").read_text(encoding="latin-1")
    assert "\\u00e9" in text and json.loads(text)["input_name"] == "Café/été 🌞.jpg"


def test_a_jobs_files_are_named_in_its_zip_by_their_path_below_their_shared_folder(tmp_path: Path) -> None:
    for name in ("export/day1/IMG_1.jpg", "export/day2/IMG_1.jpg", "export/IMG_2.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    given = [tmp_path / "export/day1/IMG_1.jpg", tmp_path / "export/day2/IMG_1.jpg"]
    given += [tmp_path / "export/day1/../IMG_2.jpg", tmp_path / "export/day1/IMG_1.jpg"]  # a repeat
    names = [name for _, name in bundles.zip_names(given)]
    assert names == ["day1/IMG_1.jpg", "day2/IMG_1.jpg", "IMG_2.jpg"]
    bundles.write_zip(given, tmp_path / "job.zip")
    with zipfile.ZipFile(tmp_path / "job.zip") as archive:
        assert archive.namelist() == names
        assert archive.read("day2/IMG_1.jpg") == b"export/day2/IMG_1.jpg"


def test_a_folder_is_every_file_below_it_and_always_goes_as_an_upload(tmp_path: Path) -> None:
    for name in ("export/b/IMG_2.jpg", "export/a/IMG_1.jpg", "export/.DS_Store", "cat.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    given = [tmp_path / "export", tmp_path / "cat.jpg"]
    assert bundles.goes_as_upload(given) and not bundles.goes_as_upload([tmp_path / "cat.jpg"])
    # The server leaves .DS_Store out of the zip's items (services/common/upload_checks.py).
    names = [name for _, name in bundles.zip_names(given)]
    assert names == ["export/.DS_Store", "export/a/IMG_1.jpg", "export/b/IMG_2.jpg", "cat.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files in"):
        bundles.zip_names([tmp_path / "empty"])


def test_a_job_too_large_inline_with_a_request_id_says_to_upload_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.jpg"
    with big.open("wb") as f:
        f.truncate(bundles.INLINE_JOB_BYTES + 1)
    with pytest.raises(SystemExit) as exited:
        main(["job", str(big), "--request-id", "nightly"])
    assert exited.value.code == 2
    assert "`ferry upload photos.zip`" in capsys.readouterr().err


def test_a_reader_that_stops_early_gets_no_broken_pipe_error(tmp_path: Path) -> None:
    """`ferry predictions --format csv | head -1`: the reader closes the pipe after one line. The
    command said "ferry: error: Broken pipe:" and exited 2; now it stops quietly, as `cat` would
    (128 + SIGPIPE). A real pipe and interpreter; the command's output is made up (no server)."""
    import signal
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from ferry_client import cli\n"
        "def call(ferry, args):\n"
        "    for n in range(200_000):\n"
        "        print(f'predictions/{n},tiger cat,0.38')\n"
        "    return 0\n"
        "cli._call = call\n"
        "sys.exit(cli.main(['predictions', '--format', 'csv']))\n"
    )
    env = {**os.environ, "FERRY_API_KEY": "k", "FERRY_TARGET": "127.0.0.1:9"}
    ferry = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path
    )
    assert ferry.stdout is not None and ferry.stderr is not None
    assert ferry.stdout.readline().startswith(b"predictions/0,")
    ferry.stdout.close()  # what `head -1` does once it has its line
    stderr = ferry.stderr.read().decode()
    assert ferry.wait(timeout=60) == 128 + signal.SIGPIPE, stderr
    assert stderr == "", stderr


def test_saved_result_lines_keep_the_files_field_order_item_0_included() -> None:
    """`ferry results` wrote item 0 as {"input": …, "index": 0} (a field at its default went last),
    unlike the file's own lines and docs/jobs.md's {"index":0,"input":"inputs[0]",…}."""
    from ferry.jobs.v1 import job_service_pb2
    from ferry.predictions.v1 import prediction_pb2 as predictions

    lines = [
        job_service_pb2.GetJobResultsResponse(
            index=index, input=f"inputs[{index}]", state=predictions.PREDICTION_STATE_SUCCEEDED
        )
        for index in (0, 1)
    ]
    with FerryClient("127.0.0.1:9", "k") as ferry:
        ferry.job_results = lambda name, timeout_s=600.0: iter(lines)  # type: ignore[method-assign]
        out = io.StringIO()
        assert ferry.save_job_results("jobs/x", out) == 2
    first, second = out.getvalue().splitlines()
    assert first.startswith(
        '{"index":0,"input":"inputs[0]","state":"PREDICTION_STATE_SUCCEEDED","classes":[]'
    )
    assert second.startswith('{"index":1,"input":"inputs[1]",')


@pytest.mark.parametrize("api_key", [None, "", "  "])
def test_a_client_without_a_key_says_so_before_any_call(api_key: str) -> None:
    with pytest.raises(ValueError, match="pass the key"):
        FerryClient("127.0.0.1:9", api_key)


@pytest.mark.parametrize("priority", ["urgent", "", "PRIORITY_UNSPECIFIED"])
def test_a_client_job_of_an_unknown_priority_names_the_valid_ones(priority: str) -> None:
    with FerryClient("127.0.0.1:9", "k") as client, pytest.raises(ValueError) as refused:
        client.create_job([b"x"], priority=priority)
    assert f"priority is {priority!r}; expected one of high, normal, low" in str(refused.value)


def test_a_client_job_takes_priorities_in_any_case() -> None:
    named = [_priority(p) for p in ("high", "LOW", "PRIORITY_NORMAL")]
    assert [types_pb2.Priority.Value(name) for name in named] == [
        types_pb2.PRIORITY_HIGH,
        types_pb2.PRIORITY_LOW,
        types_pb2.PRIORITY_NORMAL,
    ]


class _FinishedJobs:
    """Stands in for FerryClient: every job it creates ends in ``state`` at the first update."""

    state = job_pb2.JOB_STATE_FAILED

    def __init__(self, *args: object) -> None:
        pass

    def __enter__(self) -> _FinishedJobs:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def create_job(self, *args: object) -> job_pb2.Job:
        return job_pb2.Job(name="jobs/0193a1b2-0000-7000-8000-000000000000", state=job_pb2.JOB_STATE_QUEUED)

    def watch_job(self, name: str) -> Iterator[job_service_pb2.WatchJobResponse]:
        error = status_pb2.Status(code=10, message="1 of 1 items failed")
        yield job_service_pb2.WatchJobResponse(job=job_pb2.Job(name=name, state=self.state, error=error))


@pytest.mark.parametrize(
    ("state", "code"),
    [(job_pb2.JOB_STATE_FAILED, 1), (job_pb2.JOB_STATE_CANCELLED, 1), (job_pb2.JOB_STATE_SUCCEEDED, 0)],
)
def test_a_waited_job_exits_0_only_when_it_succeeded(
    state: int,
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `ferry job … --wait` exited 0 for a FAILED job, so `ferry job … --wait && next` went on.
    monkeypatch.setattr(_FinishedJobs, "state", state)
    monkeypatch.setattr("ferry_client.cli.FerryClient", _FinishedJobs)
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"\xff\xd8 a photo")
    for argv in (["job", str(image), "--wait"], ["watch", "jobs/0193a1b2-0000-7000-8000-000000000000"]):
        assert main(["--target", "127.0.0.1:9", "--api-key", "k", *argv]) == code
        out, err = capsys.readouterr()
        assert json.loads(out)["state"] == job_pb2.JobState.Name(state)
        assert ("ended " + job_pb2.JobState.Name(state) in err) == bool(code), err


def test_watching_an_unknown_job_draws_no_bar_before_the_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Unknown(_FinishedJobs):
        def watch_job(self, name: str) -> Iterator[job_service_pb2.WatchJobResponse]:
            raise FerryError(grpc.StatusCode.NOT_FOUND, f"job {name} not found", reason="JOB_NOT_FOUND")
            yield  # a generator, as the client's

    monkeypatch.setattr("ferry_client.cli.FerryClient", Unknown)
    name = "jobs/0193a1b2-0000-7000-8000-000000000000"
    assert main(["--target", "127.0.0.1:9", "--api-key", "k", "watch", name]) == 1
    assert capsys.readouterr().err == f"error: NOT_FOUND: job {name} not found [JOB_NOT_FOUND]\n"
