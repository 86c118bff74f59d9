"""Inputs by reference on the whole local stack: uploads (REST through Envoy, the CLI over gRPC)
and jobs whose items a manifest or a zip names, run by real inference and recorded in Postgres."""

from __future__ import annotations

import io
import json
import os
import secrets
import subprocess
import time
import unicodedata
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from devstack.stack import UPLOAD_NICENESS
from ferry_client import bundles
from services.common import input_names, limits
from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest, b64
from tests.e2e.stack import FERRY
from tests.e2e.test_job_features import results_over_rest
from tests.e2e.test_jobs import FINISHED, job_rows, wait_finished
from tests.e2e.test_keys import ferry_cli, ferry_cli_text

pytestmark = pytest.mark.e2e

#: The issue's acceptance size: a 2,000-item job submitted by one small request.
MANIFEST_ITEMS = 2000


def upload_over_rest(
    stack: dict[str, Any], body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """POST /v1/uploads with the raw bytes, as ``curl --data-binary @file`` sends them."""
    request = urllib.request.Request(
        stack["http_url"] + "/v1/uploads",
        data=body,
        method="POST",
        headers={"content-type": content_type, "authorization": f"Bearer {API_KEY}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def ferry(stack: dict[str, Any], *args: str) -> dict[str, Any]:
    """Runs the ``ferry`` CLI against the stack's gRPC port; returns its printed JSON object."""
    answer = ferry_cli(stack, *args)
    assert isinstance(answer, dict), answer
    return answer


@pytest.fixture(scope="module")
def photos(cat_jpeg: bytes, coffee_jpeg: bytes) -> dict[str, bytes]:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="JPEG", quality=92)
    return {"cat.jpg": cat_jpeg, "coffee.jpg": coffee_jpeg, "astronaut.jpg": buffer.getvalue()}


@pytest.fixture(scope="module")
def photo_zip(stack: dict[str, Any], photos: dict[str, bytes]) -> dict[str, Any]:
    """A zip of the photos, uploaded as raw bytes through Envoy's REST (client-streamed to gateway)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in photos.items():
            archive.writestr(f"photos/{name}", content)
    status, body = upload_over_rest(stack, buffer.getvalue(), "application/zip")
    assert status == 200, body
    upload: dict[str, Any] = body["upload"]
    assert upload["name"].startswith("uploads/")
    assert (upload["kind"], upload["entries"], int(upload["size_bytes"])) == (
        "zip",
        3,
        len(buffer.getvalue()),
    )
    return upload


def create_by_manifest(rest: Rest, manifest: str) -> tuple[int, dict[str, Any]]:
    return rest.post("/v1/jobs", {"model": "efficientnet-lite0", "manifest": manifest})


def test_a_2000_item_job_submitted_by_manifest_records_every_item_once(
    rest: Rest, stack: dict[str, Any], photo_zip: dict[str, Any], photos: dict[str, bytes], tmp_path: Path
) -> None:
    names = sorted(photos)
    lines = [
        json.dumps({"image": f"{photo_zip['name']}/photos/{names[i % 3]}"}) for i in range(MANIFEST_ITEMS)
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    upload = ferry(stack, "upload", str(manifest))  # streamed over gRPC by the CLI
    assert (upload["kind"], upload["entries"]) == ("jsonl", MANIFEST_ITEMS)
    assert manifest.stat().st_size < 256 * 1024  # the whole job is one small upload and request

    started = time.monotonic()
    status, body = create_by_manifest(rest, upload["name"])
    assert status == 200, body
    job = body["job"]
    assert (job["state"], job["items_total"]) == ("JOB_STATE_EXPANDING", 0)  # answered before expanding
    status, done = rest.poll(
        f"/v1/{job['name']}", lambda s, b: s == 200 and b["job"]["state"] in FINISHED, timeout_s=900
    )
    elapsed = time.monotonic() - started
    assert done["job"]["state"] == "JOB_STATE_SUCCEEDED", done
    assert done["job"]["items_succeeded"] == done["job"]["items_total"] == MANIFEST_ITEMS
    rows = job_rows(stack["database_url"], job["name"])
    assert [r["item_index"] for r in rows] == list(range(MANIFEST_ITEMS))  # each item once
    print(f"\n{MANIFEST_ITEMS}-item manifest job: {elapsed:.1f} s, {MANIFEST_ITEMS / elapsed:.1f} items/s")

    # Items made from the same photo got the same answer.
    status, page = rest.get(f"/v1/{job['name']}/items?page_size=6")
    assert status == 200, page
    top = [item["prediction"]["classes"][0]["label"] for item in page["items"]]
    assert top[:3] == top[3:6] and len(set(top[:3])) == 3, top


def test_a_zip_upload_makes_one_item_per_file_in_name_order_via_the_cli(
    rest: Rest, stack: dict[str, Any], photo_zip: dict[str, Any]
) -> None:
    created = ferry(stack, "job", "--manifest", photo_zip["name"], "--wait")
    assert (created["state"], created["items_total"], created["items_succeeded"]) == (
        "JOB_STATE_SUCCEEDED",
        3,
        3,
    )
    status, page = rest.get(f"/v1/{created['name']}/items")
    assert status == 200, page
    assert [item["index"] for item in page["items"]] == [0, 1, 2]
    labels = [item["prediction"]["classes"][0]["label"] for item in page["items"]]
    assert len(set(labels)) == 3, labels  # astronaut, cat, coffee: three different photos


def test_a_manifest_mixing_inline_content_and_zip_files_runs(
    rest: Rest, stack: dict[str, Any], photo_zip: dict[str, Any], photos: dict[str, bytes]
) -> None:
    lines = [
        {"content": b64(photos["coffee.jpg"])},
        {"image": f"{photo_zip['name']}/photos/cat.jpg"},
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    status, answer = upload_over_rest(stack, body, "application/x-ndjson")
    assert status == 200, answer
    status, created = create_by_manifest(rest, answer["upload"]["name"])
    assert status == 200, created
    done = wait_finished(rest, created["job"]["name"])
    assert (done["state"], done["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 2)


@pytest.mark.parametrize(
    ("line", "reason", "code"),
    [
        ("not json", "INVALID_MANIFEST", 3),
        ('{"image": "ftp://example.com/a.jpg"}', "INVALID_MANIFEST", 3),
        ('{"content": "***"}', "INVALID_MANIFEST", 3),
        ('{"image": "http://127.0.0.1:4222/x.jpg"}', "IMAGE_URI_FORBIDDEN", 3),
        ("{photo_zip}/photos/missing.jpg", "UPLOAD_NOT_FOUND", 5),
        # A line's own "id" names its item exactly as given, so one that cannot is refused.
        ('{"content": "Q0M=", "id": "a\\u001b[2Jb"}', "INVALID_MANIFEST", 3),
        ('{"content": "Q0M=", "id": "' + "i" * 1025 + '"}', "INVALID_MANIFEST", 3),
    ],
)
def test_a_bad_manifest_line_fails_the_job_with_its_line_number(
    rest: Rest, stack: dict[str, Any], photo_zip: dict[str, Any], line: str, reason: str, code: int
) -> None:
    if line.startswith("{photo_zip}"):
        line = json.dumps({"image": line.format(photo_zip=photo_zip["name"])})
    good = json.dumps({"image": f"{photo_zip['name']}/photos/cat.jpg"})
    body = "\n".join([good, "", line, good]).encode()  # the bad line is line 3 (a blank line 2)
    status, answer = upload_over_rest(stack, body, "application/x-ndjson")
    assert status == 200, answer
    status, created = create_by_manifest(rest, answer["upload"]["name"])
    assert status == 200, created  # accepted at once: the lines are read while it is EXPANDING
    failed = wait_finished(rest, created["job"]["name"])
    assert failed["state"] == "JOB_STATE_FAILED", failed
    assert "line 3" in failed["error"]["message"] and failed["error"]["code"] == code, failed
    assert reason in json.dumps(failed["error"]["details"]), failed
    assert failed["items_total"] == 0 and not job_rows(stack["database_url"], failed["name"])  # none ran


def test_uploads_are_the_tenants_own_and_must_exist(rest: Rest, stack: dict[str, Any]) -> None:
    status, refused = create_by_manifest(rest, "uploads/00000000-0000-4000-8000-000000000000")
    assert status == 404 and "UPLOAD_NOT_FOUND" in json.dumps(refused), refused
    status, refused = upload_over_rest(stack, b"\xff\xfe not text", "application/octet-stream")
    assert status == 400 and "INVALID_UPLOAD" in json.dumps(refused), refused


def test_a_zip_for_a_model_that_takes_no_images_is_refused_at_create(
    rest: Rest, photo_zip: dict[str, Any]
) -> None:
    """Its index says every item is an image: 400 at once, no job (it was accepted, then FAILED)."""
    status, before = rest.get("/v1/jobs?page_size=1000")
    assert status == 200, before
    status, refused = rest.post("/v1/jobs", {"model": "minilm", "manifest": photo_zip["name"]})
    assert status == 400, refused
    assert "takes text inputs and none of this job's 3 inputs is one (they are image)" in refused["message"]
    assert "UNSUPPORTED_INPUT" in json.dumps(refused["details"]), refused
    status, after = rest.get("/v1/jobs?page_size=1000")
    assert status == 200 and len(after.get("jobs", [])) == len(before.get("jobs", [])), after


def test_an_upload_larger_than_a_grpc_message_streams_through_envoy(stack: dict[str, Any]) -> None:
    """40 MiB over REST: more than gRPC's 32 MiB message limit, so Envoy must have sent it in pieces."""
    random = np.random.default_rng(17)
    files = {f"noise-{i}.bin": random.bytes(5 * 1024 * 1024) for i in range(8)}
    body = zip_of(files, zipfile.ZIP_STORED)
    status, answer = upload_over_rest(stack, body, "application/zip")
    assert status == 200, answer
    assert (answer["upload"]["kind"], answer["upload"]["entries"]) == ("zip", 8)
    assert int(answer["upload"]["size_bytes"]) == len(body)


def zip_of(files: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def camera_photos(count: int, size: tuple[int, int] = (1600, 1200)) -> dict[str, bytes]:
    """``count`` JPEGs like a camera's: skimage's photos upscaled, with sensor-like noise so they
    do not pack smaller than real ones (about 0.6 MB each at 2 megapixels)."""
    sources = [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut(), skimage_data.rocket()]
    random = np.random.default_rng(6)
    photos = {}
    for i in range(count):
        image = Image.fromarray(sources[i % len(sources)]).convert("RGB").resize(size, Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + random.integers(-12, 13, (size[1], size[0], 3))
        buffer = io.BytesIO()
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        photos[f"camera/{i:03d}.jpg"] = buffer.getvalue()
    return photos


def test_a_zip_of_real_photos_becomes_a_job_at_once_carried_by_reference(
    rest: Rest, stack: dict[str, Any]
) -> None:
    """The issue's bulk case at CI size: 60 two-megapixel photos (about 36 MB) in one zip. The job's
    work messages carry claim checks, so the work stream holds bytes per item, not per photo."""
    photos = camera_photos(60)
    body = zip_of(photos)
    status, answer = upload_over_rest(stack, body, "application/zip")
    assert status == 200, answer
    assert answer["upload"]["entries"] == 60
    status, created = create_by_manifest(rest, answer["upload"]["name"])
    assert status == 200, created
    job = created["job"]
    assert (job["state"], job["items_total"]) == ("JOB_STATE_EXPANDING", 0)  # the zip's index is read later
    done = wait_finished(rest, job["name"])
    assert (done["state"], done["items_succeeded"], done["items_total"]) == ("JOB_STATE_SUCCEEDED", 60, 60), (
        done
    )
    status, page = rest.get(f"/v1/{job['name']}/items?page_size=8")
    assert status == 200, page
    labels = [item["prediction"]["classes"][0]["label"] for item in page["items"]]
    assert labels[:4] == labels[4:8] and len(set(labels[:4])) >= 3, labels  # photo i and i+4 agree
    assert sum(len(p) for p in photos.values()) > 20_000_000


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({f"zeros-{i}.jpg": bytes(8 * 1024 * 1024) for i in range(3)}, "UPLOAD_UNPACKED_TOO_LARGE"),
    ],
    ids=["compressible-entries"],
)
def test_a_zip_bomb_is_refused_by_its_directory(
    stack: dict[str, Any], files: dict[str, bytes], reason: str
) -> None:
    body = zip_of(files)
    assert len(body) < 100_000  # 24 MiB of zeros packs to a few KiB
    status, refused = upload_over_rest(stack, body, "application/zip")
    assert status == 400, refused
    assert reason in json.dumps(refused["details"]) and "upload_max_compression_ratio" in refused["message"]


def access_logged(log: Path, since: int, trace_id: str, method: str = "CreateUpload") -> list[dict[str, Any]]:
    """The access lines of ``method`` in trace ``trace_id`` that ``log`` got past byte ``since`` (an
    earlier test's call may be logged late, as it ends)."""
    with log.open("rb") as lines:
        lines.seek(since)
        entries = [json.loads(line) for line in lines.read().splitlines() if line.startswith(b"{")]
    return [
        e
        for e in entries
        if e.get("logger") == "ferry.access"
        and e.get("method", "").endswith(method)
        and e.get("trace_id") == trace_id
    ]


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_uploads_go_to_the_upload_lane_a_niced_gateway_of_their_own(stack: dict[str, Any]) -> None:
    logs = Path(stack["logs_dir"])
    lane, gateway = logs / "gateway-uploads.log", logs / "gateway.log"
    since = {log: log.stat().st_size for log in (lane, gateway)}
    trace_id = secrets.token_hex(16)
    traceparent = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    status, answer = upload_over_rest(stack, b'{"text": "a line"}\n', "application/x-ndjson", traceparent)
    assert status == 200, answer
    time.sleep(0.5)  # the access line is written as the answer leaves
    assert [e["code"] for e in access_logged(lane, since[lane], trace_id)] == ["OK"]
    # The other tenants' gateway never read it.
    assert access_logged(gateway, since[gateway], trace_id) == []
    # The stack runs at this test's nice (it may run niced itself); the callers' gateway at -10.
    assert _niceness(stack["pids"]["gateway-uploads"]) == min(19, _niceness(os.getpid()) + UPLOAD_NICENESS)
    # Each process leads a session of its own: with autogroups on, the group's nice is what ranks
    # the lane behind the other processes (its own nice only ranks it within its group).
    autogroup = Path(f"/proc/{stack['pids']['gateway-uploads']}/autogroup")
    if autogroup.exists():
        assert autogroup.read_text().split()[-1] == str(UPLOAD_NICENESS), autogroup.read_text()


#: A real photo's file name made hostile: a terminal's clear-screen, 1,400 characters of folders,
#: and a right-to-left override that would show "cat\u202egpj.exe" as "catexe.jpg" (an
#: executable dressed as a photo).
HOSTILE_NAME = "\x1b[2J" + "x/" * 700 + "cat\u202egpj.exe"


@pytest.fixture(scope="module")
def named_zip(stack: dict[str, Any], photos: dict[str, bytes]) -> dict[str, Any]:
    """Real photos in nested folders, one folder named on a Mac (NFD), one file named by an attacker."""
    files = {
        "2024/holiday/beach/cat.jpg": photos["cat.jpg"],
        "2024/work/coffee.jpg": photos["coffee.jpg"],
        unicodedata.normalize("NFD", "Café/astronaut.jpg"): photos["astronaut.jpg"],
        HOSTILE_NAME: photos["cat.jpg"],
    }
    status, body = upload_over_rest(stack, zip_of(files), "application/zip")
    assert status == 200, body
    assert body["upload"]["entries"] == 4
    upload: dict[str, Any] = body["upload"]
    return upload


def top_label_of(rest: Rest, photo: bytes) -> str:
    """What a synchronous Predict answers for ``photo``: what its job item must answer too."""
    status, body = rest.post(
        "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(photo)}, "top_k": 1}
    )
    assert status == 200, body
    label: str = body["prediction"]["classes"][0]["label"]
    return label


def results_and_items(rest: Rest, stack: dict[str, Any], job: str) -> list[tuple[str, str, str]]:
    """Each item's (result line's input, ListJobItems' input_name, top label), checking that the
    REST result file, ``ferry results`` and ListJobItems say the same."""
    status, lines = results_over_rest(stack, job)
    assert status == 200, lines
    results = [json.loads(line) for line in lines]
    printed = ferry_cli(stack, "results", job)  # one JSON object per line: the stored file
    printed = printed if isinstance(printed, list) else [printed]
    assert [r["input"] for r in printed] == [r["input"] for r in results]
    status, page = rest.get(f"/v1/{job}/items")
    assert status == 200, page
    names = [item["prediction"].get("input_name", "") for item in page["items"]]
    assert [r["index"] for r in results] == list(range(len(results)))
    return [
        (r["input"], name, r["classes"][0]["label"] if r["classes"] else "")
        for r, name in zip(results, names, strict=True)
    ]


def test_a_zip_jobs_results_name_each_photo_by_its_file_in_the_zip(
    rest: Rest, stack: dict[str, Any], named_zip: dict[str, Any], photos: dict[str, bytes]
) -> None:
    created = ferry(stack, "job", "--manifest", named_zip["name"], "--wait")
    assert (created["state"], created["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 4), created
    items = results_and_items(rest, stack, created["name"])
    inputs = [i for i, _, _ in items]
    assert [name for _, name, _ in items] == inputs  # ListJobItems' records say what the file says
    # Items in the zip's name order ("\x1b" sorts first), each named by its file.
    hostile, *ordinary = inputs
    assert ordinary == ["2024/holiday/beach/cat.jpg", "2024/work/coffee.jpg", "Café/astronaut.jpg"]  # NFC
    # `ferry results` prints the names as UTF-8, as REST does, not \u-escaped; escapes stay escaped.
    printed = ferry_cli_text(stack, "results", created["name"])
    assert '"input":"Café/astronaut.jpg"' in printed and "\\u00e9" not in printed, printed
    assert "/cat\\\\u202egpj.exe" in printed and "\u202e" not in printed and "\x1b" not in printed
    # The attacker's name: escaped (no clear-screen, no reversed text) and cut to the limit,
    # keeping its start and its file name.
    assert hostile.startswith("\\x1b[2Jx/x/") and hostile.endswith("/cat\\u202egpj.exe")
    assert len(hostile) == limits.INPUT_NAME_CHARS and input_names.ELLIPSIS in hostile
    assert all(c.isprintable() for c in hostile)
    # Each name is the photo's: its item answered what Predict answers for that photo.
    labels = {i: label for i, _, label in items}
    assert labels["2024/holiday/beach/cat.jpg"] == labels[hostile] == top_label_of(rest, photos["cat.jpg"])
    assert labels["2024/work/coffee.jpg"] == top_label_of(rest, photos["coffee.jpg"])
    assert labels["Café/astronaut.jpg"] == top_label_of(rest, photos["astronaut.jpg"])


def test_a_manifest_jobs_results_name_each_line_by_what_it_gave(
    rest: Rest, stack: dict[str, Any], named_zip: dict[str, Any], photos: dict[str, bytes]
) -> None:
    lines = [
        json.dumps({"image": f"{named_zip['name']}/2024/work/coffee.jpg"}),
        "",
        json.dumps({"content": b64(photos["cat.jpg"]), "id": "kitchen-cam/17"}),
        json.dumps({"content": b64(photos["astronaut.jpg"])}),
    ]
    status, answer = upload_over_rest(stack, "\n".join(lines).encode(), "application/x-ndjson")
    assert status == 200, answer
    status, created = create_by_manifest(rest, answer["upload"]["name"])
    assert status == 200, created
    done = wait_finished(rest, created["job"]["name"])
    assert (done["state"], done["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 3), done
    items = results_and_items(rest, stack, done["name"])
    assert [(i, name) for i, name, _ in items] == [
        (f"{named_zip['name']}/2024/work/coffee.jpg",) * 2,  # the zip file the line names
        ("kitchen-cam/17",) * 2,  # the line's own id
        ("line 4",) * 2,  # neither: its line number in the manifest (the blank line 2 counts)
    ]
    assert [label for _, _, label in items] == [
        top_label_of(rest, photos[p]) for p in ("coffee.jpg", "cat.jpg", "astronaut.jpg")
    ]


def test_an_inline_jobs_results_still_name_inputs_by_their_place(rest: Rest, stack: dict[str, Any]) -> None:
    """Inputs listed in CreateJob have no name of their own: "inputs[i]", as before names were kept."""
    status, created = rest.post(
        "/v1/jobs",
        {"model": "minilm", "inputs": [{"text": {"content": "a cat"}}, {"text": {"content": "tea"}}]},
    )
    assert status == 200, created
    wait_finished(rest, created["job"]["name"])
    items = results_and_items(rest, stack, created["job"]["name"])
    assert [(i, name) for i, name, _ in items] == [("inputs[0]", ""), ("inputs[1]", "")]


def test_a_job_of_photos_too_large_for_one_request_goes_as_one_upload_via_the_cli(
    rest: Rest, stack: dict[str, Any], tmp_path: Path
) -> None:
    # More image bytes than a CreateJob request carries (32 MiB at the edge): `ferry job` zips
    # them into one upload, and the results name each photo by its path below the shared folder.
    photos = {}
    for i, content in enumerate(camera_photos(9, (4032, 3024)).values()):  # 12 megapixels each
        path = tmp_path / f"day{i % 2 + 1}" / f"IMG_{i:04d}.jpg"  # as a phone's export leaves them
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        photos[f"day{i % 2 + 1}/IMG_{i:04d}.jpg"] = content
    files = [tmp_path / name for name in photos]
    assert sum(len(content) for content in photos.values()) > bundles.INLINE_JOB_BYTES
    env = {**os.environ, "FERRY_API_KEY": API_KEY, "FERRY_TARGET": stack["grpc_target"]}
    done = subprocess.run(
        [FERRY, "job", *map(str, files), "--wait"],
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "uploaded 9 files as one zip, uploads/" in done.stderr, done.stderr
    job = json.loads(done.stdout)
    assert (job["state"], job["items_succeeded"]) == ("JOB_STATE_SUCCEEDED", 9), job
    items = results_and_items(rest, stack, job["name"])
    assert [name for _, name, _ in items] == sorted(photos)  # the zip's name order
    for _, name, label in items:  # each name is its photo's: the label Predict gives that photo
        assert label == top_label_of(rest, photos[name]), name
