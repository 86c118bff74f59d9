"""The locks (requirements/*.lock) agree with both pyproject.toml files and with the installed
environment, so a fresh clone installs exactly what was tested, whatever the registry serves.

When one fails: change pyproject.toml, run `make lock` (re-resolves) and `make install`, commit the
lock. Installing a package by hand (`pip install x`) without adding it to pyproject.toml and the
lock makes the environment test fail too: the next fresh clone would not have it.
"""

from __future__ import annotations

import re
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements/ferry.lock"
PEER_LOCK = ROOT / "requirements/peer.lock"
GENERATOR = ROOT / "requirements/generator.txt"
PYPROJECTS = (ROOT / "pyproject.toml", ROOT / "clients/python/pyproject.toml")
EXTRAS = ("dev", "stack", "s3")
"""The extras `make install` installs (with `.[dev,stack]`; dev includes s3)."""
OURS = {"ferry", "ferry-client"}
"""Installed from this checkout (editable), never locked."""
PIP_ITSELF = {"pip"}
"""The venv's own installer, not a dependency of Ferry (setuptools is one: torch and grpcio-tools
require it, so it is locked like any other)."""
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;=<>!~*]+)$")


def read_lock(path: Path) -> dict[str, str]:
    """Canonical name -> exact version; fails on any line that is not ``name==version``."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}:{number}: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(match["name"])
        assert name not in pins, f"{path.name}:{number}: {name} is pinned twice"
        pins[name] = match["version"]
    return pins


def direct_requirements(pyproject: Path) -> list[Requirement]:
    """``[project] dependencies`` and the installed extras' requirements, ours left out."""
    project = tomllib.loads(pyproject.read_text())["project"]
    texts = list(project["dependencies"])
    for extra in EXTRAS:
        texts += project.get("optional-dependencies", {}).get(extra, [])
    requirements = [Requirement(t) for t in texts]
    return [r for r in requirements if canonicalize_name(r.name) not in OURS and _applies(r)]


def _applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": ""})


def test_every_lock_line_is_an_exact_pin() -> None:
    assert read_lock(LOCK), "the lock is empty"
    assert read_lock(PEER_LOCK), "the peer lock is empty"


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=["server", "client"])
def test_every_direct_dependency_is_locked_at_a_version_it_admits(pyproject: Path) -> None:
    locked = read_lock(LOCK)
    wrong = []
    for requirement in direct_requirements(pyproject):
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            wrong.append(f"{requirement} is not in {LOCK.name}")
        elif not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement} does not admit the locked {requirement.name}=={version}")
    assert not wrong, f"{pyproject.relative_to(ROOT)} and the lock disagree (run `make lock`): {wrong}"


def test_the_installed_environment_is_the_lock() -> None:
    locked = read_lock(LOCK)
    # Read from the environment's own folders, not sys.path: importing setuptools (torch's C++
    # builder does, for AOTInductor) puts setuptools/_vendor on sys.path, whose vendored packaging
    # and platformdirs would read as installed.
    folders = sorted({sysconfig.get_paths()[key] for key in ("purelib", "platlib")})
    found = metadata.distributions(path=folders)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in found}
    differ = [
        f"{name}: locked {version}, installed {installed.get(name, 'nothing')}"
        for name, version in sorted(locked.items())
        if installed.get(name) != version
    ]
    unlocked = sorted(set(installed) - set(locked) - OURS - PIP_ITSELF)
    assert not differ, f"the environment is not the lock (run `make install`): {differ}"
    assert not unlocked, (
        f"installed but not in {LOCK.name} (a fresh clone would lack them; add them to "
        f"pyproject.toml and run `make lock`): {unlocked}"
    )
    assert sys.prefix != sys.base_prefix, "the suite runs in the project's virtualenv (make test)"


def _stub_versions() -> tuple[set[str], set[str]]:
    """The grpc and protobuf versions the committed stubs were generated with."""
    grpc, protobuf = set(), set()
    for stub in (ROOT / "gen/python/ferry").rglob("*.py"):
        text = stub.read_text()
        grpc |= set(re.findall(r"^GRPC_GENERATED_VERSION = '([^']+)'", text, re.M))
        protobuf |= set(re.findall(r"^# Protobuf Python Version: (\S+)", text, re.M))
    return grpc, protobuf


def test_the_lock_pins_the_generator_the_stubs_were_made_with() -> None:
    grpc, protobuf = _stub_versions()
    assert len(grpc) == 1 and len(protobuf) == 1, (grpc, protobuf)
    [generated] = grpc
    [tools] = read_lock(GENERATOR).items()
    assert tools == ("grpcio-tools", generated), f"{GENERATOR.name} names {tools}; the stubs say {generated}"
    assert read_lock(LOCK)["grpcio-tools"] == generated, "the lock's grpcio-tools did not make the stubs"


@pytest.mark.parametrize("pyproject", PYPROJECTS, ids=["server", "client"])
def test_lower_bounds_admit_no_runtime_the_stubs_refuse(pyproject: Path) -> None:
    """Without the lock, pip may pick any version the bounds admit: none may be older than the
    stubs' own (they check at import: GRPC_GENERATED_VERSION, ValidateProtobufRuntimeVersion)."""
    [grpc], [protobuf] = _stub_versions()
    floors = {"grpcio": grpc, "grpcio-status": grpc, "grpcio-tools": grpc, "protobuf": protobuf}
    floors |= {"grpcio-health-checking": grpc, "grpcio-reflection": grpc}
    checked = []
    for requirement in direct_requirements(pyproject):
        floor = floors.get(canonicalize_name(requirement.name))
        if floor is None:
            continue
        older = str(Version(floor).release[0]) + ".0"  # a release the stubs refuse
        below = [v for v in (older, _just_below(floor)) if requirement.specifier.contains(v)]
        assert not below, f"{requirement} admits {below}, older than the stubs' {floor}"
        assert requirement.specifier.contains(floor), f"{requirement} refuses the stubs' own {floor}"
        checked.append(requirement.name)
    assert {"grpcio", "protobuf"} <= set(checked), checked


def _just_below(version: str) -> str:
    major, minor, micro = [*Version(version).release, 0, 0][:3]
    return f"{major}.{minor}.{micro - 1}" if micro else f"{major}.{minor - 1}.999" if minor else "0"


def test_the_peer_environment_is_the_peer_lock() -> None:
    peer = ROOT / ".venv-peer/lib"
    if not peer.exists():
        pytest.skip(".venv-peer is not installed (make install makes it)")
    locked = read_lock(PEER_LOCK)
    installed = {}
    for info in peer.glob("python3*/site-packages/*.dist-info"):
        meta = metadata.Distribution.at(info)
        installed[canonicalize_name(meta.metadata["Name"])] = meta.version
    differ = {n: (v, installed.get(n)) for n, v in locked.items() if installed.get(n) != v}
    assert not differ, f".venv-peer differs from {PEER_LOCK.name} (locked, installed): {differ}"


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_the_images_install_from_the_lock(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    commands = re.findall(r"pip install((?:\\\n|[^&\n])*)", text)
    assert commands, f"{dockerfile} installs nothing with pip"
    assert "COPY requirements/ferry.lock ./requirements/" in text
    for command in commands:
        local = "--no-deps ./clients/python -e ." in command
        assert local or "-c requirements/ferry.lock" in command, f"{dockerfile}: pip install{command}"
