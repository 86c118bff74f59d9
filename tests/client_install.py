"""Builds the client package (``python -m build clients/python``) and installs its sdist and wheel,
each into a fresh virtualenv, as a user of the client alone would, without downloading anything.

``pip install --no-index`` takes the client from the built files and its dependencies (grpcio,
protobuf, ...) from this environment: the fresh venv sees exactly the distributions the client
declares, and what those declare, linked into one folder. A dependency the client uses but does not
declare fails to import there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients/python"


@dataclass
class ClientBuild:
    """The built files and one fresh virtualenv per file, the client installed in each."""

    sdist: Path
    wheel: Path
    venvs: dict[str, Path]
    """``sdist`` / ``wheel`` -> the venv it is installed in."""
    source_changes: str
    """What the build changed in the checkout (``git status`` of clients/ and gen/, ignored files too)."""


def run(*argv: str | Path, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    """Runs a command, output captured; never raises on its exit code."""
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
        env={**os.environ, **env},
    )


def _closure(name: str) -> list[metadata.Distribution]:
    """The installed distribution ``name`` and every one it requires, transitively."""
    found: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in found:
            continue
        found[key] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return list(found.values())


def _link_distributions(names: list[str], folder: Path) -> None:
    """Symlinks the top-level files of ``names`` and their requirements (from this environment)."""
    folder.mkdir(parents=True)
    for dist in (d for n in names for d in _closure(n)):
        for entry in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
            source = Path(str(dist.locate_file(entry)))
            target = folder / entry
            if source.exists() and not target.exists():
                target.symlink_to(source)


def fresh_venv(path: Path, install: Path) -> Path:
    """A virtualenv holding only ``install`` (a built file of the client) and its dependencies."""
    venv.create(path, with_pip=True)
    python = path / "bin/python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").stdout.strip())
    # The client's requirements and setuptools (to build the sdist: ensurepip's is too old).
    requirements = [Requirement(r).name for r in metadata.requires("ferry-client") or []]
    _link_distributions([*requirements, "setuptools"], path / "linked")
    (site / "linked-from-ferry-suite.pth").write_text(str(path / "linked") + "\n")
    removed = run(python, "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools")
    assert removed.returncode == 0, removed.stderr
    installed = run(
        python, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation", install,
        PIP_NO_CACHE_DIR="1",
    )  # fmt: skip
    assert installed.returncode == 0, f"pip install {install.name}: {installed.stderr[-3000:]}"
    return path


def _source_state() -> str:
    return run("git", "status", "--porcelain", "--ignored", "--untracked-files=all", "clients", "gen").stdout


def build_client(folder: Path) -> ClientBuild:
    """``python -m build clients/python`` (sdist, then the wheel from the sdist), installed twice."""
    before = _source_state()
    built = run(sys.executable, "-m", "build", "--no-isolation", "--outdir", folder / "dist", CLIENT)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-3000:]
    [sdist] = (folder / "dist").glob("ferry_client-*.tar.gz")
    [wheel] = (folder / "dist").glob("ferry_client-*.whl")
    after = _source_state()
    changes = "\n".join(sorted(set(after.splitlines()) - set(before.splitlines())))
    changes = re.sub(r".*__pycache__.*\n?", "", changes)
    venvs = {
        kind: fresh_venv(folder / f"venv-{kind}", file) for kind, file in (("sdist", sdist), ("wheel", wheel))
    }
    return ClientBuild(sdist, wheel, venvs, changes)
