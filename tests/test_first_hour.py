"""What a new user's first hour leaves behind: files the README's examples write are git-ignored."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_example_files_are_git_ignored() -> None:
    written = re.findall(r"\.save\('([^']+)'\)", (ROOT / "README.md").read_text())
    assert {"cat.jpg", "coffee.jpg"} <= set(written), written
    checked = subprocess.run(
        ["git", "check-ignore", "--no-index", *written], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert sorted(checked.stdout.split()) == sorted(written), (
        f"not git-ignored: {set(written) - set(checked.stdout.split())}"
    )
