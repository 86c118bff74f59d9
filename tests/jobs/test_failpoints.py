"""services.common.failpoints: an enabled failpoint kills its process on the spot, others do nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.common.failpoints import DIR_ENV, ENV, EXIT_CODE

SCRIPT = """
from services.common.failpoints import failpoint
print("before", flush=True)
failpoint("test.here")
print("after", flush=True)
"""

DIED = (EXIT_CODE, "before\n")
SURVIVED = (0, "before\nafter\n")


def run(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (ENV, DIR_ENV)}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_failpoint_named_in_the_env_exits_like_sigkill() -> None:
    done = run(**{ENV: "other.place, test.here"})
    assert (done.returncode, done.stdout) == DIED
    assert "failpoint test.here reached" in done.stderr


def test_a_failpoint_not_enabled_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "other.place").touch()
    for env in ({}, {ENV: ""}, {ENV: "other.place"}, {ENV: "test.her"}, {DIR_ENV: str(tmp_path)}):
        done = run(**env)
        assert (done.returncode, done.stdout) == SURVIVED, env
    assert (tmp_path / "other.place").exists()


def test_an_armed_failpoint_kills_one_process_only(tmp_path: Path) -> None:
    # How the fault suite uses it: arm while the stack runs; the supervisor's replacement lives.
    (tmp_path / "test.here").touch()
    first = run(**{DIR_ENV: str(tmp_path)})
    second = run(**{DIR_ENV: str(tmp_path)})
    assert [(d.returncode, d.stdout) for d in (first, second)] == [DIED, SURVIVED]
    assert not (tmp_path / "test.here").exists()
