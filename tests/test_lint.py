"""The code style the project holds itself to: ruff lint and format, mypy strict on the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import background

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    lint = run(str(BIN / "ruff"), "check", ".")
    assert lint.returncode == 0, lint.stdout
    formatted = run(str(BIN / "ruff"), "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout


def test_mypy_strict() -> None:
    # Started at idle priority when collection ended (tests/background.py): a minute of one core
    # from a cold cache, taken from the time the suite spends waiting on stacks.
    done = background.result("tests/test_lint.py::test_mypy_strict")
    assert done.returncode == 0, done.stdout[-5000:]
