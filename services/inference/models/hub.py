"""Ferry's models for code that runs inside a model: notebooks call shipped models through here.

Inside the inference service (``attach`` was called), a call goes through the served model's
own decode queue and batcher, so a notebook's calls batch with everyone else's and the weights
are loaded once. Outside it (the same notebook open in Jupyter), the model is built and loaded
in this process on first use, from the same entry point, so the notebook runs unchanged in both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from services.inference.models import registry
from services.inference.models.config import ModelConfig
from services.inference.models.contract import IMAGE, TEXT, Answer, Item, Model, ModelInput, Options

if TYPE_CHECKING:
    from services.inference.served import Served

#: How long a call may wait for a served model's answer.
TIMEOUT_S = 60.0

_served: tuple[asyncio.AbstractEventLoop, Mapping[str, Served]] | None = None
_local: dict[str, Model] = {}
_local_lock = threading.Lock()


def attach(loop: asyncio.AbstractEventLoop, models: Mapping[str, Served]) -> None:
    """Routes calls to the service's served models (called by the inference service at start)."""
    global _served
    _served = (loop, models)


def detach() -> None:
    """Back to loading models in-process (at service stop)."""
    global _served
    _served = None


def classify(model: str, image: bytes, top_k: int = 5) -> list[dict[str, Any]]:
    """Classifies an encoded image: ``[{"label", "score", "index"}, ...]``, best first."""
    answer = _answer(model, ModelInput(IMAGE, image=image), Options(top_k=top_k))
    return [{"label": c.label, "score": c.score, "index": c.index} for c in answer.classes]


def embed(model: str, text: str) -> list[float]:
    """A text's embedding."""
    answer = _answer(model, ModelInput(TEXT, text=text), Options())
    return [] if answer.embedding is None else [float(v) for v in answer.embedding]


def _answer(model: str, item: ModelInput, options: Options) -> Answer:
    if _served is None:
        return _run_locally(model, item, options)
    loop, models = _served
    served = models.get(model)
    if served is None:
        raise LookupError(
            f"model {model!r} is not loaded in this inference service; add it to FERRY_INFERENCE_MODELS"
        )
    if threading.current_thread() is threading.main_thread() and loop.is_running():
        raise RuntimeError("hub calls block: call them from a model's thread, never the event loop")
    # Imported late: served imports the models package, which imports this module.
    from services.inference.calls import Request

    call = served.answer(Request(item, options))
    return asyncio.run_coroutine_threadsafe(call, loop).result(TIMEOUT_S).answer


def _run_locally(model: str, item: ModelInput, options: Options) -> Answer:
    with _local_lock:
        built = _local.get(model)
        if built is None:
            built = registry.build(ModelConfig(name=model))
            built.load(torch.device("cpu"))
            _local[model] = built
        raw = built.forward([Item(built.preprocess(item), options)])[0]
        return built.postprocess(raw, options)
