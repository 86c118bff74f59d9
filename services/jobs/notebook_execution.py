"""Executing one notebook with papermill, reporting each code cell as it finishes.

papermill runs the notebook unchanged (it only injects a cell of the given parameters after the
cell tagged ``parameters``) in a fresh Jupyter kernel. It blocks, so the runner calls ``execute``
in a worker thread. Cells are numbered as a notebook job's items: the position of the code cell
among the registered notebook's code cells, from 0 (the injected parameters cell is not one).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import papermill
from papermill.engines import NBClientEngine, papermill_engines
from papermill.exceptions import PapermillExecutionError

from services.common.notebooks import bad_parameter_names

#: The papermill engine that reports cells (registered on import).
ENGINE = "ferry"
_INJECTED = "injected-parameters"


@dataclass(frozen=True)
class CellFailure:
    """The code cell that stopped the notebook, and why."""

    cell: int
    """Its position among the notebook's code cells, from 0 (the job item it fails)."""
    ename: str
    """The exception's name (``ValueError``, ``CellTimeoutError``, ``DeadKernelError``)."""
    evalue: str
    """The exception's message."""

    def describe(self) -> str:
        """One line for the job's error."""
        return f"code cell {self.cell} raised {self.ename}: {self.evalue}"


@dataclass(frozen=True)
class Execution:
    """What running a notebook produced."""

    notebook: bytes
    """The executed .ipynb: outputs, and the error of a failed cell (empty if nothing was saved)."""
    cells_done: int
    """How many code cells finished without an error (they are cells ``0..cells_done-1``)."""
    failure: CellFailure | None
    """The cell that failed, if one did."""


class _ReportingEngine(NBClientEngine):  # type: ignore[misc]  # papermill is untyped
    """papermill's default engine, telling ``on_cell`` about every code cell that finished cleanly."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        on_cell: Callable[[int], None] = kwargs.pop("on_cell")
        started: list[int] = kwargs.pop("started")
        ordinals = _code_ordinals(nb_man.nb.cells)
        cell_start, cell_complete = nb_man.cell_start, nb_man.cell_complete

        def start(cell: Any, cell_index: int | None = None, **more: Any) -> None:
            cell_start(cell, cell_index=cell_index, **more)
            if cell_index in ordinals:
                started.append(ordinals[cell_index])

        def complete(cell: Any, cell_index: int | None = None, **more: Any) -> None:
            cell_complete(cell, cell_index=cell_index, **more)
            # papermill completes a failed cell too, after marking it with an exception.
            if cell_index in ordinals and not cell.metadata.get("papermill", {}).get("exception"):
                on_cell(ordinals[cell_index])

        nb_man.cell_start, nb_man.cell_complete = start, complete
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register(ENGINE, _ReportingEngine)


def _code_ordinals(cells: list[Any]) -> dict[int, int]:
    """Cell index -> position among the notebook's own code cells (the injected one left out)."""
    ordinals: dict[int, int] = {}
    for index, cell in enumerate(cells):
        if cell.cell_type == "code" and _INJECTED not in cell.metadata.get("tags", []):
            ordinals[index] = len(ordinals)
    return ordinals


def execute(
    path: Path, parameters: dict[str, Any], cell_timeout_s: float, on_cell: Callable[[int], None]
) -> Execution:
    """Runs the notebook at ``path`` with ``parameters``; blocks until it ends.

    Args:
        path: the registered notebook.
        parameters: its parameters (papermill injects them after the ``parameters`` cell).
        cell_timeout_s: longest one cell may run; a cell that runs longer fails the notebook.
        on_cell: called (in this thread) with each code cell's position as it finishes cleanly.

    Returns:
        The executed notebook, how far it got and, when a cell failed (raised, timed out or
        killed its kernel), which cell and why. Never raises for a failing cell.
    """
    bad = bad_parameter_names(parameters)
    if bad:  # refused at CreateJob; checked again here, where a name would run as code
        problem = f"{bad[0][:100]!r} is not a Python variable name"
        return Execution(b"", 0, CellFailure(0, "InvalidParameterName", problem))
    started: list[int] = []
    done: list[int] = []

    def finished(cell: int) -> None:
        done.append(cell)
        on_cell(cell)

    failure: CellFailure | None = None
    with tempfile.TemporaryDirectory(prefix="ferry-notebook-") as scratch:
        output = Path(scratch) / path.name
        try:
            papermill.execute_notebook(
                str(path),
                str(output),
                parameters=parameters,
                engine_name=ENGINE,
                progress_bar=False,
                execution_timeout=cell_timeout_s,
                on_cell=finished,
                started=started,
            )
        except PapermillExecutionError as err:
            failure = CellFailure(started[-1] if started else 0, err.ename, err.evalue)
        except Exception as err:  # a timeout, a dead kernel, a kernel that never started
            failure = CellFailure(started[-1] if started else 0, type(err).__name__, str(err))
        notebook = output.read_bytes() if output.exists() else b""
    return Execution(notebook, len(done), failure)
