"""The console in a real browser (headless Chromium) against a real stack, as a user drives it."""

from __future__ import annotations

import csv
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from selenium.webdriver.support.ui import Select

from devstack import console
from tests.e2e.console.browser import Browser
from tests.e2e.console.conftest import ZIP_PHOTOS, sign_in
from tests.e2e.rest import Rest, b64

#: ImageNet-1k's domestic cats (tests/e2e/expectations.py's CAT_CLASSES, by name).
DOMESTIC_CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_console_is_served_with_a_strict_policy(console_stack: dict[str, Any]) -> None:
    base = console_stack["http_url"]
    for name in console.console_files():
        path = "/console/" if name == "index.html" else f"/console/{name}"
        with urllib.request.urlopen(base + path) as answer:
            assert answer.status == 200
            assert answer.headers["content-security-policy"] == console.CONTENT_SECURITY_POLICY
            assert answer.headers["content-type"] == console.CONTENT_TYPES[Path(name).suffix]
            assert answer.read() == (console.CONSOLE_DIR / name).read_bytes()
    assert "'unsafe-inline'" not in console.CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in console.CONTENT_SECURITY_POLICY


def test_sign_in_shows_what_the_scopes_allow_and_sign_out_forgets_the_key(
    browser: Browser, api: Rest
) -> None:
    browser.open("models")
    browser.element("#api-key").send_keys("fy_not-a-key-of-this-deployment")
    browser.element("#signin-form button").click()
    assert "INVALID_API_KEY" in browser.text_of(".error", "INVALID_API_KEY")

    status, made = api.post("/v1/keys", {"tenant": "readers", "scopes": ["read"]})
    assert status == 200, made
    sign_in(browser, made["api_key"])
    nav = browser.element("#nav").text
    assert "Models" in nav and "Predictions" in nav and "Keys" not in nav
    browser.open("models/efficientnet-lite0")
    assert "no predict scope" in browser.text_of("#main", "no predict scope")
    assert not browser.elements("#try-form")
    assert browser.run("return document.cookie") == ""
    assert made["api_key"] not in browser.driver.current_url

    browser.element("#nav button").click()
    browser.element("#api-key")
    assert browser.run("return sessionStorage.length") == 0


def test_try_a_model_on_a_photo(browser: Browser, photos: dict[str, Path], api: Rest) -> None:
    sign_in(browser)
    browser.shot("models")
    browser.open("models/efficientnet-lite0")
    browser.element("#try-image").send_keys(str(photos["cat"]))
    browser.element("#try-submit").click()
    first = browser.element("#classes-list li .label")
    shown = browser.wait(lambda: first.get_attribute("textContent"), what="a label")
    # Chelsea is a tabby-like cat: the weights say tiger cat, with Egyptian cat a close second.
    assert shown in DOMESTIC_CATS
    trace_id = browser.element("#trace-id").text
    assert len(trace_id) == 32
    browser.shot("try-it", height=1000)

    browser.element("#prediction-link").click()
    browser.text_of("h1", "Prediction")
    recorded = browser.driver.current_url.rsplit("/", 1)[1]
    status, body = api.get(f"/v1/predictions/{recorded}")
    assert status == 200 and body["prediction"]["trace_id"] == trace_id
    assert body["prediction"]["classes"][0]["label"] == shown
    assert browser.element("#classes-list li .label").get_attribute("textContent") == shown


def test_submit_a_job_from_a_zip_and_watch_it_finish(browser: Browser, photos: dict[str, Path]) -> None:
    sign_in(browser)
    browser.open("jobs")
    browser.element("#job-file").send_keys(str(photos["zip"]))
    Select(browser.element("#job-model")).select_by_value("efficientnet-lite0")
    Select(browser.element("#job-priority")).select_by_value("PRIORITY_HIGH")
    browser.element("#job-submit").click()
    # The job's page follows the job with WatchJob until it finishes: no reload, no polling.
    browser.text_of("#job-summary", "partially succeeded", timeout_s=90)
    assert browser.element("#job-succeeded").text == str(ZIP_PHOTOS)
    assert browser.element("#job-failed").text == "1"
    browser.wait(
        lambda: browser.run(
            "return performance.getEntriesByType('resource').some(e => e.name.endsWith(':watch'))"
        ),
        what="the page's WatchJob stream",
    )
    row = browser.element("#job-failures tr.failed-item")
    assert row.find_element("css selector", ".reason").text == "INVALID_IMAGE"
    assert row.find_element("css selector", ".input-name").text == "zz-notes.jpg"  # which file failed
    row.find_element("css selector", "summary").click()
    assert "not a decodable image" in row.find_element("css selector", ".message").text
    assert "yes: INVALID_IMAGE" in row.text  # dead-lettered, with its reason
    browser.shot("job", height=1000)

    browser.element("#job-results").click()
    results = browser.wait(lambda: list(browser.downloads.glob("*.results.jsonl")), what="the result file")
    assert results[0].read_text().count("\n") == ZIP_PHOTOS + 1
    browser.open("jobs")
    browser.element("table tbody tr")
    browser.shot("jobs")


