"""The model contract: what a model declares so that Ferry can serve it, whatever its task.

A model is three steps, each run where it belongs:

* ``preprocess(input)`` turns one request input (image bytes, a text, a JSON payload or a tensor)
  into whatever ``forward`` takes. It runs in the decode threads, by priority, off the event loop.
* ``forward(batch)`` runs once per batch the dynamic batcher forms, in the model's own thread.
* ``postprocess(raw, options)`` turns one item's share of the batch output into its ``Answer``:
  classes, an embedding, a JSON object or tensors.

A team adds a model in its own package: a factory ``build(config: ModelConfig) -> Model``
registered under the Python entry point group ``ferry.models`` (see ``registry``).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from services.inference.models.config import ModelConfig

#: The input kinds a request can carry (the ``ferry.types.v1.Input`` oneof).
IMAGE = "image"
TEXT = "text"
PAYLOAD = "payload"
TENSOR = "tensor"


class InvalidInput(ValueError):
    """An input the model cannot take; its message reaches the caller (INVALID_ARGUMENT)."""

    reason = "INVALID_INPUT"


@dataclass(frozen=True)
class ModelInput:
    """One request input, decoded from its proto but not yet preprocessed.

    Exactly one of ``image``, ``text``, ``payload`` and ``tensor`` is set, as ``kind`` says.
    """

    kind: str
    image: bytes = b""
    """Encoded image file (kind ``image``)."""
    text: str = ""
    """The text (kind ``text``)."""
    candidate_labels: tuple[str, ...] = ()
    """Labels to score the text against (zero-shot classification); empty for an embedding."""
    payload: dict[str, Any] = field(default_factory=dict)
    """The JSON object (kind ``payload``)."""
    tensor: npt.NDArray[np.float32] | None = None
    """The numeric array (kind ``tensor``)."""


@dataclass(frozen=True)
class Options:
    """What the caller asked of one item's answer."""

    top_k: int = 5
    candidate_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    """One preprocessed input on its way through the batcher, with its caller's options."""

    features: Any
    options: Options = Options()


@dataclass(frozen=True)
class ClassScore:
    """One class of an answer."""

    index: int
    label: str
    score: float


@dataclass
class Answer:
    """One item's output; a model fills the fields of its task and leaves the others empty."""

    classes: list[ClassScore] = field(default_factory=list)
    embedding: npt.NDArray[np.float32] | None = None
    output: dict[str, Any] | None = None
    """A JSON object (for JSON models)."""
    tensors: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    probabilities: npt.NDArray[np.float32] | None = None
    """A classifier's full class distribution: never sent, but ensembles combine it."""


@dataclass(frozen=True)
class TensorInfo:
    """Name, datatype (Open Inference Protocol terms) and per-item shape of an input or output."""

    name: str
    datatype: str
    shape: tuple[int, ...] = ()


class Model(abc.ABC):
    """A servable model. Subclasses set the class attributes and implement the three steps.

    ``load`` runs once in a worker thread before anything else; it may take seconds.
    """

    display_name: str = ""
    description: str = ""
    task: str = ""
    """For example ``image-classification``, ``text-embedding``, ``json``."""
    kinds: frozenset[str] = frozenset()
    """The input kinds ``preprocess`` accepts."""
    inputs: Sequence[TensorInfo] = ()
    outputs: Sequence[TensorInfo] = ()
    labels: Sequence[str] = ()
    """Class names, indexed as the model's output; empty for models without classes."""
    batchable: bool = True
    """False: ``forward`` only ever gets one item (batch size 1 is used, nothing is timed)."""
    graph: str = ""
    """How ``forward`` runs once loaded (``torchscript``, ``aoti``, ``eager``); empty: not a torch graph."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.name = config.name

    @abc.abstractmethod
    def load(self, device: torch.device) -> None:
        """Loads weights from local files onto ``device`` (never a download)."""

    @abc.abstractmethod
    def preprocess(self, item: ModelInput) -> Any:
        """Turns one input into what ``forward`` takes; raises InvalidInput for a bad input."""

    @abc.abstractmethod
    def forward(self, batch: Sequence[Item]) -> Sequence[Any]:
        """Runs one batch; returns one raw output per item, in order."""

    @abc.abstractmethod
    def postprocess(self, raw: Any, options: Options) -> Answer:
        """Shapes one item's raw output as its answer."""

    @abc.abstractmethod
    def example(self) -> Any:
        """A preprocessed input for warm-up and batch-size timing."""

    def check_kind(self, item: ModelInput) -> None:
        """Refuses an input of a kind this model does not take, naming the kinds it does."""
        if item.kind not in self.kinds:
            raise InvalidInput(
                f"it is {'an' if item.kind[0] in 'aeiou' else 'a'} {item.kind or 'empty'} input and "
                f"model {self.name!r} takes {' or '.join(sorted(self.kinds))}"
            )
