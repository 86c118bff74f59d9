"""Inputs by reference on the whole local stack: uploads (REST through Envoy, the CLI over gRPC)
and jobs whose items a manifest or a zip names, run by real inference and recorded in Postgres."""

from __future__ import annotations

import io
import json
import time
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
from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest, b64
from tests.e2e.test_jobs import FINISHED, job_rows, wait_finished
from tests.e2e.test_keys import ferry_cli

pytestmark = pytest.mark.e2e

#: The issue's acceptance size: a 2,000-item job submitted by one small request.
MANIFEST_ITEMS = 2000


def upload_over_rest(stack: dict[str, Any], body: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
    """POST /v1/uploads with the raw bytes, as ``curl --data-binary @file`` sends them."""
    request = urllib.request.Request(
        stack["http_url"] + "/v1/uploads",
        data=body,
        method="POST",
        headers={"content-type": content_type, "authorization": f"Bearer {API_KEY}"},
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


def _uploads_logged(log: Path, since: int) -> list[dict[str, Any]]:
    """The CreateUpload access lines ``log`` got past byte ``since``."""
    with log.open("rb") as lines:
        lines.seek(since)
        entries = [json.loads(line) for line in lines.read().splitlines() if line.startswith(b"{")]
    return [
        e
        for e in entries
        if e.get("logger") == "ferry.access" and e.get("method", "").endswith("CreateUpload")
    ]


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_uploads_go_to_the_upload_lane_a_niced_gateway_of_their_own(stack: dict[str, Any]) -> None:
    logs = Path(stack["logs_dir"])
    lane, gateway = logs / "gateway-uploads.log", logs / "gateway.log"
    since = {log: log.stat().st_size for log in (lane, gateway)}
    status, answer = upload_over_rest(stack, b'{"text": "a line"}\n', "application/x-ndjson")
    assert status == 200, answer
    time.sleep(0.5)  # the access line is written as the answer leaves
    assert [e["code"] for e in _uploads_logged(lane, since[lane])] == ["OK"]
    assert _uploads_logged(gateway, since[gateway]) == []  # the other tenants' gateway never read it
    lane_nice, gateway_nice = (_niceness(stack["pids"][name]) for name in ("gateway-uploads", "gateway"))
    assert lane_nice == min(19, gateway_nice + UPLOAD_NICENESS)  # the stack may run niced itself
