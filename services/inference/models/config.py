"""Per-model settings: one declarative TOML file plus environment overrides.

The file (``FERRY_INFERENCE_MODELS_FILE``, default ``services/inference/models.toml``) has one
table per model, ``[models.<id>]``; which of them load is ``FERRY_INFERENCE_MODELS``. A field
left out falls back to the service-wide setting (``FERRY_INFERENCE_<FIELD>``). Precedence, highest
first:

1. ``FERRY_INFERENCE_MODEL_<ID>_<FIELD>`` (id upper-cased, ``-`` and ``.`` as ``_``), for example
   ``FERRY_INFERENCE_MODEL_MINILM_MAX_BATCH_SIZE=8``;
2. a service-wide variable set explicitly in the environment, ``FERRY_INFERENCE_MAX_BATCH_SIZE``;
3. the model's table in the file;
4. the service-wide default.

A field the schema does not know fails the start, naming the model and the field.

Versions: a table's ``version`` (default ``"1"``) is the model's first version and its default;
``[models.<id>.versions.<v>]`` tables declare more versions of the same model, each the model's
table with the version table's fields over it (``options`` merged key by key), so a version
states only what differs: other weights, another graph, other preprocessing. Calls name a
version or get the default; an admin moves the default at runtime (``repository``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: The models file shipped with Ferry.
DEFAULT_MODELS_FILE = Path(__file__).resolve().parent.parent / "models.toml"

#: Fields that fall back to the service-wide setting of the same name when a model leaves them out.
INHERITED = (
    "device",
    "max_batch_size",
    "max_batch_delay_ms",
    "max_queue",
    "warmup_batches",
    "graph",
    "graph_dir",
)

#: How a model's forward pass runs (``graph``): see ``ModelConfig.graph``.
Graph = Literal["torchscript", "aoti", "eager"]
DEFAULT_GRAPH: Graph = "torchscript"
#: Where ``aoti`` libraries are kept when neither the model nor the service says.
DEFAULT_GRAPH_DIR = str(Path.home() / ".cache" / "ferry" / "graphs")


class ModelConfig(BaseModel):
    """One model's settings, as ``[models.<id>]`` in the models file declares them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    """The model id (the table's name); set by the loader."""
    entry_point: str = ""
    """Name of the ``ferry.models`` entry point that builds it; empty: the model id."""
    version: str = "1"
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1`` or ``auto``; unset: FERRY_INFERENCE_DEVICE."""
    max_batch_size: int | None = Field(default=None, ge=1, le=1024)
    """Unset: measured at warm-up (or FERRY_INFERENCE_MAX_BATCH_SIZE)."""
    max_batch_delay_ms: float | None = Field(default=None, ge=0)
    max_queue: int | None = Field(default=None, ge=1)
    instances: int = Field(default=1, ge=1, le=16)
    """Batches of this model that may run at once in one process, each in its own thread; the
    torch threads are shared among those running (a batch alone gets them all)."""
    warmup_batches: int | None = Field(default=None, ge=0)
    graph: Graph = DEFAULT_GRAPH
    """``torchscript``: models that support it (the image classifiers) trace and freeze their
    module at load, so a forward pass is one call that releases Python's GIL for its whole length;
    ``aoti``: exported and compiled ahead of time by AOTInductor into a library kept under
    ``graph_dir`` (the first load builds it: g++ and minutes of CPU; on a GPU, or when it cannot be
    built, the model serves its TorchScript graph and says why in the log); ``eager``: the module
    runs layer by layer from Python. Left out of the file: FERRY_INFERENCE_GRAPH."""
    graph_dir: str | None = None
    """Where ``aoti`` libraries are kept; unset: FERRY_INFERENCE_GRAPH_DIR."""
    members: tuple[str, ...] = ()
    """Non-empty: an ensemble of these models (mean of their class probabilities)."""
    requires: tuple[str, ...] = ()
    """Models this one calls (a notebook through ``hub``): they load with it, before it."""
    notebook: str = ""
    """For the ``notebook`` entry point: the ``.ipynb`` path, relative to the models file."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Free-form settings for the model's own factory."""

    @property
    def is_ensemble(self) -> bool:
        """True for an ensemble (it has members)."""
        return bool(self.members)


