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


#: Commands a fresh Linux machine has (coreutils, Python the install needed) besides Ferry's own.
EVERYWHERE = {"base64", "cat", "python3", "date", "head", "echo"}


def test_the_docs_command_substitutions_use_only_tools_every_machine_has() -> None:
    # `$(uuidgen)` in docs/api.md: util-linux's uuidgen is missing on slim images, and the
    # request then went out with an empty request_id and no error to say so.
    used: dict[str, set[str]] = {}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for tool in re.findall(r"\$\(([\w.-]+)", doc.read_text()):
            used.setdefault(tool, set()).add(doc.name)
    assert {tool: docs for tool, docs in used.items() if tool not in EVERYWHERE} == {}
