"""Notebook jobs' shared vocabulary: the registry of runnable notebooks and how a job names one.

The jobs service reads the registry (``FERRY_NOTEBOOKS``): its job queue to refuse an unknown
name and count the notebook's code cells (a notebook job's items), its runner to find the file it
executes. A notebook job travels as one ``JobItem`` whose
``notebook_run`` names the notebook and holds the parameters, on a subject of its own, so no
model lane ever takes it; the job is recorded under the model ``notebook:<name>``, which is what
users see. See docs/jobs.md, "Run-notebook jobs".
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings

from services.common.errors import NotFound
from services.common.messaging import JOB_ITEMS_SUBJECT_PREFIX

#: The work subject notebook jobs are queued on (in FERRY_WORK, beside the priority subjects).
NOTEBOOK_SUBJECT = f"{JOB_ITEMS_SUBJECT_PREFIX}.notebook"
#: A notebook job's model id is this prefix and the notebook's name (``notebook:report``).
MODEL_PREFIX = "notebook:"
#: Whole numbers up to this size are exact in a Struct's doubles, so they can be given back as ints.
_EXACT_INTEGERS = 2**53

#: Relative registry paths are read from the repository root, wherever a service was started.
_ROOT = Path(__file__).resolve().parents[2]


class NotebookSettings(BaseSettings):
    """The notebooks jobs may run, by name (mixed into the jobs service's settings)."""

    notebooks: dict[str, str] = Field(
        default_factory=lambda: {"report": "notebooks/report.ipynb"},
        validation_alias=AliasChoices("notebooks", "FERRY_NOTEBOOKS"),
    )
    """Name -> .ipynb path (JSON, e.g. ``{"report": "notebooks/report.ipynb"}``); relative paths are
    from the repository root. Read from FERRY_NOTEBOOKS by the jobs service."""

    notebook_subject: str = Field(
        default=NOTEBOOK_SUBJECT, validation_alias=AliasChoices("notebook_subject", "FERRY_NOTEBOOK_SUBJECT")
    )
    """Work subject the job queue puts notebook jobs on and runners take them from (FERRY_NOTEBOOK_SUBJECT;
    tests give each runner its own). An empty one turns a runner's notebook worker off."""

    def notebook_path(self, name: str) -> Path:
        """The file of the registered notebook ``name``.

        Raises:
            NotFound: no notebook of that name is registered.
        """
        path = self.notebooks.get(name)
        if path is None:
            known = ", ".join(sorted(self.notebooks)) or "none"
            raise NotFound(
                f"no notebook named {name!r} is registered (registered: {known}); "
                "add it to FERRY_NOTEBOOKS as a JSON object of name -> .ipynb path",
                reason="NOTEBOOK_NOT_FOUND",
                metadata={"notebook": name},
            )
        return _ROOT / path


def code_cell_count(path: Path) -> int:
    """How many code cells the notebook at ``path`` has (a notebook job's items).

    Raises:
        NotFound: the file is missing or not an nbformat 4 notebook.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        cells = document["cells"] if document.get("nbformat") == 4 else None
    except (OSError, ValueError, KeyError, AttributeError) as err:
        cells, problem = None, str(err)
    else:
        problem = "not an nbformat 4 notebook"
    if not isinstance(cells, list):
        raise NotFound(
            f"the registered notebook {path} cannot be read ({problem}); fix FERRY_NOTEBOOKS",
            reason="NOTEBOOK_NOT_FOUND",
            metadata={"path": str(path)},
        )
    return sum(1 for cell in cells if isinstance(cell, dict) and cell.get("cell_type") == "code")


def model_of(name: str) -> str:
    """The model id a notebook job is recorded under."""
    return f"{MODEL_PREFIX}{name}"


def bad_parameter_names(names: Iterable[str]) -> list[str]:
    """The names among ``names`` that are not Python variable names (identifiers, not keywords).

    papermill writes each parameter into the notebook as ``name = value``, the value escaped but the
    name as it is: a name such as ``"x = 1\nimport os; os.system(...)\ny"`` would run as code in
    the jobs runner, and ``class`` or ``a b`` would only fail the job's first cell later.
    """
    return [name for name in names if not name.isidentifier() or keyword.iskeyword(name)]


def executed_notebook_name(job_id: str) -> str:
    """Where a notebook job's executed notebook is kept in the result store."""
    return f"{job_id}/notebook.ipynb"


def parameters_of(payload: struct_pb2.Struct) -> dict[str, Any]:
    """A notebook's parameters as papermill injects them, from the job's ``Struct``.

    A Struct holds every number as a double, so ``count=3`` arrives as 3.0; as in JSON (``json.loads``
    reads ``3`` as an int), a whole number comes back as an int, any other as a float. Booleans,
    strings, lists, objects and null keep their types. (A float such as 3.0 is indistinguishable from
    3 on the wire: it comes back as 3.)
    """
    return {key: _python(value) for key, value in payload.fields.items()}


def _python(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        exact = number.is_integer() and abs(number) <= _EXACT_INTEGERS
        return int(number) if exact else number
    if kind == "struct_value":
        return parameters_of(value.struct_value)
    if kind == "list_value":
        return [_python(v) for v in value.list_value.values]
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)
