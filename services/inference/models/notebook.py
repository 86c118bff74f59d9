"""Notebook-backed models: a ``.ipynb`` whose cells define ``predict(payload: dict) -> dict``.

The pattern of data-science teams who ship notebooks: the notebook is executed once at start,
unchanged (its code cells in order, in one namespace, as "Run all" would), and its ``predict``
is served with a JSON object in and a JSON object out. Cells may use Ferry's other served models
through ``services.inference.models.hub``. A notebook runs one payload at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from services.inference.models.config import ModelConfig
from services.inference.models.contract import (
    PAYLOAD,
    Answer,
    InvalidInput,
    Item,
    Model,
    ModelInput,
    Options,
    TensorInfo,
)

log = logging.getLogger(__name__)


class NotebookError(RuntimeError):
    """The notebook cannot be read or run, or defines no ``predict``."""


def code_cells(path: Path) -> list[str]:
    """The sources of the notebook's code cells, in order (nbformat 4 JSON).

    Raises:
        NotebookError: Not a readable nbformat-4 notebook.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise NotebookError(f"notebook {path} cannot be read: {err}") from err
    if not isinstance(document, dict) or document.get("nbformat") != 4:
        raise NotebookError(f"notebook {path} is not an nbformat 4 notebook")
    cells: list[str] = []
    for cell in document.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            cells.append("".join(source) if isinstance(source, list) else str(source))
    return cells


class NotebookModel(Model):
    """Serves the ``predict`` a notebook defines."""

    task = "json"
    kinds = frozenset({PAYLOAD})
    inputs = (TensorInfo("payload", "BYTES", (1,)),)
    outputs = (TensorInfo("output", "BYTES", (1,)),)
    batchable = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        if not config.notebook:
            raise NotebookError(f"model {config.name!r}: set notebook = 'path/to/file.ipynb' in its table")
        self.path = Path(config.notebook)
        self.display_name = f"Notebook {self.path.name}"
        self.description = (
            f"predict(payload) -> dict defined by the notebook {self.path.name}; JSON in, JSON out."
        )
        self._predict: Any = None

    def load(self, device: torch.device) -> None:
        """Runs every code cell once, in order, in a fresh namespace."""
        namespace: dict[str, Any] = {"__name__": "__ferry_notebook__", "__file__": str(self.path)}
        for number, source in enumerate(code_cells(self.path), start=1):
            try:
                exec(compile(source, f"{self.path.name}[cell {number}]", "exec"), namespace)
            except Exception as err:
                raise NotebookError(f"notebook {self.path.name}: code cell {number} raised {err!r}") from err
        predict = namespace.get("predict")
        if not callable(predict):
            raise NotebookError(f"notebook {self.path.name} defines no predict(payload: dict) -> dict")
        self._predict = predict
        self.description = (namespace.get("__doc__") or "").strip() or self.description

    def preprocess(self, item: ModelInput) -> dict[str, Any]:
        """The payload, as is."""
        self.check_kind(item)
        return item.payload

    def forward(self, batch: Sequence[Item]) -> list[dict[str, Any]]:
        """Calls ``predict`` on each payload; what it raises for a bad payload reaches the caller."""
        outputs: list[dict[str, Any]] = []
        for item in batch:
            try:
                output = self._predict(dict(item.features))
            except (ValueError, KeyError, TypeError) as err:
                raise InvalidInput(f"the notebook's predict refused the payload: {err!r}") from err
            if not isinstance(output, dict):
                raise TypeError(f"the notebook's predict returned {type(output).__name__}, not a dict")
            outputs.append(json.loads(json.dumps(output)))  # JSON-safe now, not when encoding
        return outputs

    def postprocess(self, raw: dict[str, Any], options: Options) -> Answer:
        """The JSON object."""
        return Answer(output=raw)

    def example(self) -> Any:
        """None: a notebook's predict is not called with a made-up payload (no warm-up)."""
        return None


def build(config: ModelConfig) -> NotebookModel:
    """The ``ferry.models`` entry point ``notebook``."""
    return NotebookModel(config)