def test_submit_a_job_from_a_jsonl_manifest(browser: Browser, tmp_path: Path) -> None:
    manifest = tmp_path / "texts.jsonl"
    lines = [
        {"text": "a calm lake at dawn", "candidate_labels": ["calm", "stormy"]},
        {"text": "thunder all night"},
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    sign_in(browser)
    browser.open("jobs")
    browser.element("#job-file").send_keys(str(manifest))
    Select(browser.element("#job-model")).select_by_value("minilm")
    browser.element("#job-submit").click()
    browser.text_of("#job-summary", "succeeded", timeout_s=60)
    assert browser.element("#job-succeeded").text == "2"
    assert "minilm" in browser.element("#job-summary").text


def test_filter_predictions_and_export(browser: Browser, api: Rest, photos: dict[str, Path]) -> None:
    status, body = api.post(
        "/v1/models/minilm:predict",
        {"text": {"content": "a quiet night", "candidate_labels": ["calm", "loud"]}},
    )
    assert status == 200, body
    sign_in(browser)
    browser.open("predictions")
    Select(browser.element("#filter-model")).select_by_value("minilm")
    browser.element("#filter-apply").click()
    browser.wait(lambda: "model=minilm" in browser.driver.current_url, what="the filter in the URL")
    rows = browser.wait(lambda: browser.elements("tr.prediction-row"), what="rows")
    assert all(" minilm " in f" {row.text} " for row in rows)

    browser.open("predictions?state=PREDICTION_STATE_FAILED")
    rows = browser.wait(lambda: browser.elements("tr.prediction-row") or browser.elements("#no-predictions"))
    assert all("failed" in row.text for row in browser.elements("tr.prediction-row"))

    status, body = api.post(
        "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(photos["cat"].read_bytes())}}
    )
    assert status == 200, body
    label = body["prediction"]["classes"][0]["label"]
    browser.open("predictions")
    Select(browser.element("#filter-model")).select_by_value("efficientnet-lite0")
    browser.element("#filter-label").send_keys(label)  # a label with a space: sent as %20, not +
    browser.element("#filter-apply").click()
    rows = browser.wait(lambda: browser.elements("tr.prediction-row"), what=f"{label} rows")
    assert all(row.find_element("css selector", "td.label").text == label for row in rows)
    browser.shot("predictions")
    for old in browser.downloads.glob("predictions.*"):
        old.unlink()
    browser.element("#export-csv").click()
    exported = browser.wait(lambda: list(browser.downloads.glob("predictions.csv")), what="the CSV")
    time.sleep(0.3)
    records = list(csv.DictReader(exported[0].open()))
    assert records and all(
        r["label"] == "tiger cat" and r["model"] == "models/efficientnet-lite0" for r in records
    )


def test_create_a_key_shown_once_then_revoke_it(browser: Browser, api: Rest) -> None:
    sign_in(browser)
    browser.open("keys")
    browser.element("#key-tenant").send_keys("acme")
    browser.element("#key-scope-jobs").click()  # off: predict and read remain
    browser.element("#key-rate").send_keys("5")
    browser.element("#key-create").click()
    key = browser.element("#new-api-key").text
    assert key.startswith("fy_")
    assert Rest(api.base_url, key).get("/v1/models")[0] == 200
    browser.shot("keys")

    browser.open("keys?tenant=acme")
    row = browser.element("tr.key-row")
    assert "predict, read" in row.text and "5/s" in row.text
    row.find_element("css selector", "button.danger").click()
    browser.driver.switch_to.alert.accept()
    browser.wait(lambda: "revoked" in row.text, what="revoked")
    assert Rest(api.base_url, key).get("/v1/models")[0] == 401
    browser.open("keys?tenant=acme")
    assert not browser.elements("tr.key-row button.danger")


def test_markup_from_a_model_shows_as_text(browser: Browser) -> None:
    sign_in(browser)
    browser.open("models/minilm")
    payloads = ['<img src=x onerror="window.xss=1">', "<script>window.xss=2</script>"]
    browser.element("#try-text").send_keys("an image tag and a script tag")
    browser.element("#try-labels").send_keys(", ".join(payloads))
    browser.element("#try-submit").click()
    labels = browser.wait(lambda: browser.elements("#classes-list li .label"), what="labels")
    assert sorted(label.get_attribute("textContent") for label in labels) == sorted(payloads)
    chart_text = browser.element("svg.classes").text
    assert all(payload in chart_text for payload in payloads)
    assert browser.run("return window.xss") is None
    assert not browser.elements("#try-result img, #try-result script")


def test_a_429_says_when_to_retry(browser: Browser, api: Rest) -> None:
    status, made = api.post("/v1/keys", {"tenant": "slow", "scopes": ["read"], "rate_per_s": 0.2, "burst": 1})
    assert status == 200, made
    browser.open("signin")
    browser.element("#api-key").send_keys(made["api_key"])
    browser.element("#signin-form button").click()
    error = browser.text_of(".error", "RATE_LIMITED")
    assert "429" in error and "Retry after" in error


def test_phone_width_keeps_the_page_inside_the_screen(browser: Browser) -> None:
    sign_in(browser)
    browser.driver.set_window_size(390, 844)
    try:
        for page in ("models", "jobs", "predictions", "keys"):
            browser.open(page)
            browser.element("table, #no-predictions")
            overflow = browser.run("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{page} is {overflow}px wider than a phone"
        browser.open("models")
        browser.element("table")
        browser.shot("phone-models", 390, 844)
    finally:
        browser.driver.set_window_size(1280, 900)


def test_stats_charts_a_model_over_a_window(browser: Browser, api: Rest, photos: dict[str, Path]) -> None:
    status, body = api.post(
        "/v1/models/efficientnet-lite0:predict", {"image": {"content": b64(photos["cat"].read_bytes())}}
    )
    assert status == 200, body
    top = body["prediction"]["classes"][0]["label"]
    api.poll(
        "/v1/models/efficientnet-lite0/stats?window=15m",
        lambda status, body: int(body["stats"]["request_count"]) > 0,
    )
    sign_in(browser)
    browser.open("stats?model=efficientnet-lite0&window=15m")
    summary = browser.element("#stats-summary").text
    assert "Success rate" in summary and "%" in summary
    assert top in browser.element("svg.top-labels").text
    assert len(browser.elements("svg.line")) == 2  # throughput and success rate over the window
    browser.shot("stats", height=1000)
