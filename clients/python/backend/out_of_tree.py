"""setuptools, run on a temporary copy of the project, as the build backend of ``ferry-client``.

``python -m build clients/python`` then leaves nothing in the checkout (setuptools writes its
``*.egg-info`` and ``build/`` beside the sources otherwise), and the copy turns the symlink
``ferry -> ../../gen/python/ferry`` into files, so the sdist carries the generated stubs and the
wheel built from that sdist has them too. Editable installs (``make install``) build in place: they
must point at the checkout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta as _setuptools

get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable

_LEFT_BEHIND = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")


@contextmanager
def _in_a_copy() -> Iterator[None]:
    """Runs the block in a copy of the current directory, symlinks resolved."""
    source = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ferry-client-build-") as scratch:
        copy = Path(scratch) / source.name
        shutil.copytree(source, copy, symlinks=False, ignore=_LEFT_BEHIND)
        os.chdir(copy)
        try:
            yield
        finally:
            os.chdir(source)


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    """What building the sdist needs (setuptools runs egg_info to tell: in a copy)."""
    with _in_a_copy():
        return list(_setuptools.get_requires_for_build_sdist(config_settings))


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """What building the wheel needs, asked in a copy for the same reason."""
    with _in_a_copy():
        return list(_setuptools.get_requires_for_build_wheel(config_settings))


def build_sdist(sdist_directory: str, config_settings: dict[str, Any] | None = None) -> str:
    """The sdist, from a copy."""
    target = os.path.abspath(sdist_directory)
    with _in_a_copy():
        return str(_setuptools.build_sdist(target, config_settings))


def prepare_metadata_for_build_wheel(
    metadata_directory: str, config_settings: dict[str, Any] | None = None
) -> str:
    """The wheel's metadata, from a copy."""
    target = os.path.abspath(metadata_directory)
    with _in_a_copy():
        return str(_setuptools.prepare_metadata_for_build_wheel(target, config_settings))


def build_wheel(
    wheel_directory: str,
    config_settings: dict[str, Any] | None = None,
    metadata_directory: str | None = None,
) -> str:
    """The wheel, from a copy."""
    target = os.path.abspath(wheel_directory)
    metadata = os.path.abspath(metadata_directory) if metadata_directory else None
    with _in_a_copy():
        return str(_setuptools.build_wheel(target, config_settings, metadata))
