"""Prints Ferry's runtime requirements from pyproject.toml, for the image's dependency layers.

``python deploy/docker/requirements.py torch`` prints the torch pins (installed first, from the
index that matches the image: CPU or CUDA); ``rest`` prints every other dependency but the client
package, which the image installs from ``clients/python`` with the code. Reading pyproject.toml keeps
one list of dependencies; the images install them with ``-c requirements/ferry.lock``, at the exact
versions ``make install`` installs.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
TORCH = {"torch", "torchvision"}
FROM_THIS_REPOSITORY = {"ferry-client"}
"""Built from the checkout, not fetched from an index."""


def requirements(part: str) -> list[str]:
    """The ``torch`` pins or the ``rest`` of ``[project] dependencies``."""
    deps: list[str] = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    named = [(re.split(r"[^A-Za-z0-9_.-]", d, maxsplit=1)[0].lower(), d) for d in deps]
    return [
        d for name, d in named if name not in FROM_THIS_REPOSITORY and (name in TORCH) == (part == "torch")
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("torch", "rest"):
        sys.exit("usage: requirements.py torch|rest")
    print("\n".join(requirements(sys.argv[1])))
