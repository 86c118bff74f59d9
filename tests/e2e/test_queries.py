"""What a user asks of their records, through Envoy: filters, model stats, REST paths and errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import urllib.parse
from typing import Any

import grpc
import pytest

from ferry_client import FerryClient, FerryError
from ferry_client.cli import main as ferry
from tests.e2e.conftest import API_KEY
from tests.e2e.rest import Rest, b64
from tests.e2e.test_grpc import GRPCURL

PREDICT = "/v1/models/efficientnet-lite0:predict"


def predict(rest: Rest, image: bytes) -> dict[str, Any]:
    status, body = rest.post(PREDICT, {"image": {"content": b64(image)}})
    assert status == 200, body
    prediction: dict[str, Any] = body["prediction"]
    return prediction


def listed(rest: Rest, **query: str) -> list[str]:
    # Spaces as %20: Envoy's transcoder does not read "+" as a space in query parameters.
    encoded = urllib.parse.urlencode({"page_size": "1000", **query}, quote_via=urllib.parse.quote)
    status, body = rest.get(f"/v1/predictions?{encoded}")
    assert status == 200, body
    return [p["name"] for p in body["predictions"]]


def test_filters_through_rest(rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes) -> None:
    cat, coffee = predict(rest, cat_jpeg), predict(rest, coffee_jpeg)
    # From this test's first record on: other tests' records (made earlier) stay out of the window.
    since = cat["create_time"]
    rest.poll(f"/v1/{coffee['name']}", lambda s, _: s == 200)
    rest.poll(f"/v1/{cat['name']}", lambda s, _: s == 200)

    assert listed(rest, label="espresso", start_time=since) == [coffee["name"]]
    assert listed(rest, label=cat["classes"][0]["label"], start_time=since) == [cat["name"]]
    strong = listed(rest, min_score="0.9", start_time=since)
    assert coffee["name"] in strong and cat["name"] not in strong  # espresso 0.95, tiger cat 0.39
    assert set(
        listed(rest, model="efficientnet-lite0", source="PREDICTION_SOURCE_SYNC", start_time=since)
    ) >= {
        cat["name"],
        coffee["name"],
    }
    assert listed(rest, source="PREDICTION_SOURCE_JOB_ITEM", start_time=since) == []
    assert listed(rest, state="PREDICTION_STATE_FAILED", start_time=since) == []
    _, body = rest.get(f"/v1/{coffee['name']}")
    assert body["prediction"]["source"] == "PREDICTION_SOURCE_SYNC"


def test_bad_filters_are_400_naming_the_field(rest: Rest) -> None:
    status, body = rest.get("/v1/predictions?min_score=1.5")
    assert status == 400 and "min_score" in body["message"], body
    status, body = rest.get("/v1/predictions?start_time=2026-11-26T00:00:00Z&end_time=2026-11-25T00:00:00Z")
    assert status == 400 and "start_time" in body["message"], body


def test_model_stats_through_rest(rest: Rest, cat_jpeg: bytes, coffee_jpeg: bytes) -> None:
    _, before = rest.get("/v1/models/efficientnet-lite0/stats?window=15m")
    made = [predict(rest, image) for image in (coffee_jpeg, coffee_jpeg, cat_jpeg)]
    rest.poll(f"/v1/{made[-1]['name']}", lambda s, _: s == 200)

    status, body = rest.get("/v1/models/efficientnet-lite0/stats?window=15m")
    assert status == 200, body
    stats = body["stats"]
    assert stats["model"] == "models/efficientnet-lite0" and stats["window"] == "15m"
    # Other tests share the stack (their failed job items count as errors): compare with before.
    assert int(stats["request_count"]) >= int(before["stats"]["request_count"]) + 3
    assert int(stats["error_count"]) == int(before["stats"]["error_count"])
    for latency in (stats["total_latency"], stats["inference_latency"]):
        assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"], stats
    assert stats["batch_size_mean"] >= 1
    labels = {entry["label"]: int(entry["count"]) for entry in stats["top_labels"]}
    assert labels["espresso"] >= 2

    status, default_window = rest.get("/v1/models/efficientnet-lite0/stats")
    assert status == 200 and default_window["stats"]["window"] == "1h", default_window
    status, body = rest.get("/v1/models/efficientnet-lite0/stats?window=2weeks")
    assert status == 400 and "window" in body["message"], body


def test_stats_of_a_model_never_served_is_404_naming_the_served_ones(
    rest: Rest, stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # A mistyped model answered 200 with zeros, which reads as "nobody used it lately".
    status, body = rest.get("/v1/models/resnet/stats?window=1h")
    assert status == 404 and body["details"][0]["reason"] == "MODEL_NOT_FOUND", body
    assert "'models/efficientnet-lite0'" in body["message"], body
    assert ferry(["--target", stack["grpc_target"], "--api-key", API_KEY, "stats", "resnet"]) == 1
    assert "available models" in capsys.readouterr().err
    # A served model without records in the window is zeros: that is the truth about it.
    status, body = rest.get("/v1/models/mobilenet-v2/stats?window=1s")
    assert status == 200 and body["stats"]["model"] == "models/mobilenet-v2", body


def test_cli_stats_and_export(
    rest: Rest, stack: dict[str, Any], coffee_jpeg: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    made = [predict(rest, coffee_jpeg) for _ in range(3)]
    since = made[0]["create_time"]
    rest.poll(f"/v1/{made[-1]['name']}", lambda s, _: s == 200)
    common = ["--target", stack["grpc_target"], "--api-key", API_KEY]

    assert ferry([*common, "stats", "efficientnet-lite0", "--window", "15m"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert int(stats["request_count"]) >= 3 and stats["window"] == "15m"

    assert ferry([*common, "predictions", "--since", since, "--label", "espresso", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {line["name"] for line in lines} >= {p["name"] for p in made}

    assert ferry([*common, "predictions", "--since", since, "--source", "sync", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {row["name"] for row in rows} >= {p["name"] for p in made}
    assert {row["top_label"] for row in rows if row["name"] in {p["name"] for p in made}} == {"espresso"}

    assert ferry([*common, "stats", "efficientnet-lite0", "--window", "1y"]) == 1
    assert "window" in capsys.readouterr().err


def test_grpcurl_and_the_python_client_filter_and_summarize(
    stack: dict[str, Any], rest: Rest, cat_jpeg: bytes
) -> None:
    cat = predict(rest, cat_jpeg)
    rest.poll(f"/v1/{cat['name']}", lambda s, _: s == 200)
    label = cat["classes"][0]["label"]
    since = cat["create_time"]
    request = json.dumps({"label": label, "start_time": since, "source": "PREDICTION_SOURCE_SYNC"})
    done = subprocess.run(
        [
            GRPCURL, "-plaintext", "-H", f"authorization: Bearer {API_KEY}", "-d", "@",
            stack["grpc_target"], "ferry.predictions.v1.PredictionService/ListPredictions",
        ],
        input=request, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert cat["name"] in [p["name"] for p in json.loads(done.stdout)["predictions"]]

    with FerryClient(stack["grpc_target"], API_KEY) as ferry:
        found = list(ferry.iter_predictions(label=label, since=since, model="efficientnet-lite0"))
        assert cat["name"] in [p.name for p in found]
        stats = ferry.model_stats("efficientnet-lite0", window="24h")
        assert stats.request_count >= 1
        assert stats.total_latency.p50_ms <= stats.total_latency.p95_ms <= stats.total_latency.p99_ms
        with pytest.raises(FerryError) as caught:
            ferry.list_predictions(min_score=2.0)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
