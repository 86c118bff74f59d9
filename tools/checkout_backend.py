"""The build backend of Ferry's server: setuptools for editable installs only.

The server runs from a checkout or an image, where ``services/store/migrations``, the models file
and the notebooks sit beside the code; a wheel would carry none of them and would put generic
top-level names (``services``, ``devstack``, ``tools``) into site-packages. So building one fails
with this explanation rather than making a package that cannot start. The client is the package to
distribute: ``python -m build clients/python``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from setuptools import build_meta as _setuptools

get_requires_for_build_editable = _setuptools.get_requires_for_build_editable
prepare_metadata_for_build_editable = _setuptools.prepare_metadata_for_build_editable
build_editable = _setuptools.build_editable

NOT_A_WHEEL = (
    "Ferry's server is not a distributable package: run it from a checkout (`make up`, or "
    "`pip install -e ./clients/python -e .`) or from its image (Dockerfile). The client is "
    "distributable: `python -m build clients/python`."
)


def _refuse(*_: Any, **__: Any) -> NoReturn:
    raise RuntimeError(NOT_A_WHEEL)


get_requires_for_build_wheel = _refuse
get_requires_for_build_sdist = _refuse
build_wheel = _refuse
build_sdist = _refuse
