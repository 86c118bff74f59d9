"""A seed-style FastAPI endpoint: one image per request, no batching, no queue, nothing recorded.

``POST /predict`` with ``{"image": {"content": "<base64>"}}`` (the body of Ferry's REST predict)
answers the top 5 classes. What a team writes first; the baseline Ferry must beat by 1.3x.
Runs only inside ``.venv-mlserver`` (``uvicorn benchmarks.peers.fastapi_app:app``).
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import FastAPI

from benchmarks.peers.model import PeerModel

app = FastAPI()
_model = PeerModel()


@app.post("/predict")
def predict(body: dict[str, Any]) -> dict[str, Any]:
    """Classifies one image (a sync handler: FastAPI runs it in its thread pool)."""
    scores, indices = _model.top_k([base64.b64decode(body["image"]["content"])])
    return {
        "classes": [{"index": int(i), "score": float(s)} for s, i in zip(scores[0], indices[0], strict=True)]
    }


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
