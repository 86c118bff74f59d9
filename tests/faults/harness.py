"""The fault matrix's tools: a stack to hurt, steady client load, and what Postgres holds.

Every case counts what a client saw and what Postgres holds, and appends a row of figures to the
report that ``docs/reliability.md`` shows (``make faults`` prints it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.e2e.rest import Rest, b64

FERRY = str(Path(sys.executable).parent / "ferry")
FINISHED = {
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLED",
}
#: Answers a client may see during a fault and should retry (REST codes of UNAVAILABLE,
#: RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED).
RETRYABLE = {429, 503, 504}


def eventually(check: Callable[[], bool], what: str, timeout_s: float, every_s: float = 0.2) -> float:
    """Waits until ``check()`` holds; returns the seconds it took.

    Raises:
        AssertionError: it did not hold within ``timeout_s`` (names ``what``).
    """
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(every_s)
    return time.monotonic() - started


class FaultStack:
    """A running ``ferry up`` whose processes the cases kill, stop and restart."""

    def __init__(
        self, endpoints: dict[str, Any], state_dir: Path, env: dict[str, str], api_key: str, failpoints: Path
    ) -> None:
        self.endpoints = endpoints
        self.state_dir = state_dir
        self.env = env
        self.rest = Rest(endpoints["http_url"], api_key)
        self.failpoints = failpoints

    def arm(self, failpoint: str) -> None:
        """Arms ``failpoint``: the next process reaching it dies there (services/common/failpoints.py)."""
        (self.failpoints / failpoint).touch()

    # -- the supervisor's view ------------------------------------------------------------
    def processes(self) -> dict[str, dict[str, Any]]:
        """Each process's entry in the supervisor's status.json."""
        status = json.loads((self.state_dir / "status.json").read_text())
        processes: dict[str, dict[str, Any]] = status["processes"]
        return processes

    def pid(self, name: str) -> int:
        pid = self.processes()[name]["pid"]
        assert pid, f"{name} has no process right now"
        return int(pid)

    def serving_with_new_pid(self, name: str, old_pid: int) -> bool:
        entry = self.processes()[name]
        return bool(entry["pid"]) and entry["pid"] != old_pid and bool(entry["serving"])

    def all_serving(self) -> bool:
        return all(p["serving"] for p in self.processes().values())

    def wait_all_serving(self, timeout_s: float = 120.0) -> None:
        eventually(self.all_serving, "every process serving", timeout_s)

    def signal(self, name: str, sig: signal.Signals) -> tuple[int, float]:
        """Sends ``sig`` to ``name``; returns its pid and the monotonic time it was sent."""
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid, time.monotonic()

    def wait_replaced(self, name: str, old_pid: int, timeout_s: float = 120.0) -> float:
        """Waits until the supervisor runs a new ``name`` that serves; returns the seconds taken."""
        return eventually(lambda: self.serving_with_new_pid(name, old_pid), f"{name} back", timeout_s)

    def hurt(self, name: str, sig: signal.Signals) -> float:
        """Sends ``sig`` to ``name`` and waits for the supervisor's replacement; returns the seconds taken."""
        pid, _ = self.signal(name, sig)
        return self.wait_replaced(name, pid)

    def ferry(self, *args: str, timeout_s: float = 300.0, check: bool = True) -> str:
        """Runs the ``ferry`` CLI on this stack; returns its output (``check``: fail on a non-zero exit)."""
        done = subprocess.run(
            [FERRY, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
        assert done.returncode == 0 or not check, (
            f"ferry {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout + done.stderr

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, photos: list[bytes], items: int) -> str:
        """Submits a job of ``items`` inputs cycling through ``photos``; returns its name."""
        inputs = [{"image": {"content": b64(photos[i % len(photos)])}} for i in range(items)]
        status, answer = self.rest.post("/v1/jobs", {"model": "efficientnet-lite0", "inputs": inputs})
        assert status == 200, answer
        return str(answer["job"]["name"])

    def job(self, name: str) -> dict[str, Any]:
        """The job as GET returns it; retried through the brief 503s of a gateway restart."""
        status, body = self.rest.poll(f"/v1/{name}", lambda s, _: s == 200, timeout_s=60)
        assert status == 200, body
        job: dict[str, Any] = body["job"]
        return job

    def wait_done_items(self, name: str, at_least: int, timeout_s: float = 120.0) -> None:
        def done() -> bool:
            job = self.job(name)
            return int(job["items_succeeded"]) + int(job["items_failed"]) >= at_least

        eventually(done, f"{at_least} items of {name} done", timeout_s)

    def wait_finished(self, name: str, timeout_s: float = 180.0) -> dict[str, Any]:
        eventually(lambda: self.job(name)["state"] in FINISHED, f"{name} finished", timeout_s, every_s=0.3)
        return self.job(name)

    # -- Postgres ----------------------------------------------------------------------------
    def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            connection = await asyncpg.connect(self.endpoints["database_url"])
            try:
                return list(await connection.fetch(sql, *args))
            finally:
                await connection.close()

        return asyncio.run(fetch())

    def job_rows(self, name: str) -> list[asyncpg.Record]:
        job_id = uuid.UUID(name.removeprefix("jobs/"))
        return self.query(
            "SELECT id, item_index, state FROM predictions WHERE job_id = $1 ORDER BY item_index", job_id
        )

    def sync_rows(self, ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Which of ``ids`` are stored as predictions."""
        rows = self.query("SELECT id FROM predictions WHERE id = ANY($1::uuid[])", ids)
        return {row["id"] for row in rows}

    def sync_row_count(self) -> int:
        return int(self.query("SELECT count(*) AS n FROM predictions WHERE job_id IS NULL")[0]["n"])


@dataclass
class Answer:
    """One sync predict as the client saw it."""

    request_id: str
    status: int
    prediction_id: uuid.UUID | None
    seconds: float = 0.0
    """How long the client waited for the answer."""


class SteadyLoad:
    """Clients sending sync REST predicts back to back, each with its own request_id.

    Args:
        rest: the client.
        image: the JPEG every request sends.
        clients: how many concurrent clients.
        pause_s: each client's pause between requests.
    """

    def __init__(self, rest: Rest, image: bytes, clients: int = 3, pause_s: float = 0.05) -> None:
        self._rest = rest
        self._body = {"image": {"content": b64(image)}, "top_k": 3}
        self._clients = clients
        self._pause_s = pause_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.answers: list[Answer] = []

    def __enter__(self) -> SteadyLoad:
        for _ in range(self._clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def _client(self) -> None:
        while not self._stop.is_set():
            request_id = str(uuid.uuid4())
            sent = time.monotonic()
            status, body = self._rest.post(
                "/v1/models/efficientnet-lite0:predict", {**self._body, "request_id": request_id}
            )
            name = body.get("prediction", {}).get("name", "") if status == 200 else ""
            answer = Answer(
                request_id,
                status,
                uuid.UUID(name.removeprefix("predictions/")) if name else None,
                time.monotonic() - sent,
            )
            with self._lock:
                self.answers.append(answer)
            self._stop.wait(self._pause_s)

    def codes(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)

    def succeeded(self) -> list[uuid.UUID]:
        return [a.prediction_id for a in self.answers if a.status == 200 and a.prediction_id is not None]


@dataclass
class Figures:
    """One row of docs/reliability.md's table."""

    case: str
    fault: str
    requests: int = 0
    requests_ok: int = 0
    requests_retryable: int = 0
    requests_failed: int = 0
    items: int = 0
    items_succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    recovery_s: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)

    def count_load(self, load: SteadyLoad) -> None:
        codes = load.codes()
        self.requests = sum(codes.values())
        self.requests_ok = codes[200]
        self.requests_retryable = sum(n for code, n in codes.items() if code in RETRYABLE)
        self.requests_failed = self.requests - self.requests_ok - self.requests_retryable
        # A call held through the fault: what the restart cost a client that kept calling.
        self.notes["longest_call_s"] = round(max((a.seconds for a in load.answers), default=0.0), 1)


class Report:
    """Collects each case's figures into a JSON file beside the test run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[Figures] = []

    def add(self, figures: Figures) -> None:
        self.rows.append(figures)
        self.path.write_text(json.dumps([asdict(r) for r in self.rows], indent=2))

    def table(self) -> str:
        head = (
            "| case | fault | requests (ok / retryable / failed) | items (succeeded) "
            "| lost | duplicated | recovery s |\n|---|---|---|---|---|---|---|\n"
        )
        rows = "".join(
            f"| {r.case} | {r.fault} | {r.requests} ({r.requests_ok} / {r.requests_retryable} / "
            f"{r.requests_failed}) | {r.items} ({r.items_succeeded}) | {r.lost} | {r.duplicated} "
            f"| {r.recovery_s:.1f} |\n"
            for r in self.rows
        )
        return head + rows