class ModelsFileError(ValueError):
    """The models file is missing, not TOML, or declares a field the schema does not know."""


def env_key(model: str, field: str) -> str:
    """The environment variable that overrides ``field`` of ``model``."""
    slug = model.upper().replace("-", "_").replace(".", "_")
    return f"FERRY_INFERENCE_MODEL_{slug}_{field.upper()}"


def load_models_file(path: Path) -> dict[str, dict[str, Any]]:
    """Reads the ``[models.<id>]`` tables of ``path``, with relative notebook paths made absolute.

    Raises:
        ModelsFileError: The file cannot be read, is not TOML, or has other top-level keys.
    """
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ModelsFileError(
            f"models file {path} (FERRY_INFERENCE_MODELS_FILE) cannot be read: {err}"
        ) from err
    unknown = sorted(set(document) - {"models"})
    if unknown:
        raise ModelsFileError(
            f"models file {path}: unknown top-level key(s) {', '.join(unknown)}; "
            "declare each model as a [models.<id>] table"
        )
    tables: dict[str, dict[str, Any]] = {}
    for name, table in document.get("models", {}).items():
        if not isinstance(table, dict):
            raise ModelsFileError(f"models file {path}: models.{name} must be a table")
        table = dict(table)
        if table.get("notebook"):
            table["notebook"] = str((path.parent / table["notebook"]).resolve())
        tables[name] = table
    return tables


def version_tables(name: str, table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The tables of each version of model ``name``, its default (the table's own ``version``) first.

    Raises:
        ModelsFileError: ``versions`` is not a table of tables, or repeats the default version.
    """
    base = {k: v for k, v in table.items() if k != "versions"}
    default = str(base.get("version", "1"))
    found = {default: base}
    versions = table.get("versions", {})
    if not isinstance(versions, dict) or not all(isinstance(v, dict) for v in versions.values()):
        raise ModelsFileError(f"model {name!r}: versions must be [models.{name}.versions.<version>] tables")
    for version, overrides in versions.items():
        if version in found:
            raise ModelsFileError(f"model {name!r}: version {version!r} is the table's own version already")
        merged = {**base, **overrides, "version": version}
        merged["options"] = {**base.get("options", {}), **overrides.get("options", {})}
        found[version] = merged
    return found


def resolve_config(
    name: str,
    table: Mapping[str, Any],
    service_wide: Mapping[str, Any],
    explicit: frozenset[str],
    environ: Mapping[str, str] | None = None,
) -> ModelConfig:
    """Merges one model's table with the service-wide settings and the environment.

    Args:
        name: The model id.
        table: Its ``[models.<id>]`` table (empty when the file has none).
        service_wide: The service's values of the INHERITED fields.
        explicit: Which of those the environment (or the caller) set explicitly.
        environ: The environment (default ``os.environ``).

    Raises:
        ModelsFileError: An unknown field or a bad value, naming the model and the field.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {field: service_wide.get(field) for field in INHERITED}
    values.update(table)
    values.update({field: service_wide.get(field) for field in INHERITED if field in explicit})
    for field in ModelConfig.model_fields:
        if (override := environ.get(env_key(name, field))) is not None:
            listed = field in ("members", "requires")
            values[field] = [m.strip() for m in override.split(",") if m.strip()] if listed else override
    values["name"] = name
    try:
        return ModelConfig.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in err.errors(include_url=False)
        )
        raise ModelsFileError(
            f"model {name!r} has invalid settings ({problems}); known fields: "
            f"{', '.join(f for f in ModelConfig.model_fields if f != 'name')}"
        ) from None
